// Manifests, the store, the provider and the fetcher with real libp2p nodes on 127.0.0.1 and the
// real stories260k checkpoint, cut into 4 KiB chunks so that it has a few hundred.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { appendFileSync, existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { computeModelId, manifestId } from '@minga/engine'
import { createMingaNode, type MingaNode } from '@minga/p2p'
import { STORIES, tempDir } from '../../engine/test/helpers.ts'
import {
  buildManifest, createWeightStore, directorySource, fetchModel, modelCid, requestWeights, selectTensors, serveWeights,
  type WeightSource, type WeightsProvider
} from '../src/index.ts'
import { SafetensorsCheckpoint } from '../../engine/src/safetensors.ts'
import { WeightsChannel } from '../src/client.ts'
import { until } from '../../../test/fixtures/until.ts'

const HERE = dirname(fileURLToPath(import.meta.url))

const CHUNK = 4096
const loaded = buildManifest(STORIES, { chunkBytes: CHUNK })
const ID = loaded.id
const source = directorySource(STORIES, ID, loaded.bytes, loaded.manifest)

/** A provider that flips a byte in every chunk it sends. */
function corrupting (inner: WeightSource): WeightSource {
  return { ...inner, read: chunk => { const b = inner.read(chunk); b[0] ^= 0xff; return b } }
}

let bootstrap: MingaNode
const nodes: MingaNode[] = []
const providers: WeightsProvider[] = []
let honest: MingaNode[]
let corrupt: MingaNode

async function node (): Promise<MingaNode> {
  const n = await createMingaNode({ bootstrap: bootstrap.addrs() })
  nodes.push(n)
  return n
}

beforeAll(async () => {
  bootstrap = await createMingaNode({})
  honest = [await node(), await node()]
  for (const n of honest) providers.push(await serveWeights(n, [source]))
  corrupt = await node()
  providers.push(await serveWeights(corrupt, [corrupting(source)], { announce: false }))
})

afterAll(async () => {
  for (const p of providers) await p.close()
  await Promise.all(nodes.map(async n => { await n.stop() }))
  await bootstrap?.stop()
})

it('the model id is the CID of the manifest; the default manifest is the engine\'s model id', () => {
  expect(ID).toBe(manifestId(loaded.bytes))
  expect(modelCid(ID).toString()).toBe(ID)
  expect(buildManifest(STORIES).id).toBe(computeModelId(STORIES))
  expect(loaded.manifest.files.map(f => f.path)).toEqual(['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json'])
  expect(loaded.manifest.tensors.every(t => t.chunks.length === Math.ceil((t.end - t.begin) / CHUNK))).toBe(true)
})

it('fetches exactly the tensors of layers 2–4 from the providers the DHT names, and every byte matches', async () => {
  const cache = tempDir('weights-span')
  const client = await node()
  try {
    const result = await fetchModel({ node: client, modelId: ID, cacheDir: cache.path, select: { blocks: { start: 2, end: 5 } } })
    const expected = selectTensors(loaded.manifest, { blocks: { start: 2, end: 5 } }, false)
    expect(result.tensors).toEqual(expected)
    expect(expected.every(n => /^model\.layers\.[234]\./.test(n))).toBe(true)
    const tensorBytes = loaded.manifest.tensors.filter(t => expected.includes(t.name)).reduce((n, t) => n + t.end - t.begin, 0)
    const fileBytes = loaded.manifest.files.reduce((n, f) => n + f.size, 0)
    console.log(`layers 2–4: fetched ${result.bytesFetched} bytes in ${result.chunksFetched} chunks (tensors ${tensorBytes}, files ${fileBytes}; whole checkpoint ${loaded.manifest.tensors.reduce((n, t) => n + t.end - t.begin, 0)}), by provider ${JSON.stringify(result.bytesByProvider)}`)
    expect(result.bytesFetched).toBe(tensorBytes + fileBytes)
    expect(Object.keys(result.bytesByProvider).sort()).toEqual(honest.map(n => n.peerId.toString()).sort())
    const original = new SafetensorsCheckpoint(STORIES)
    const fetched = new SafetensorsCheckpoint(result.dir)
    try {
      for (const name of expected) expect(fetched.read(name)).toEqual(original.read(name))
      for (const f of loaded.manifest.files) expect(readFileSync(join(result.dir, f.path))).toEqual(readFileSync(join(STORIES, f.path)))
    } finally {
      original.close()
      fetched.close()
    }
    // the store serves what it holds, and says which chunks those are
    const have = result.store.source()
    expect(have.chunks.filter(c => have.has(c.index)).length).toBe(result.chunksFetched)
    result.store.close()
  } finally {
    cache.remove()
  }
})

it('a provider that corrupts chunks is detected and dropped; the fetch completes from another, exact', async () => {
  const cache = tempDir('weights-corrupt')
  const client = await node()
  try {
    const result = await fetchModel({ node: client, modelId: ID, cacheDir: cache.path, providers: [corrupt.peerId, honest[0].peerId], select: { head: true } })
    expect(result.badProviders).toEqual([corrupt.peerId.toString()])
    expect(Object.keys(result.bytesByProvider)).toEqual([honest[0].peerId.toString()])
    expect(result.tensors).toEqual(['model.embed_tokens.weight', 'model.norm.weight']) // tied: no separate LM head
    const original = new SafetensorsCheckpoint(STORIES)
    const fetched = new SafetensorsCheckpoint(result.dir)
    try {
      for (const name of result.tensors) expect(fetched.read(name)).toEqual(original.read(name))
    } finally {
      original.close()
      fetched.close()
    }
    result.store.close()
  } finally {
    cache.remove()
  }
})

it('a fetch killed half-way resumes without fetching its verified chunks again', async () => {
  const cache = tempDir('weights-resume')
  const client = await node()
  try {
    const abort = new AbortController()
    let seen = 0
    await expect(fetchModel({
      node: client, modelId: ID, cacheDir: cache.path, providers: [honest[0].peerId], parallel: 2, signal: abort.signal,
      onChunk: () => { if (++seen === 40) abort.abort(new Error('killed')) }
    })).rejects.toThrow()
    const resumed = await fetchModel({ node: client, modelId: ID, cacheDir: cache.path, providers: [honest[1].peerId] })
    const total = resumed.store.chunks.length
    console.log(`resume: ${seen} chunks before the kill, ${resumed.chunksReused} reused, ${resumed.chunksFetched} fetched after, ${total} in all`)
    expect(resumed.chunksReused).toBeGreaterThanOrEqual(40)
    expect(resumed.chunksReused + resumed.chunksFetched).toBe(total)
    expect(resumed.chunksFetched).toBeLessThanOrEqual(total - 40)
    resumed.store.close()
  } finally {
    cache.remove()
  }
})

it('a fetch in a process killed with SIGKILL half-way resumes from what it had verified', async () => {
  const cache = tempDir('weights-sigkill')
  // a capped provider (2 Mbit/s: over 4 s for the whole model) so the child cannot finish before it is killed
  const slowNode = await node()
  const slow = await serveWeights(slowNode, [source], { announce: false, shareMbps: 2 })
  providers.push(slow)
  const client = await node()
  const child = spawn(process.execPath, ['--import', 'tsx', join(HERE, 'fixtures/fetch-child.ts'), ID, slowNode.addrs()[0], cache.path], { stdio: 'ignore' })
  const exited = new Promise(resolve => child.once('exit', resolve))
  try {
    const log = join(cache.path, 'models', ID, 'verified.log')
    const verified = (): number => existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(l => /^\d+$/.test(l)).length : 0
    await until(() => verified() >= 40, 'the child has verified 40 chunks', { timeoutMs: 60_000 })
    child.kill('SIGKILL')
    await exited
    const before = verified()
    expect(before).toBeLessThan(source.chunks.length)
    const resumed = await fetchModel({ node: client, modelId: ID, cacheDir: cache.path, providers: [honest[0].peerId] })
    console.log(`SIGKILL: ${before} tensor chunks verified before the kill; the resumed fetch reused ${resumed.chunksReused} and fetched ${resumed.chunksFetched} of ${resumed.store.chunks.length}`)
    expect(resumed.chunksReused).toBeGreaterThanOrEqual(before)
    expect(resumed.chunksReused + resumed.chunksFetched).toBe(resumed.store.chunks.length)
    const original = new SafetensorsCheckpoint(STORIES)
    const fetched = new SafetensorsCheckpoint(resumed.dir)
    try {
      for (const t of loaded.manifest.tensors) expect(fetched.read(t.name)).toEqual(original.read(t.name))
    } finally {
      original.close()
      fetched.close()
    }
    resumed.store.close()
  } finally {
    child.kill('SIGKILL')
    cache.remove()
  }
})

describe('bad input', () => {
  it('an unknown model id, a lying manifest, a chunk out of range: clear errors, and the provider keeps serving', async () => {
    const cache = tempDir('weights-bad')
    const client = await node()
    try {
      const unknown = manifestId(new TextEncoder().encode('no such model'))
      await expect(fetchModel({ node: client, modelId: unknown, cacheDir: cache.path })).rejects.toThrow(/no provider of model bafkrei\w+ found in the swarm/)
      await expect(requestWeights(client, honest[0].peerId, { model: unknown, op: 'manifest' }, 1 << 20, AbortSignal.timeout(10_000)))
        .rejects.toMatchObject({ name: 'UnknownModelError', message: expect.stringMatching(/does not provide model/) })
      await expect(requestWeights(client, honest[0].peerId, { model: ID, op: 'chunk', index: 1e6 }, 1 << 20, AbortSignal.timeout(10_000)))
        .rejects.toMatchObject({ name: 'ChunkRangeError', message: expect.stringMatching(/chunk 1000000 is out of range/) })
      await expect(fetchModel({ node: client, modelId: 'not-a-cid', cacheDir: cache.path })).rejects.toMatchObject({ name: 'InvalidModelIdError' })

      // a node that serves a manifest which does not hash to the id it is asked for
      const liarNode = await node()
      const tampered = new TextEncoder().encode(new TextDecoder().decode(loaded.bytes).replace('"v":1', '"v":1 '))
      const liar = await serveWeights(liarNode, [{ ...source, manifestBytes: tampered }], { announce: false })
      providers.push(liar)
      await expect(fetchModel({ node: client, modelId: ID, cacheDir: cache.path, providers: [liarNode.peerId] }))
        .rejects.toMatchObject({ name: 'ManifestError', message: expect.stringMatching(/hashes to bafkrei\w+, not to the model id/) })

      // still serving everyone
      const bytes = await requestWeights(client, honest[0].peerId, { model: ID, op: 'chunk', index: 0 }, CHUNK, AbortSignal.timeout(10_000))
      expect(Buffer.from(bytes)).toEqual(Buffer.from(source.read(source.chunks[0])))
    } finally {
      cache.remove()
    }
  })
})

it('a channel whose stream broke between requests (its connection closed) asks again on a new stream', async () => {
  const client = await node()
  const channel = new WeightsChannel(client, honest[0].peerId)
  try {
    const first = await channel.request({ model: ID, op: 'chunk', index: 0 }, CHUNK, AbortSignal.timeout(10_000))
    await client.libp2p.hangUp(honest[0].peerId)
    const again = await channel.request({ model: ID, op: 'chunk', index: 0 }, CHUNK, AbortSignal.timeout(10_000))
    expect(Buffer.from(again)).toEqual(Buffer.from(first))
  } finally {
    channel.close()
  }
})

it('the store ignores a record cut short at the end of verified.log', async () => {
  const cache = tempDir('weights-log')
  try {
    const store = createWeightStore({ modelId: ID, cacheDir: cache.path })
    store.setManifest(loaded.bytes)
    const tensorChunks = store.chunks.filter(c => c.kind === 'tensor')
    for (const c of tensorChunks.slice(0, 3)) expect(store.write(c, source.read(c))).toBe(true)
    expect(store.write(tensorChunks[3], new Uint8Array(tensorChunks[3].length))).toBe(false) // a wrong chunk is not written
    store.close()
    appendFileSync(join(cache.path, 'models', ID, 'verified.log'), String(tensorChunks[4].index)) // no newline: cut short
    const reopened = createWeightStore({ modelId: ID, cacheDir: cache.path })
    expect(tensorChunks.map(c => reopened.has(c.index)).slice(0, 6)).toEqual([true, true, true, false, false, false])
    expect(Buffer.from(reopened.read(tensorChunks[1]))).toEqual(Buffer.from(source.read(tensorChunks[1])))
    reopened.close()
  } finally {
    cache.remove()
  }
})
