// Prepared spans: the first start converts and quantizes the layers into the cache folder, later
// starts load them without touching the checkpoint's tensors; damaged entries are rebuilt, never
// loaded. And KV caches that grow with their sessions instead of reserving the whole context.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  argmax, computeModelId, createClientHead, createSpanExecutor, KV_BLOCK_TOKENS, PREPARED_FORMAT, preparedDirName, prepareSpan, preparedSpanBytes, loadModelConfig,
  type ClientHead, type SpanExecutor, type SpanExecutorInit
} from '../src/index.ts'
import { STORIES, STORIES_PROMPT_IDS, tempDir } from './helpers.ts'

let head: ClientHead
beforeAll(async () => { head = await createClientHead({ modelDir: STORIES }) })
afterAll(async () => { await head?.close() })

/** Hidden states of the prompt through a fresh executor, and what its load reported. */
async function startAndRun (init: SpanExecutorInit): Promise<{ out: Float32Array, bytesRead: number, built: number[], log: string[] }> {
  const log: string[] = []
  const span = await createSpanExecutor({ ...init, log: message => log.push(message) })
  try {
    await span.openSession('s', 16)
    const out = await span.forward('s', await head.embed(STORIES_PROMPT_IDS), { tokens: STORIES_PROMPT_IDS.length })
    return { out, bytesRead: span.bytesRead, built: span.prepared.built, log }
  } finally {
    await span.close()
  }
}

describe('prepared spans', () => {
  const cache = tempDir('prepared')
  afterAll(() => { cache.remove() })
  const init = { modelDir: STORIES, start: 0, end: 5, quant: 'int8' as const, cacheDir: cache.path }
  const dir = join(cache.path, 'prepared', computeModelId(STORIES), preparedDirName('int8'))
  let first: Awaited<ReturnType<typeof startAndRun>>

  it('the first start prepares every layer; a second start reads no checkpoint tensor and gives identical output', async () => {
    first = await startAndRun(init)
    expect(first.built).toEqual([0, 1, 2, 3, 4])
    expect(first.bytesRead).toBeGreaterThan(0)
    const files = readdirSync(dir).sort()
    expect(files).toEqual([0, 1, 2, 3, 4].flatMap(l => [`layer-${l}.json`, `layer-${l}.post.onnx`, `layer-${l}.pre.onnx`, `layer-${l}.weights`]).sort())
    const weights = files.filter(f => f.endsWith('.weights')).reduce((n, f) => n + statSync(join(dir, f)).size, 0)
    expect(weights).toBe(preparedSpanBytes(loadModelConfig(STORIES), 'int8', 5))

    const second = await startAndRun(init)
    expect(second.built).toEqual([])
    expect(second.bytesRead).toBe(0)
    expect(second.log).toEqual([])
    expect(Array.from(second.out)).toEqual(Array.from(first.out))
  })

  it('layers are stored one by one: a prepared [0, 5) serves [1, 3) without reading the checkpoint', async () => {
    const span = await createSpanExecutor({ ...init, start: 1, end: 3 })
    try {
      expect(span.bytesRead).toBe(0)
      expect(span.prepared.built).toEqual([])
    } finally {
      await span.close()
    }
  })

  it.each([
    { damage: 'a truncated weights file', file: 'layer-2.weights', apply: (path: string) => { truncateSync(path, statSync(path).size - 100) }, reason: /layer-2\.weights has \d+ bytes, expected \d+/ },
    { damage: 'a flipped byte', file: 'layer-2.weights', apply: flipByte, reason: /layer-2\.weights fails its checksum/ },
    { damage: 'a corrupted graph', file: 'layer-2.post.onnx', apply: flipByte, reason: /layer-2\.post\.onnx fails its checksum/ },
    { damage: 'a manifest of another format', file: 'layer-2.json', apply: (path: string) => { writeFileSync(path, readFileSync(path, 'utf8').replace(`"format": ${PREPARED_FORMAT}`, '"format": 0')) }, reason: new RegExp(`format 0, expected ${PREPARED_FORMAT}`) },
    { damage: 'an unreadable manifest', file: 'layer-2.json', apply: (path: string) => { writeFileSync(path, '{') }, reason: /unreadable manifest/ },
    { damage: 'files without a manifest (killed mid-write)', file: 'layer-2.json', apply: (path: string) => { rmSync(path) }, reason: /layer-2\.pre\.onnx and layer-2\.post\.onnx and layer-2\.weights without a manifest: preparation was interrupted/ }
  ])('$damage is detected, logged and rebuilt, never loaded', async ({ file, apply, reason }) => {
    apply(join(dir, file))
    const rebuilt = await startAndRun(init)
    expect(rebuilt.built).toEqual([2])
    expect(rebuilt.log).toHaveLength(1)
    expect(rebuilt.log[0]).toMatch(/^prepared layer 2 in .* is damaged \(.*\), rebuilding$/)
    expect(rebuilt.log[0]).toMatch(reason)
    expect(Array.from(rebuilt.out)).toEqual(Array.from(first.out))
    // and the rebuilt entry is whole again
    expect((await startAndRun(init)).built).toEqual([])
  })

  it('prepareSpan does the same ahead of time, with progress per layer', async () => {
    const progress: number[] = []
    const other = await prepareSpan({ ...init, quant: 'int4', onProgress: p => progress.push(p.layer) })
    expect(other.built).toEqual([0, 1, 2, 3, 4])
    expect(progress).toEqual([0, 1, 2, 3, 4])
    expect(other.bytes).toBeGreaterThan(preparedSpanBytes(loadModelConfig(STORIES), 'int4', 5))
    expect((await prepareSpan({ ...init, quant: 'int4' })).built).toEqual([])
  })

  it('preparing removes the model\'s folders of an older format, with a log line', async () => {
    const models = join(cache.path, 'prepared', computeModelId(STORIES))
    const kept = readdirSync(models).sort()
    const older = [join(models, `none-v${PREPARED_FORMAT - 1}`), join(models, `none-b32-v${PREPARED_FORMAT - 1}`)]
    for (const dir of older) {
      mkdirSync(dir, { recursive: true })
      writeFileSync(join(dir, 'layer-0.weights'), new Uint8Array(1024))
    }
    const log: string[] = []
    expect((await prepareSpan({ ...init, quant: 'none', start: 0, end: 1, log: m => log.push(m) })).built).toEqual([0])
    for (const dir of older) {
      expect(existsSync(dir)).toBe(false)
      expect(log.some(line => line.includes('older format') && line.includes(dir))).toBe(true)
    }
    // the other quantizations' folders are kept
    expect(readdirSync(models).sort()).toEqual([...kept, preparedDirName('none')].sort())
  })

  it('preparing int8 removes the retired default\'s folder (block 128), but a caller naming that format keeps its own', async () => {
    const own = tempDir('prepared-retired')
    try {
      const retired = join(own.path, 'prepared', computeModelId(STORIES), `int8-b128-v${PREPARED_FORMAT}`)
      const b128 = { bits: 8, blockSize: 128, zeroPoints: true } as const
      expect((await prepareSpan({ ...init, cacheDir: own.path, format: b128, start: 0, end: 1 })).built).toEqual([0])
      expect((await prepareSpan({ ...init, cacheDir: own.path, format: b128, start: 0, end: 2 })).built).toEqual([1])
      expect(existsSync(retired)).toBe(true)
      const log: string[] = []
      expect((await prepareSpan({ ...init, cacheDir: own.path, start: 0, end: 1, log: m => log.push(m) })).built).toEqual([0])
      expect(existsSync(retired)).toBe(false)
      expect(log.some(line => line.includes('no longer a default') && line.includes(retired))).toBe(true)
    } finally {
      own.remove()
    }
  })
})

function flipByte (path: string): void {
  const bytes = readFileSync(path)
  bytes[Math.floor(bytes.length / 2)] ^= 0xff
  writeFileSync(path, bytes)
}

describe('KV caches grow with their sessions', () => {
  let span: SpanExecutor
  beforeAll(async () => { span = await createSpanExecutor({ modelDir: STORIES, start: 0, end: 5, quant: 'none' }) })
  afterAll(async () => { await span?.close() })

  it('a session that generates 300 tokens holds cache for ≈ 300 tokens, not the context it may reach', async () => {
    const context = span.maxPositions
    expect(context).toBe(512)
    await span.openSession('long', context)
    expect((await span.stats()).cacheTokens).toBe(0)
    let hidden = await span.forward('long', await head.embed(STORIES_PROMPT_IDS), { tokens: STORIES_PROMPT_IDS.length })
    let logits = await head.logits(hidden.subarray(hidden.length - head.config.hiddenSize), 1)
    const held = new Set<number>()
    for (let generated = 0; generated < 300; generated++) {
      hidden = await span.forward('long', await head.embed([argmax(logits)]), { tokens: 1 })
      logits = await head.logits(hidden, 1)
      held.add((await span.stats()).cacheTokens)
    }
    const tokens = STORIES_PROMPT_IDS.length + 300
    const stats = await span.stats()
    expect(stats.cacheTokens).toBe(Math.ceil(tokens / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS)
    expect(stats.cacheTokens).toBeLessThan(tokens + KV_BLOCK_TOKENS)
    expect(stats.cacheBytes).toBe(stats.cacheTokens * 5 * 2 * 4 * 8 * 4) // layers × (k, v) × kv heads × head dim × f32
    // it grew block by block
    expect([...held].every(n => n % KV_BLOCK_TOKENS === 0)).toBe(true)
    expect(held.size).toBeGreaterThan(3)
    await span.closeSession('long')
    expect(await span.stats()).toMatchObject({ cacheTokens: 0, cacheBytes: 0 })
  })
})
