// The gateway's web page in a real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser is ever downloaded), over a loopback swarm of three stories260k
// servers: the swarm map, a streamed answer, the stop button, and the map and the chat once a
// server has left. Screenshots go to os.tmpdir()/minga-artifacts (outside the repository).
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { chromium, type BrowserContext, type Page } from 'playwright-core'
import { startNode, type NodeProcess } from '@minga/cli/processes'
import { storiesWithChatTemplate } from '../packages/engine/test/helpers.ts'

const CHROMIUM = '/usr/bin/chromium'
const ARTIFACTS = join(tmpdir(), 'minga-artifacts')
const WAIT = { timeout: 90_000 } // generous: a loaded 2-core machine
/** How long a node process may take to be ready: minutes, not seconds, under a load of 30. */
const READY = { timeoutMs: 240_000 }

describe('the web page', () => {
  const model = storiesWithChatTemplate()
  const profile = mkdtempSync(join(tmpdir(), 'minga-chromium-'))
  const nodes: NodeProcess[] = []
  const servers: NodeProcess[] = []
  let gateway: NodeProcess
  let browser: BrowserContext
  let page: Page

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does)`)
    const bootstrap = await startNode(['bootstrap'], { label: 'bootstrap', ...READY })
    nodes.push(bootstrap)
    // (the default announcement TTL: a stopped server withdraws its span itself, and short TTLs
    // let records lapse on a loaded machine)
    const join = ['--bootstrap', bootstrap.ready.addrs[0]]
    servers.push(...await Promise.all([['0:2', 'alpha'], ['2:4', 'beta'], ['4:5', 'gamma']].map(async ([blocks, name]) =>
      await startNode(['serve', '--model', model.path, '--blocks', blocks, '--public-name', name, ...join], { label: `serve ${blocks}`, ...READY }))))
    nodes.push(...servers)
    gateway = await startNode(['api', '--model', model.path, '--bootstrap', bootstrap.ready.addrs[0], '--port', '0'], { label: 'api', ...READY })
    nodes.push(gateway)
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 800 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
    })
    page = browser.pages()[0] ?? await browser.newPage()
    await page.goto((gateway.ready as unknown as { url: string }).url)
  }, 600_000)
  afterAll(async () => {
    await browser?.close()
    await Promise.all(nodes.map(async n => await n.stop()))
    model.remove()
    rmSync(profile, { recursive: true, force: true })
  })

  it('the map shows the three nodes, their spans and full coverage', async () => {
    const rows = page.locator('#nodes .map-row.node')
    await expect.poll(async () => await rows.count(), WAIT).toBe(3)
    await page.locator('#coverage .layer').nth(4).waitFor(WAIT)
    expect(await page.locator('#coverage .layer').count()).toBe(5)
    expect(await page.locator('#coverage .layer.uncovered').count()).toBe(0)
    expect(await page.locator('#coverage-summary').textContent()).toBe('All 5 layers are covered by 3 nodes.')
    expect(await rows.locator('.node-name').allTextContents()).toEqual(['alpha', 'beta', 'gamma'])
    expect(await rows.locator('.span-bar').allTextContents()).toEqual(['0–2', '2–4', '4–5'])
    expect(await rows.evaluateAll(els => els.map(e => (e as HTMLElement).dataset.peerId))).toEqual(servers.map(s => s.ready.peerId))
    expect(await page.locator('#model-name').textContent()).not.toBe('…')
  })

  it('a message gets an answer streamed into the page, and its route is highlighted on the map', async () => {
    // Count the updates of the answer's text: a streamed answer arrives in many of them.
    await page.evaluate(() => {
      const w = window as any
      w.textUpdates = 0
      new MutationObserver(records => { w.textUpdates += records.filter(r => r.type === 'characterData').length })
        .observe(document.getElementById('messages')!, { subtree: true, characterData: true })
    })
    await page.fill('#max-tokens', '24')
    await page.fill('#prompt', 'Tell me a story about a dog')
    await page.press('#prompt', 'Enter')
    const answer = page.locator('.message.assistant').last()
    await answer.locator('.meta').waitFor(WAIT)
    expect(await answer.locator('.meta').textContent()).toContain('cut at the max tokens')
    expect((await answer.locator('.text').textContent())!.length).toBeGreaterThan(20)
    expect(await page.evaluate(() => (window as any).textUpdates)).toBeGreaterThan(5)
    expect(await page.locator('#chat-error').isHidden()).toBe(true)
    // the route of that answer, from /v1/swarm's lastRoute
    await expect.poll(async () => await page.locator('#nodes .map-row.node.on-route').count(), WAIT).toBe(3)
    expect(await page.locator('#route .hop').count()).toBe(3)
    mkdirSync(ARTIFACTS, { recursive: true })
    await page.screenshot({ path: join(ARTIFACTS, 'web-page-laptop.png') })
  })

  it('the stop button aborts the answer being streamed', async () => {
    // 400 tokens without an end of text (greedy stories260k): far longer than a click.
    await page.fill('#max-tokens', '400')
    await page.fill('#prompt', 'And then?')
    await page.press('#prompt', 'Enter')
    const answer = page.locator('.message.assistant').last()
    await page.waitForFunction(() => (document.querySelector('.message.assistant.pending .text')?.textContent ?? '').length > 0, undefined, WAIT)
    await page.click('#stop')
    await answer.locator('.meta').waitFor(WAIT)
    expect(await answer.locator('.meta').textContent()).toMatch(/^stopped/)
    expect(await page.locator('#stop').isHidden()).toBe(true)
    expect(await page.locator('#send').isEnabled()).toBe(true)
    // the conversation is kept in the browser
    const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('minga.chat.v1')!))
    expect(stored.messages.map((m: any) => m.role)).toEqual(['user', 'assistant', 'user', 'assistant'])
    expect(stored.messages[3].stopped).toBe(true)
  })

  it('after a server leaves, the map shows the layers nobody holds and the chat says the swarm cannot answer', async () => {
    await servers[1].stop() // layers 2 and 3
    await expect.poll(async () => await page.locator('#coverage .layer.uncovered').count(), WAIT).toBe(2)
    expect(await page.locator('#coverage .layer.uncovered').evaluateAll(els => els.map(e => (e as HTMLElement).dataset.block))).toEqual(['2', '3'])
    expect(await page.locator('#coverage-summary').textContent()).toMatch(/^Layers 2–3 of 5 have no server/)
    expect(await page.locator('#nodes .map-row.node').count()).toBe(2)
    expect(await page.locator('#health').textContent()).toBe('2 layers missing')

    await page.fill('#max-tokens', '8')
    await page.fill('#prompt', 'Are you there?')
    await page.press('#prompt', 'Enter')
    await page.locator('#chat-error').waitFor({ state: 'visible', ...WAIT })
    expect(await page.locator('#chat-error').textContent()).toMatch(/^The swarm cannot serve this request now: no server holds blocks 2, 3\. Try again in \d+ s\.$/)
    await page.screenshot({ path: join(ARTIFACTS, 'web-page-uncovered.png') })
    await page.setViewportSize({ width: 390, height: 844 })
    await page.click('.tab[data-tab="swarm"]')
    await page.screenshot({ path: join(ARTIFACTS, 'web-page-phone.png') })
  })
})
