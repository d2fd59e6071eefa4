// The examples/ packages, run as their README says against a loopback stories260k swarm: what they
// print must be what the swarm really did (the local engine's greedy text, the node's span).
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLocalModel, untilDone } from '@minga/engine'
import { REPO_ROOT, startNode, type NodeProcess } from '@minga/cli/processes'
import { STORIES, storiesWithChatTemplate, tempDir } from '../packages/engine/test/helpers.ts'

const PROMPT = 'Once upon a time'
/** How long a process may take to be ready: minutes, not seconds, on a loaded 2-core machine. */
const READY_MS = 240_000

interface Example { child: ChildProcess, stdout: () => string, stderr: () => string, exited: Promise<number | string> }

/** Starts `node --import tsx examples/<file> <args>` from the repository's root. */
function runExample (file: string, args: string[], env: NodeJS.ProcessEnv = {}): Example {
  const child = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'examples', file), ...args], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env }
  })
  let stdout = ''
  let stderr = ''
  child.stdout!.setEncoding('utf8').on('data', (s: string) => { stdout += s })
  child.stderr!.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  const exited = new Promise<number | string>(resolve => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)))
  return { child, stdout: () => stdout, stderr: () => stderr, exited }
}

/** Resolves with the first line the example prints on stdout (fails if it exits first). */
async function firstLine (example: Example, timeoutMs = READY_MS): Promise<string> {
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`no output in ${timeoutMs} ms\n${example.stderr()}`)) }, timeoutMs)
    const check = (): void => {
      const newline = example.stdout().indexOf('\n')
      if (newline >= 0) {
        clearTimeout(timer)
        resolve(example.stdout().slice(0, newline))
      }
    }
    example.child.stdout!.on('data', check)
    void example.exited.then(code => { clearTimeout(timer); reject(new Error(`exited (${code}) before printing a line\n${example.stderr()}`)) })
  })
}

describe('examples over a loopback swarm', () => {
  let bootstrap: NodeProcess
  let embedded: Example | undefined
  let expectedText: string
  const chatModel = storiesWithChatTemplate()
  beforeAll(async () => {
    const local = await createLocalModel({ modelDir: STORIES })
    try {
      expectedText = (await untilDone(local.generate(PROMPT, { maxNewTokens: 20, temperature: 0 }))).text
    } finally {
      await local.close()
    }
    bootstrap = await startNode(['bootstrap'], { label: 'bootstrap', timeoutMs: READY_MS })
  }, 600_000)
  afterAll(async () => {
    embedded?.child.kill('SIGKILL')
    await bootstrap?.stop()
    chatModel.remove()
  })

  it('embed-server hosts the model\'s layers inside a program, and sdk-stream streams the local engine\'s text through it', { timeout: 900_000 }, async () => {
    embedded = runExample('embed-server/embed.ts', ['--model', chatModel.path, '--blocks', '0:5'], { MINGA_BOOTSTRAP: bootstrap.ready.addrs[0] })
    const ready = JSON.parse(await firstLine(embedded))
    expect(ready.blocks).toEqual([0, 5])

    const stream = runExample('sdk-stream/stream.ts', ['--model', chatModel.path, '--bootstrap', bootstrap.ready.addrs[0], '--prompt', PROMPT, '--max-new-tokens', '20'])
    expect(await stream.exited).toBe(0)
    expect(stream.stdout()).toBe(expectedText)
    expect(stream.stderr()).toContain(`${ready.peerId.slice(-6)} [0, 5)`)

    // openai-chat: the official client through a gateway over the same node
    const gateway = await startNode(['api', '--model', chatModel.path, '--bootstrap', bootstrap.ready.addrs[0], '--port', '0'], { label: 'api', timeoutMs: READY_MS })
    try {
      const base = new URL('v1', (gateway.ready as unknown as { url: string }).url).href
      const chat = runExample('openai-chat/chat.ts', ['--message', 'Tell me about the sea', '--max-tokens', '16'], { MINGA_API_URL: base })
      expect(await chat.exited).toBe(0)
      // what the gateway answers without streaming to the same (greedy) request
      const { data: [model] } = await (await fetch(`${base}/models`)).json()
      const same = await fetch(`${base}/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: model.id, messages: [{ role: 'system', content: 'You are a storyteller.' }, { role: 'user', content: 'Tell me about the sea' }], max_tokens: 16, temperature: 0 })
      }).then(async r => await r.json())
      expect(chat.stdout()).toBe(same.choices[0].message.content)
      expect(chat.stderr()).toContain(`${same.usage.prompt_tokens} prompt tokens, 16 generated`)
    } finally {
      await gateway.stop()
    }

    embedded.child.kill('SIGTERM')
    expect(await embedded.exited).toBe(0)
    expect(embedded.stderr()).toContain('[host] the minga node has stopped')
  })
})

describe('examples/community-swarm', () => {
  const chatModel = storiesWithChatTemplate()
  const state = tempDir('community-swarm')
  let swarm: Example | undefined
  afterAll(async () => {
    if (swarm != null && swarm.child.exitCode == null) {
      swarm.child.kill('SIGTERM')
      await swarm.exited
    }
    chatModel.remove()
    state.remove()
  })

  it('sets up a private swarm (key, bootstrap, three --blocks auto servers, gateway) and prints the page\'s URL', { timeout: 900_000 }, async () => {
    swarm = runExample('community-swarm/swarm.ts', ['--model', chatModel.path, '--port', '0', '--dir', state.path])
    const line = await firstLine(swarm, 3 * READY_MS)
    const url = /^open (\S+) /.exec(line)?.[1]
    expect(url).toBeDefined()
    const page = await fetch(url!)
    expect(page.status).toBe(200)
    expect(await page.text()).toContain('Swarm map')
    const status = await (await fetch(new URL('v1/swarm', url))).json()
    expect(status.servers.map((s: any) => s.name).sort()).toEqual(['volunteer-1', 'volunteer-2', 'volunteer-3'])
    expect(status.servers.map((s: any) => [s.start, s.end]).sort()).toEqual([[0, 2], [2, 4], [3, 5]])
    expect(status.coverage.every((c: any) => c.servers > 0)).toBe(true)
    expect((await fetch(new URL('health', url))).status).toBe(200)
    expect(readFileSync(join(state.path, 'swarm.key'), 'utf8')).toMatch(/^\/key\/swarm\/psk\/1\.0\.0\//)

    swarm.child.kill('SIGTERM')
    expect(await swarm.exited).toBe(0)
  })
})
