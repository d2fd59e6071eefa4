// Batching through a real server: three clients (each its own libp2p node), then three sessions of one
// client (sharing its one stream to the server), generate at once through one server that holds all of
// stories260k; their steps share batches on the server, and each still gets the reference greedy ids.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createClient } from '@minga/client'
import { untilDone } from '@minga/engine'
import { createMingaNode, type MingaNode } from '@minga/p2p'
import { createServer, type MingaServer } from '@minga/server'
import { STORIES, STORIES_PROMPT, STORIES_REFERENCE_IDS } from '../packages/engine/test/helpers.ts'

let bootstrap: MingaNode
let server: MingaServer

beforeAll(async () => {
  bootstrap = await createMingaNode({})
  server = await createServer({ modelDir: STORIES, blocks: { start: 0, end: 5 }, bootstrap: bootstrap.addrs(), throughput: 1000, threads: 1 })
})
afterAll(async () => {
  await server?.stop({ immediate: true })
  await bootstrap?.stop()
})

/** A gauge of the server's metrics registry. */
async function gauge (name: string): Promise<number> {
  const metric = await server.metrics.registry.getSingleMetric(name)?.get()
  return Number(metric?.values[0]?.value ?? NaN)
}

it('three concurrent clients through one server each get the reference ids, their steps batched', async () => {
  const clients = await Promise.all([0, 1, 2].map(async () => await createClient({ modelDir: STORIES, bootstrap: bootstrap.addrs() })))
  try {
    const results = await Promise.all(clients.map(async client => await untilDone(client.generate(STORIES_PROMPT, { maxNewTokens: STORIES_REFERENCE_IDS.length }))))
    for (const result of results) {
      expect(result.ids).toEqual(STORIES_REFERENCE_IDS)
      expect(result.route.map(h => h.peerId)).toEqual([server.peerId])
    }
  } finally {
    await Promise.all(clients.map(async client => { await client.close() }))
  }
  // 3 × 40 steps, each waiting for the others due back soon: some share a batch
  expect(await gauge('minga_server_forward_largest_batch')).toBeGreaterThan(1)
  expect(await gauge('minga_server_forward_batches')).toBeLessThan(3 * STORIES_REFERENCE_IDS.length)
}, 120_000)

it('three concurrent sessions of one client, on one stream, get the reference ids, their steps batched', async () => {
  const client = await createClient({ modelDir: STORIES, bootstrap: bootstrap.addrs() })
  const batchesBefore = await gauge('minga_server_forward_batches')
  try {
    const results = await Promise.all([0, 1, 2].map(async () => await untilDone(client.generate(STORIES_PROMPT, { maxNewTokens: STORIES_REFERENCE_IDS.length }))))
    for (const result of results) expect(result.ids).toEqual(STORIES_REFERENCE_IDS)
  } finally {
    await client.close()
  }
  // the server answers a stream's frames of different sessions at once, so they reach the same batches
  expect(await gauge('minga_server_forward_batches') - batchesBefore).toBeLessThan(3 * STORIES_REFERENCE_IDS.length)
}, 120_000)
