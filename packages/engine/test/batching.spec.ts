// Batching: concurrent sessions' steps run through a span as one batch (the linear layers see all
// their rows at once), and each session's greedy output stays what it is when it runs alone — under
// 1, 3 and 8 concurrent sessions with different prompt lengths, prefill chunks batching with other
// sessions' decode steps, on the real stories260k and on a random checkpoint of another shape.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { argmax, createClientHead, createSpanExecutor, PositionError, ShapeError, UnknownSessionError, type ClientHead, type Quantization, type SpanExecutor } from '../src/index.ts'
import { makeRandomModel, type RandomModelSpec } from './fixtures/random-model.ts'
import { STORIES, STORIES_PROMPT_IDS, tempDir } from './helpers.ts'

/** The llama fixture of fixtures.spec.ts: GQA ratio 3, head_dim ≠ hidden/heads, biases, llama3 rope. */
const RANDOM_LLAMA: RandomModelSpec = {
  modelType: 'llama', hiddenSize: 48, intermediateSize: 96, numLayers: 3, numHeads: 6, numKvHeads: 2, headDim: 16,
  vocabSize: 97, ropeTheta: 500000, attentionBias: true, tieWordEmbeddings: false, maxPositionEmbeddings: 256,
  ropeScaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
  seed: 11
}

const NEW_TOKENS = 10
/** Prompts are prefilled in chunks of this many tokens, so long prompts still prefill while short ones decode. */
const PREFILL_CHUNK = 4

/** Eight prompts of 1 to 22 tokens over a vocabulary of `vocab` ids. */
function prompts (vocab: number): number[][] {
  return Array.from({ length: 8 }, (_, i) => Array.from({ length: 1 + 3 * i }, (_, j) => j < STORIES_PROMPT_IDS.length && vocab > 500 ? STORIES_PROMPT_IDS[j] : (7 * i + 13 * j + 1) % vocab))
}

/** A session's own greedy continuation of `prompt`, through `route` (spans and the session ids it opened there). */
async function greedy (head: ClientHead, route: Array<{ span: SpanExecutor, sessionId: string }>, prompt: number[]): Promise<number[]> {
  const { hiddenSize } = head.config
  const through = async (hidden: Float32Array, tokens: number, position: number): Promise<Float32Array> => {
    for (const { span, sessionId } of route) hidden = await span.forward(sessionId, hidden, { tokens, position })
    return hidden
  }
  let hidden: Float32Array = new Float32Array(0)
  for (let done = 0; done < prompt.length; done += PREFILL_CHUNK) {
    const chunk = prompt.slice(done, done + PREFILL_CHUNK)
    hidden = await through(await head.embed(chunk), chunk.length, done)
  }
  const ids: number[] = []
  for (let step = 0; ; step++) {
    ids.push(argmax(await head.logits(hidden.subarray(hidden.length - hiddenSize), 1)))
    if (ids.length === NEW_TOKENS) return ids
    hidden = await through(await head.embed([ids[ids.length - 1]]), 1, prompt.length + step)
  }
}

async function runConcurrently (head: ClientHead, span: SpanExecutor, label: string, batch: number[][]): Promise<number[][]> {
  const ids = batch.map((_, i) => `${label}-${i}`)
  await Promise.all(ids.map(async (id, i) => await span.openSession(id, batch[i].length + NEW_TOKENS)))
  try {
    return await Promise.all(batch.map(async (prompt, i) => await greedy(head, [{ span, sessionId: ids[i] }], prompt)))
  } finally {
    await Promise.all(ids.map(async id => await span.closeSession(id)))
  }
}

const MODELS: Array<{ name: string, spec?: RandomModelSpec }> = [{ name: 'stories260k' }, { name: 'random llama', spec: RANDOM_LLAMA }]
const QUANTS: Quantization[] = ['none', 'int8', 'int4']

describe.each(MODELS)('batching on $name', ({ spec }) => {
  const dir = tempDir('batching')
  let modelDir: string
  let head: ClientHead
  let vocab: number
  beforeAll(async () => {
    modelDir = STORIES
    if (spec != null) {
      await makeRandomModel(dir.path, spec)
      modelDir = dir.path
    }
    head = await createClientHead({ modelDir, headQuant: 'none' })
    vocab = head.config.vocabSize
  })
  afterAll(async () => {
    await head?.close()
    dir.remove()
  })

  it.each(QUANTS)('%s: greedy ids under 1, 3 and 8 concurrent sessions equal each session alone', async (quant) => {
    const span = await createSpanExecutor({ modelDir, start: 0, end: head.config.numLayers, quant })
    try {
      const all = prompts(vocab)
      const alone: number[][] = []
      for (const [i, prompt] of all.entries()) alone.push((await runConcurrently(head, span, `alone${i}`, [prompt]))[0])
      expect((await span.stats()).largestBatch).toBe(1)
      expect(await runConcurrently(head, span, 'three', all.slice(0, 3))).toEqual(alone.slice(0, 3))
      expect(await runConcurrently(head, span, 'eight', all)).toEqual(alone)
      // (8 sessions stepping together, each waiting for the others due back soon, do share batches)
      const stats = await span.stats()
      expect(stats.largestBatch).toBeGreaterThan(1)
      expect(stats.batches).toBeLessThan(stats.steps)
      expect(stats.sessions).toBe(0)
    } finally {
      await span.close()
    }
  })
})

describe('batching: sessions over part of the span, and errors', () => {
  let head: ClientHead
  let span: SpanExecutor
  beforeAll(async () => {
    head = await createClientHead({ modelDir: STORIES, headQuant: 'none' })
    span = await createSpanExecutor({ modelDir: STORIES, start: 0, end: 5, quant: 'int8' })
  })
  afterAll(async () => {
    await Promise.all([head?.close(), span?.close()])
  })

  it('a session through [0, 2) then [2, 5) of the span, among whole-span sessions, gives the whole-span ids', async () => {
    const [first, second, third] = prompts(512).slice(2, 5)
    const [expected] = await runConcurrently(head, span, 'whole', [first])
    await span.openSession('part-a', first.length + NEW_TOKENS, { start: 0, end: 2 })
    await span.openSession('part-b', first.length + NEW_TOKENS, { start: 2, end: 5 })
    try {
      const [split, others] = await Promise.all([
        greedy(head, [{ span, sessionId: 'part-a' }, { span, sessionId: 'part-b' }], first),
        runConcurrently(head, span, 'beside', [second, third, first])
      ])
      expect(split).toEqual(expected)
      expect(others[2]).toEqual(expected)
    } finally {
      await span.closeSession('part-a')
      await span.closeSession('part-b')
    }
  })

  it('a wrong step fails alone: the steps batched with it are answered as if it were not there', async () => {
    const { hiddenSize } = head.config
    const prompt = STORIES_PROMPT_IDS
    const good = ['good-1', 'good-2']
    await Promise.all([...good, 'wrong-position', 'wrong-shape'].map(async id => await span.openSession(id, 16)))
    try {
      const embedded = await head.embed(prompt)
      const alone = await span.forward('good-1', embedded.slice(), { tokens: prompt.length, position: 0 })
      await span.closeSession('good-1')
      await span.openSession('good-1', 16)
      const settled = await Promise.allSettled([
        span.forward('good-1', embedded.slice(), { tokens: prompt.length, position: 0 }),
        span.forward('wrong-position', embedded.slice(), { tokens: prompt.length, position: 3 }),
        span.forward('no-such-session', embedded.slice(), { tokens: prompt.length }),
        span.forward('wrong-shape', embedded.slice(0, 3 * hiddenSize), { tokens: prompt.length }),
        span.forward('good-2', embedded.slice(), { tokens: prompt.length })
      ])
      expect(settled.map(s => s.status)).toEqual(['fulfilled', 'rejected', 'rejected', 'rejected', 'fulfilled'])
      const [one, position, unknown, shape, two] = settled
      expect((position as PromiseRejectedResult).reason).toBeInstanceOf(PositionError)
      expect((unknown as PromiseRejectedResult).reason).toBeInstanceOf(UnknownSessionError)
      expect((shape as PromiseRejectedResult).reason).toBeInstanceOf(ShapeError)
      expect(Array.from((one as PromiseFulfilledResult<Float32Array>).value)).toEqual(Array.from(alone))
      expect(Array.from((two as PromiseFulfilledResult<Float32Array>).value)).toEqual(Array.from(alone))
      // the sessions whose steps failed are untouched: they still start at position 0
      expect(Array.from(await span.forward('wrong-position', embedded.slice(), { tokens: prompt.length, position: 0 }))).toEqual(Array.from(alone))
    } finally {
      await Promise.all([...good, 'wrong-position', 'wrong-shape'].map(async id => await span.closeSession(id)))
    }
  })

  it('refuses a batch wait outside [0, 1000] ms', async () => {
    await expect(createSpanExecutor({ modelDir: STORIES, start: 0, end: 1, batchWaitMs: 1500 })).rejects.toThrow(/batchWaitMs 1500 must be between 0 and 1000 ms/)
    await expect(createSpanExecutor({ modelDir: STORIES, start: 0, end: 1, batchWaitMs: -1 })).rejects.toThrow(/batchWaitMs -1 must be between 0 and 1000 ms/)
  })
})
