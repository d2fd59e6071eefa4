// A server that returns wrong results is caught by verification on a second server, a third
// decides, the liar is banned, and the generation still completes with the right output.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createClient } from '@minga/client'
import { createLocalModel, createSpanExecutor, untilDone, type SpanExecutor } from '@minga/engine'
import { createMingaNode, type MingaNode } from '@minga/p2p'
import { createServer, type MingaServer } from '@minga/server'
import { STORIES } from '../packages/engine/test/helpers.ts'

let bootstrap: MingaNode
const servers: MingaServer[] = []
let liar: MingaServer
let expected: number[]

/** The real engine, with every output nudged: plausible numbers, wrong ones. */
function corrupting (executor: SpanExecutor): SpanExecutor {
  return {
    ...executor,
    forward: async (sessionId, hidden, options) => {
      const out = await executor.forward(sessionId, hidden, options)
      for (let i = 0; i < out.length; i += 3) out[i] = -out[i]
      return out
    }
  }
}

beforeAll(async () => {
  const local = await createLocalModel({ modelDir: STORIES, quant: 'none' })
  expected = (await untilDone(local.generate('Once upon a time', { maxNewTokens: 20 }))).ids
  await local.close()
  bootstrap = await createMingaNode({})
  const addrs = bootstrap.addrs()
  for (let i = 0; i < 2; i++) servers.push(await createServer({ modelDir: STORIES, quant: 'none', blocks: { start: 0, end: 5 }, bootstrap: addrs, throughput: 1 }))
  // The liar announces the best throughput, so every route starts through it.
  const executor = corrupting(await createSpanExecutor({ modelDir: STORIES, start: 0, end: 5, quant: 'none' }))
  liar = await createServer({ modelDir: STORIES, blocks: 'auto', executor, bootstrap: addrs, throughput: 10_000 })
  servers.push(liar)
})
afterAll(async () => {
  await Promise.all(servers.map(async s => { await s.stop({ immediate: true }) }))
  await bootstrap?.stop()
})

it('without verification the corrupt server goes unnoticed (the output is wrong)', async () => {
  const client = await createClient({ modelDir: STORIES, bootstrap: bootstrap.addrs() })
  try {
    const result = await untilDone(client.generate('Once upon a time', { maxNewTokens: 20 }))
    expect(result.route).toEqual([{ peerId: liar.peerId, blocks: [0, 5] }])
    expect(result.ids).not.toEqual(expected)
  } finally {
    await client.close()
  }
})

it('verification detects and bans it, and the generation completes correctly', async () => {
  const client = await createClient({ modelDir: STORIES, bootstrap: bootstrap.addrs(), verifyProbability: 1 })
  try {
    const result = await untilDone(client.generate('Once upon a time', { maxNewTokens: 20 }))
    expect(result.ids).toEqual(expected)
    expect(result.events.mismatches).toBeGreaterThanOrEqual(1)
    expect(result.events.banned).toEqual([liar.peerId])
    expect(client.banned.has(liar.peerId)).toBe(true)
    expect(result.route.map(h => h.peerId)).not.toContain(liar.peerId)
    // Later generations of this client never use it again.
    const again = await untilDone(client.generate('Once upon a time', { maxNewTokens: 5 }))
    expect(again.route.map(h => h.peerId)).not.toContain(liar.peerId)
    expect(again.events.mismatches).toBe(0)
  } finally {
    await client.close()
  }
})
