// Random-weight checkpoints of other shapes, checked against the plain TypeScript reference forward
// pass (test/fixtures/reference-forward.ts), which shares no code with the engine.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { argmax, createClientHead, createSpanExecutor, type ClientHead, type SpanExecutor } from '../src/index.ts'
import { makeRandomModel, type RandomModel, type RandomModelSpec } from './fixtures/random-model.ts'
import { referenceForward } from './fixtures/reference-forward.ts'
import { forwardThrough, logitsOf, maxAbs, maxAbsDiff, tempDir } from './helpers.ts'

const FIXTURES: Array<{ name: string, spec: RandomModelSpec, spans: Array<[number, number]> }> = [
  {
    name: 'llama: GQA ratio 3, head_dim ≠ hidden/heads, untied head, q/k/v/o biases, theta 500000, llama3 rope scaling',
    spec: {
      modelType: 'llama', hiddenSize: 48, intermediateSize: 96, numLayers: 3, numHeads: 6, numKvHeads: 2, headDim: 16,
      vocabSize: 97, ropeTheta: 500000, attentionBias: true, tieWordEmbeddings: false, maxPositionEmbeddings: 256,
      ropeScaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
      seed: 11
    },
    spans: [[0, 1], [1, 3]]
  },
  {
    name: 'qwen2: odd head count (9 heads, 3 KV heads), q/k/v biases, BF16, sharded',
    spec: {
      modelType: 'qwen2', hiddenSize: 72, intermediateSize: 100, numLayers: 2, numHeads: 9, numKvHeads: 3,
      vocabSize: 131, ropeTheta: 1000000, tieWordEmbeddings: true, dtype: 'BF16', shards: 2, seed: 12
    },
    spans: [[0, 2]]
  },
  {
    name: 'mistral: F16 weights, one KV head, head_dim 32',
    spec: {
      modelType: 'mistral', hiddenSize: 64, intermediateSize: 160, numLayers: 2, numHeads: 2, numKvHeads: 1,
      headDim: 32, vocabSize: 64, tieWordEmbeddings: false, dtype: 'F16', seed: 13
    },
    spans: [[0, 1], [1, 2]]
  },
  {
    name: 'llama: multi-head attention (a KV head per query head, as in Llama-2-7B)',
    spec: {
      modelType: 'llama', hiddenSize: 32, intermediateSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 4,
      vocabSize: 50, tieWordEmbeddings: true, seed: 14
    },
    spans: [[0, 2]]
  }
]

const IDS = [1, 5, 9, 22, 3, 17, 40, 8, 12, 30, 7, 2, 19, 33]

describe.each(FIXTURES)('$name', ({ spec, spans: spanRanges }) => {
  const dir = tempDir('fixture')
  let model: RandomModel
  let head: ClientHead
  let spans: SpanExecutor[]
  const relativeError = (actual: Float32Array, expected: Float32Array): number => maxAbsDiff(actual, expected) / maxAbs(expected)

  beforeAll(async () => {
    model = await makeRandomModel(dir.path, spec)
    head = await createClientHead({ modelDir: dir.path, headQuant: 'none' })
    spans = await Promise.all(spanRanges.map(async ([start, end]) => await createSpanExecutor({ modelDir: dir.path, start, end, quant: 'none' })))
  })
  afterAll(async () => {
    await Promise.all([head?.close(), ...(spans ?? []).map(async s => { await s.close() })])
    dir.remove()
  })

  it('prefill logits match the reference at every position (1e-3 relative)', async () => {
    const expected = referenceForward(model.config, model.weights, IDS)
    const actual = await logitsOf(head, spans, IDS, 'prefill')
    for (let i = 0; i < IDS.length; i++) expect(relativeError(actual[i], expected[i])).toBeLessThan(1e-3)
  })

  it('cached decoding matches the reference step by step (1e-3 relative)', async () => {
    const ids = IDS.slice(0, 4)
    const steps = 10
    await Promise.all(spans.map(async s => await s.openSession('decode', ids.length + steps)))
    let hidden = await forwardThrough(spans, 'decode', await head.embed(ids), ids.length)
    let logits = await head.logits(hidden.subarray(hidden.length - spec.hiddenSize), 1)
    for (let step = 0; step < steps; step++) {
      const expected = referenceForward(model.config, model.weights, ids)
      expect(relativeError(logits, expected[expected.length - 1])).toBeLessThan(1e-3)
      const next = argmax(logits)
      ids.push(next)
      hidden = await forwardThrough(spans, 'decode', await head.embed([next]), 1)
      logits = await head.logits(hidden, 1)
    }
  })
})
