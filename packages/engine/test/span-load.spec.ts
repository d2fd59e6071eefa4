// A node hosting a few layers reads only those layers' tensors from disk, never the whole checkpoint.
import { statSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createSpanExecutor } from '../src/index.ts'
import { makeRandomModel } from './fixtures/random-model.ts'
import { tempDir } from './helpers.ts'

const dir = tempDir('span-load')
const spec = { modelType: 'llama' as const, hiddenSize: 64, intermediateSize: 128, numLayers: 8, numHeads: 4, numKvHeads: 2, vocabSize: 1000, shards: 3, seed: 3 }
// f32 bytes of one layer: q, k, v, o, gate, up, down and two norms.
const LAYER_BYTES = 4 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 64 * 128 + 2 * 64)
let checkpointBytes = 0

beforeAll(async () => {
  const { config } = await makeRandomModel(dir.path, spec)
  expect(config.num_hidden_layers).toBe(8)
  for (let i = 1; i <= 3; i++) checkpointBytes += statSync(join(dir.path, `model-0000${i}-of-00003.safetensors`)).size
})
afterAll(() => { dir.remove() })

it('reads only the tensors of its layers (plus safetensors headers)', async () => {
  const span = await createSpanExecutor({ modelDir: dir.path, start: 3, end: 5 })
  try {
    const headers = 3 * 8 + 3 * 4096 // three shards: length prefix and a JSON header of a few KiB each
    expect(span.bytesRead).toBeGreaterThanOrEqual(2 * LAYER_BYTES)
    expect(span.bytesRead).toBeLessThan(2 * LAYER_BYTES + headers)
    expect(span.bytesRead).toBeLessThan(checkpointBytes / 3)
  } finally {
    await span.close()
  }
})

it('derives a model id from config and weights: same checkpoint, same id; other weights, other id', async () => {
  const { computeModelId } = await import('../src/index.ts')
  const other = tempDir('model-id')
  try {
    await makeRandomModel(other.path, { ...spec, seed: 4 })
    const id = computeModelId(dir.path)
    expect(id).toMatch(/^bafkrei[a-z2-7]{52}$/)
    expect(computeModelId(dir.path)).toBe(id)
    expect(computeModelId(other.path)).not.toBe(id)
  } finally {
    other.remove()
  }
})
