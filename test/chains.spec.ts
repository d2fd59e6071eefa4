// Chains through three in-process servers: the client sends each step to the first server only, the
// servers pass it on, and the greedy ids still equal stories260k's reference (f32, the default wire
// encoding, and f16, over the whole 40-token reference; q8 over fewer tokens); when a link breaks mid-generation the
// client relays and fails over, and the text does not change.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createClient, type MingaClient } from '@minga/client'
import { untilDone } from '@minga/engine'
import { createMingaNode, type MingaNode } from '@minga/p2p'
import { createServer, type MingaServer } from '@minga/server'
import { STORIES, STORIES_PROMPT, STORIES_REFERENCE_IDS } from '../packages/engine/test/helpers.ts'
import { until } from './fixtures/until.ts'

const TOKENS = 20
const expected = STORIES_REFERENCE_IDS.slice(0, TOKENS)
let bootstrap: MingaNode
let first: MingaServer
let middle: MingaServer
let spare: MingaServer
let last: MingaServer

beforeAll(async () => {
  bootstrap = await createMingaNode({})
  const boot = bootstrap.addrs()
  const serve = async (start: number, end: number, throughput: number): Promise<MingaServer> =>
    await createServer({ modelDir: STORIES, blocks: { start, end }, bootstrap: boot, throughput, threads: 1 })
  first = await serve(0, 2, 1000)
  middle = await serve(2, 4, 1000)
  spare = await serve(2, 4, 1) // the slower replica: used only once the middle server is gone
  last = await serve(4, 5, 1000)
})
afterAll(async () => {
  await Promise.all([first, middle, spare, last].map(async s => { await s?.stop({ immediate: true }) }))
  await bootstrap?.stop()
})

async function withClient<T> (wireDtype: 'f32' | 'f16' | 'q8' | undefined, run: (client: MingaClient) => Promise<T>): Promise<T> {
  const client = await createClient({ modelDir: STORIES, bootstrap: bootstrap.addrs(), wireDtype, chains: true })
  try {
    return await run(client)
  } finally {
    await client.close()
  }
}

for (const [wireDtype, tokens] of [[undefined, STORIES_REFERENCE_IDS.length], ['f16', STORIES_REFERENCE_IDS.length], ['q8', TOKENS]] as const) {
  it(`every step goes down the chain and the greedy ids equal the reference (${wireDtype ?? 'f32, the default,'} on the wire)`, async () => {
    const result = await withClient(wireDtype, async client => await untilDone(client.generate(STORIES_PROMPT, { maxNewTokens: tokens })))
    expect(result.route.map(h => h.peerId)).toEqual([first.peerId, middle.peerId, last.peerId])
    expect(result.ids).toEqual(STORIES_REFERENCE_IDS.slice(0, tokens))
    // prefill + tokens - 1 decode steps, two forwarded hops each
    expect(result.events.chainedHops).toBe(2 * tokens)
    expect(result.events.brokenChains).toBe(0)
  }, 120_000)
}

it('a server that dies mid-generation: the client relays, fails over to the replica, and the ids do not change', async () => {
  const result = await withClient(undefined, async client => {
    const stream = client.generate(STORIES_PROMPT, { maxNewTokens: TOKENS })
    let step = await stream.next()
    for (let n = 1; step.done !== true; n++) {
      if (n === 5) await middle.stop({ immediate: true }) // the first server's next forward finds it gone
      step = await stream.next()
    }
    return step.value
  })
  expect(result.ids).toEqual(expected)
  expect(result.events.failovers).toBeGreaterThanOrEqual(1)
  expect(result.route.map(h => h.peerId)).toEqual([first.peerId, spare.peerId, last.peerId])
  // the last server's session still names the old middle server as its upstream, so that link is
  // relayed by the client from then on, while [first → spare] is a chain again
  expect(result.events.chainedHops).toBeGreaterThan(0)
}, 120_000)

it('a server that leaves the chain\'s previous hop off its allow list breaks that link: the client relays to it for the rest of the session', async () => {
  const client = await createClient({ modelDir: STORIES, bootstrap: bootstrap.addrs(), chains: true })
  // (after the test above only the slow spare holds [2, 4)) the best [2, 4) server: every route goes
  // through it, and only the client may talk to it
  const picky = await createServer({ modelDir: STORIES, blocks: { start: 2, end: 4 }, bootstrap: bootstrap.addrs(), throughput: 5000, threads: 1, allow: [client.node.peerId.toString()] })
  try {
    await until(async () => (await client.status().catch(() => undefined))?.servers.some(s => s.peerId === picky.peerId) === true, 'the DHT shows the picky server', { timeoutMs: 60_000, intervalMs: 300 })
    const result = await untilDone(client.generate(STORIES_PROMPT, { maxNewTokens: TOKENS }))
    expect(result.route.map(h => h.peerId)).toEqual([first.peerId, picky.peerId, last.peerId])
    expect(result.ids).toEqual(expected)
    // the first server's forward is refused once; from then on the client relays to the picky one
    // (a link that broke is not tried again in the session), and from it to the last server
    expect(result.events.brokenChains).toBe(1)
    expect(result.events.failovers).toBe(0)
  } finally {
    await client.close()
    await picky.stop({ immediate: true })
  }
}, 120_000)
