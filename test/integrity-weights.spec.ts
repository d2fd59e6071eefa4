// Verification compares a server's step only with servers that run the same weights: int8 and f32
// servers of one span compute slightly different outputs, and neither is lying. Each server's entry
// says what its weights are (quantization and format), and the client picks verifiers by it.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createClient, type SwarmGenerationResult } from '@minga/client'
import { createLocalModel, untilDone } from '@minga/engine'
import { createMingaNode, type MingaNode } from '@minga/p2p'
import { createServer, type MingaServer } from '@minga/server'
import { STORIES } from '../packages/engine/test/helpers.ts'

const PROMPT = 'Once upon a time'
let bootstrap: MingaNode
const servers: MingaServer[] = []
let int8: MingaServer
let expected: number[]

beforeAll(async () => {
  const local = await createLocalModel({ modelDir: STORIES, quant: 'int8' })
  expected = (await untilDone(local.generate(PROMPT, { maxNewTokens: 20 }))).ids
  await local.close()
  bootstrap = await createMingaNode({})
  const addrs = bootstrap.addrs()
  for (let i = 0; i < 2; i++) servers.push(await createServer({ modelDir: STORIES, quant: 'none', blocks: { start: 0, end: 5 }, bootstrap: addrs, throughput: 1 }))
  // the int8 server announces the best throughput, so every route goes through it
  int8 = await createServer({ modelDir: STORIES, quant: 'int8', blocks: { start: 0, end: 5 }, bootstrap: addrs, throughput: 10_000 })
  servers.push(int8)
})
afterAll(async () => {
  await Promise.all(servers.map(async s => { await s.stop({ immediate: true }) }))
  await bootstrap?.stop()
})

async function generateVerified (): Promise<SwarmGenerationResult> {
  const client = await createClient({ modelDir: STORIES, bootstrap: bootstrap.addrs(), verifyProbability: 1 })
  try {
    const result = await untilDone(client.generate(PROMPT, { maxNewTokens: 20 }))
    expect(client.banned.size).toBe(0)
    return result
  } finally {
    await client.close()
  }
}

it('an int8 server is not verified against f32 servers, nor banned for differing from them', async () => {
  const result = await generateVerified()
  expect(result.route).toEqual([{ peerId: int8.peerId, blocks: [0, 5] }])
  expect(result.ids).toEqual(expected)
  expect(result.events).toMatchObject({ verifications: 0, mismatches: 0, banned: [] })
}, 120_000)

it('a second int8 server verifies it, and they agree', async () => {
  servers.push(await createServer({ modelDir: STORIES, quant: 'int8', blocks: { start: 0, end: 5 }, bootstrap: bootstrap.addrs(), throughput: 1 }))
  const result = await generateVerified()
  expect(result.route).toEqual([{ peerId: int8.peerId, blocks: [0, 5] }])
  expect(result.ids).toEqual(expected)
  expect(result.events.verifications).toBeGreaterThan(0)
  expect(result.events).toMatchObject({ mismatches: 0, banned: [] })
}, 120_000)
