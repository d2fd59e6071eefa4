// Bad input gets a named error with a clear message, and a span keeps serving its other sessions.
import { mkdirSync, writeFileSync, cpSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createClientHead, createLocalModel, createSpanExecutor, loadModelConfig, type ClientHead, type SpanExecutor } from '../src/index.ts'
import { forwardThrough, maxAbsDiff, STORIES, STORIES_PROMPT_IDS, tempDir } from './helpers.ts'

describe('model loading', () => {
  const dir = tempDir('errors')
  afterAll(() => { dir.remove() })

  it('names a missing directory or config.json', () => {
    expect(() => loadModelConfig(join(dir.path, 'nowhere'))).toThrow(/missing file .*nowhere\/config\.json/)
  })

  it('rejects an unsupported model_type', () => {
    const model = join(dir.path, 'gpt2')
    mkdirSync(model)
    writeFileSync(join(model, 'config.json'), JSON.stringify({ model_type: 'gpt2', hidden_size: 8 }))
    expect(() => loadModelConfig(model)).toThrow(expect.objectContaining({ name: 'UnsupportedModelError', message: expect.stringMatching(/unsupported model_type "gpt2"/) }))
  })

  it('rejects an unsupported tensor dtype', async () => {
    const model = join(dir.path, 'f64')
    mkdirSync(model)
    cpSync(join(STORIES, 'config.json'), join(model, 'config.json'))
    const header = Buffer.from(JSON.stringify({ 'model.norm.weight': { dtype: 'F64', shape: [64], data_offsets: [0, 512] } }).padEnd(120, ' '))
    const length = Buffer.alloc(8)
    length.writeBigUInt64LE(BigInt(header.length))
    writeFileSync(join(model, 'model.safetensors'), Buffer.concat([length, header, Buffer.alloc(512)]))
    await expect(createSpanExecutor({ modelDir: model, start: 0, end: 1 })).rejects.toThrow(/unsupported dtype F64 \(supported: F32, F16, BF16\)/)
  })

  it('names missing weights and missing tensors', async () => {
    const model = join(dir.path, 'noweights')
    mkdirSync(model)
    cpSync(join(STORIES, 'config.json'), join(model, 'config.json'))
    await expect(createSpanExecutor({ modelDir: model, start: 0, end: 1 })).rejects.toThrow(/missing weights in .*noweights: neither model\.safetensors nor model\.safetensors\.index\.json/)
  })

  it('rejects a span outside the model', async () => {
    await expect(createSpanExecutor({ modelDir: STORIES, start: 3, end: 9 })).rejects.toThrow(/span \[3, 9\) is not within the model's 5 layers/)
  })
})

describe('generation limits', () => {
  it('rejects a prompt longer than the context', async () => {
    const model = await createLocalModel({ modelDir: STORIES })
    try {
      const stream = model.generate('the '.repeat(600))
      await expect(stream.next()).rejects.toThrow(/the prompt is \d+ tokens, longer than the model's context of 512 tokens/)
    } finally {
      await model.close()
    }
  })

  it('rejects bad sampling values by name', async () => {
    const model = await createLocalModel({ modelDir: STORIES })
    try {
      await expect(model.generate('Hi', { topP: 0 }).next()).rejects.toThrow(/top-p must be in \(0, 1\]/)
      await expect(model.generate('Hi', { temperature: -1 }).next()).rejects.toThrow(/temperature must be a number ≥ 0/)
      await expect(model.generate('Hi', { maxNewTokens: 0 }).next()).rejects.toThrow(/max new tokens must be an integer ≥ 1/)
    } finally {
      await model.close()
    }
  })
})

describe('span sessions', () => {
  let head: ClientHead
  let span: SpanExecutor
  beforeAll(async () => {
    head = await createClientHead({ modelDir: STORIES })
    // 256 bytes of keys and values per token and layer: a budget of 100 tokens of all 5 layers
    span = await createSpanExecutor({ modelDir: STORIES, start: 0, end: 5, quant: 'none', maxSessions: 2, cacheBytes: 100 * 5 * 256 })
  })
  afterAll(async () => { await Promise.all([head?.close(), span?.close()]) })

  it('rejects bad requests and keeps serving a healthy session', async () => {
    await span.openSession('healthy', 20)
    const hidden = await head.embed(STORIES_PROMPT_IDS.slice(0, 2))
    const first = await forwardThrough([span], 'healthy', hidden, 2)

    await expect(span.forward('nobody', new Float32Array(64), { tokens: 1 })).rejects.toThrow(expect.objectContaining({ name: 'UnknownSessionError', message: 'unknown session nobody' }))
    await expect(span.forward('healthy', new Float32Array(63), { tokens: 1 })).rejects.toThrow(expect.objectContaining({ name: 'ShapeError' }))
    await expect(span.forward('healthy', new Float32Array(64), { tokens: 1, position: 7 })).rejects.toThrow(expect.objectContaining({ name: 'PositionError', message: "position 7 does not match the session's 2 cached tokens" }))
    await expect(span.forward('healthy', new Float32Array(64 * 19), { tokens: 19 })).rejects.toThrow(/2 cached \+ 19 new tokens exceed the session's length of 20/)
    await expect(span.openSession('healthy', 5)).rejects.toThrow(/already open/)
    // caches grow as they fill: opening reserves nothing, growing beyond the budget is BUSY
    await span.openSession('huge', 90)
    await expect(span.forward('huge', new Float32Array(64 * 90), { tokens: 90 })).rejects.toThrow(expect.objectContaining({
      name: 'SessionLimitError', message: expect.stringMatching(/^busy: the KV cache is full \(0\.02 of 0\.12 MB in use\): session huge cannot grow to 90 tokens/)
    }))
    await span.closeSession('huge')
    await span.openSession('second', 10)
    await expect(span.openSession('third', 10)).rejects.toThrow(/^busy: all 2 sessions are in use/)
    await span.closeSession('second')

    // The healthy session continues exactly where it was: same result as a fresh run of all 3 tokens.
    const next = await forwardThrough([span], 'healthy', await head.embed([STORIES_PROMPT_IDS[2]]), 1)
    await span.openSession('check', 3)
    const fresh = await forwardThrough([span], 'check', await head.embed(STORIES_PROMPT_IDS.slice(0, 3)), 3)
    expect(maxAbsDiff(next, fresh.subarray(2 * 64))).toBeLessThan(1e-4)
    expect(first.length).toBe(128)
    expect(await span.stats()).toMatchObject({ sessions: 2, freeSessions: 0 })
  })
})
