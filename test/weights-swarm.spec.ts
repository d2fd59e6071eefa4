// Weights from the swarm, end to end: one server holds stories260k, a second starts with only the
// model id and --blocks 2:5 and fetches just those layers, and a client with only the model id
// fetches just its head and generates llama2.c's reference ids through both.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createClient, type MingaClient } from '@minga/client'
import { loadManifest, untilDone } from '@minga/engine'
import { createMingaNode, type MingaNode } from '@minga/p2p'
import { createServer, type MingaServer } from '@minga/server'
import { selectTensors } from '@minga/weights'
import { createGateway } from '@minga/gateway'
import { STORIES, STORIES_PROMPT, STORIES_REFERENCE_IDS, tempDir } from '../packages/engine/test/helpers.ts'

const CHUNK = 4096 // many chunks from a 1 MB model
const { id: MODEL_ID, manifest } = loadManifest(STORIES, { chunkBytes: CHUNK })
const bytesOf = (names: string[]): number => manifest.tensors.filter(t => names.includes(t.name)).reduce((n, t) => n + t.end - t.begin, 0)
const FILE_BYTES = manifest.files.reduce((n, f) => n + f.size, 0)

let bootstrap: MingaNode
let holder: MingaServer
let fetcher: MingaServer
let client: MingaClient
const caches = [tempDir('swarm-weights-server'), tempDir('swarm-weights-client')]

beforeAll(async () => {
  bootstrap = await createMingaNode({})
  const addrs = bootstrap.addrs()
  holder = await createServer({ modelDir: STORIES, chunkBytes: CHUNK, blocks: { start: 0, end: 2 }, bootstrap: addrs, throughput: 100 })
  fetcher = await createServer({ modelId: MODEL_ID, cacheDir: caches[0].path, blocks: { start: 2, end: 5 }, bootstrap: addrs, throughput: 100 })
  client = await createClient({ modelId: MODEL_ID, cacheDir: caches[1].path, bootstrap: addrs })
})

afterAll(async () => {
  await client?.close()
  await fetcher?.stop({ immediate: true })
  await holder?.stop({ immediate: true })
  await bootstrap?.stop()
  for (const c of caches) c.remove()
})

it('a server with only the model id fetches exactly layers 2–4 and serves them; a client with only the id generates the reference ids', async () => {
  expect(holder.modelId).toBe(MODEL_ID)
  expect(fetcher.modelId).toBe(MODEL_ID)
  const span = fetcher.fetched!
  const spanTensors = selectTensors(manifest, { blocks: { start: 2, end: 5 } }, false)
  expect(span.tensors).toEqual(spanTensors)
  expect(span.bytesFetched).toBe(bytesOf(spanTensors) + FILE_BYTES)

  const head = client.fetched!
  expect(head.tensors).toEqual(['model.embed_tokens.weight', 'model.norm.weight']) // tied embeddings: no LM head of its own
  expect(head.bytesFetched).toBe(bytesOf(head.tensors) + FILE_BYTES)
  console.log(`whole checkpoint ${bytesOf(manifest.tensors.map(t => t.name))} B of tensors + ${FILE_BYTES} B of files; ` +
    `server --blocks 2:5 fetched ${span.bytesFetched} B in ${span.chunksFetched} chunks; client fetched ${head.bytesFetched} B in ${head.chunksFetched} chunks`)

  const result = await untilDone(client.generate(STORIES_PROMPT, { maxNewTokens: STORIES_REFERENCE_IDS.length, temperature: 0 }))
  expect(result.ids).toEqual(STORIES_REFERENCE_IDS)
  expect(result.route).toEqual([{ peerId: holder.peerId, blocks: [0, 2] }, { peerId: fetcher.peerId, blocks: [2, 5] }])
})

it('a gateway with only the model id answers with the same text as that client', async () => {
  const cache = tempDir('swarm-weights-gateway')
  const gateway = await createGateway({ modelId: MODEL_ID, client: { cacheDir: cache.path }, bootstrap: bootstrap.addrs(), port: 0 })
  try {
    expect(gateway.modelName).toBe(MODEL_ID)
    const expected = await untilDone(client.generate(STORIES_PROMPT, { maxNewTokens: 12, temperature: 0 }))
    const reply = await fetch(`${gateway.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL_ID, prompt: STORIES_PROMPT, max_tokens: 12, temperature: 0 })
    })
    expect(reply.status).toBe(200)
    expect((await reply.json()).choices[0].text).toBe(expected.text)
  } finally {
    await gateway.close()
    cache.remove()
  }
})
