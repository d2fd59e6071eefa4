// Tests of the test fixtures themselves: the reference forward pass reproduces a known greedy
// continuation of a real checkpoint, and the safetensors writer / random checkpoints read back
// exactly. The engine's own tests then lean on these fixtures.
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { makeRandomModel, type RandomModelSpec } from './fixtures/random-model.ts'
import {
  referenceForward,
  referenceHidden,
  referenceLayers,
  referenceLogits,
  ropeInvFreq
} from './fixtures/reference-forward.ts'
import { f32ToBf16Bits, f32ToF16Bits, writeSafetensors } from './fixtures/safetensors-writer.ts'

const STORIES = fileURLToPath(new URL('../../../../shared/models/stories260k', import.meta.url))

interface HeaderEntry {
  dtype: string
  shape: number[]
  data_offsets: [number, number]
}

/** A tiny safetensors reader, written separately from the writer so the two check each other. */
async function readSafetensors(path: string): Promise<{
  header: Record<string, HeaderEntry>
  metadata: Record<string, string> | undefined
  headerLength: number
  fileLength: number
  tensors: Map<string, Float32Array>
}> {
  const buf = await readFile(path)
  const headerLength = Number(buf.readBigUInt64LE(0))
  const json = JSON.parse(buf.subarray(8, 8 + headerLength).toString('utf8')) as Record<string, unknown>
  const metadata = json.__metadata__ as Record<string, string> | undefined
  delete json.__metadata__
  const header = json as unknown as Record<string, HeaderEntry>
  const tensors = new Map<string, Float32Array>()
  const base = 8 + headerLength
  for (const [name, entry] of Object.entries(header)) {
    const [begin, end] = entry.data_offsets
    const bytes = buf.subarray(base + begin, base + end)
    const size = entry.dtype === 'F32' ? 4 : 2
    const out = new Float32Array(bytes.length / size)
    for (let i = 0; i < out.length; i++) {
      if (entry.dtype === 'F32') out[i] = bytes.readFloatLE(i * 4)
      else if (entry.dtype === 'BF16') out[i] = new Float32Array(new Uint32Array([bytes.readUInt16LE(i * 2) << 16]).buffer)[0]
      else if (entry.dtype === 'F16') out[i] = decodeHalf(bytes.readUInt16LE(i * 2))
      else throw new Error(`unexpected dtype ${entry.dtype}`)
    }
    tensors.set(name, out)
  }
  return { header, metadata, headerLength, fileLength: buf.length, tensors }
}

function decodeHalf(bits: number): number {
  const exponent = (bits >> 10) & 31
  const fraction = bits & 1023
  const magnitude = exponent === 0 ? fraction / 2 ** 24 : exponent === 31 ? (fraction ? NaN : Infinity) : (1024 + fraction) * 2 ** (exponent - 25)
  return bits & 0x8000 ? -magnitude : magnitude
}

function argmax(values: Float32Array): number {
  let best = 0
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i
  return best
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length)
  let max = 0
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]))
  return max
}

describe('reference forward pass', () => {
  it('reproduces the known greedy continuation of stories260k', async () => {
    const config = JSON.parse(await readFile(join(STORIES, 'config.json'), 'utf8')) as Record<string, unknown>
    const { tensors } = await readSafetensors(join(STORIES, 'model.safetensors'))
    const ids = [1, 403, 407, 261, 378]
    const generated: number[] = []
    for (let step = 0; step < 40; step++) {
      const logits = referenceForward(config, tensors, ids)
      const next = argmax(logits[logits.length - 1])
      generated.push(next)
      ids.push(next)
    }
    expect(generated).toEqual([
      432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265,
      282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426
    ])
  })

  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'minga-reference-'))
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  const small: RandomModelSpec = {
    modelType: 'llama',
    hiddenSize: 32,
    intermediateSize: 48,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    vocabSize: 50,
    seed: 7
  }

  it('is causal: a prefix gets the same logits alone as inside a longer sequence', async () => {
    const { config, weights } = await makeRandomModel(join(dir, 'causal'), { ...small, attentionBias: true })
    const ids = [1, 5, 9, 14, 3, 22, 40]
    const full = referenceForward(config, weights, ids)
    const prefix = referenceForward(config, weights, ids.slice(0, 4))
    for (let t = 0; t < 4; t++) expect(maxAbsDiff(full[t], prefix[t])).toBeLessThan(1e-5)
    for (const row of full) {
      expect(row.length).toBe(50)
      expect(row.every(Number.isFinite)).toBe(true)
    }
  })

  it('treats grouped-query attention as multi-head attention with repeated key/value heads', async () => {
    const { config, weights } = await makeRandomModel(join(dir, 'gqa'), { ...small, modelType: 'qwen2', headDim: 12 })
    // Repeat each kv head's rows of k_proj / v_proj (and biases) for every query head in its group.
    const D = 12
    const expanded = new Map(weights)
    for (let l = 0; l < 2; l++) {
      for (const proj of ['k_proj', 'v_proj']) {
        for (const [suffix, rowLength] of [['weight', 32], ['bias', 1]] as const) {
          const name = `model.layers.${l}.self_attn.${proj}.${suffix}`
          const src = weights.get(name)!
          const out = new Float32Array(4 * D * rowLength)
          for (let h = 0; h < 4; h++) {
            const kvh = Math.floor(h / 2)
            out.set(src.subarray(kvh * D * rowLength, (kvh + 1) * D * rowLength), h * D * rowLength)
          }
          expanded.set(name, out)
        }
      }
    }
    const ids = [3, 1, 4, 1, 5, 9, 2, 6]
    const gqa = referenceForward(config, weights, ids)
    const mha = referenceForward({ ...config, num_key_value_heads: 4 }, expanded, ids)
    for (let t = 0; t < ids.length; t++) expect(maxAbsDiff(gqa[t], mha[t])).toBeLessThan(1e-5)
  })

  it('composes from spans: layers [0,1) then [1,2) then the head equal the full pass', async () => {
    const { config, weights } = await makeRandomModel(join(dir, 'spans'), { ...small, numLayers: 3, tieWordEmbeddings: true })
    const ids = [2, 7, 1, 8, 2, 8]
    const full = referenceForward(config, weights, ids)
    const first = referenceHidden(config, weights, ids, 0, 1)
    const rest = referenceLayers(config, weights, first, 1, 3)
    const logits = referenceLogits(config, weights, rest)
    expect(maxAbsDiff(referenceHidden(config, weights, ids, 1, 3)[5], rest[5])).toBeLessThan(1e-4)
    for (let t = 0; t < ids.length; t++) expect(maxAbsDiff(full[t], logits[t])).toBeLessThan(1e-4)
  })

  it('applies llama3 rope scaling by wavelength band', () => {
    const headDim = 64
    const plain = ropeInvFreq({ rope_theta: 500000 }, headDim)
    const scaling = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 }
    const scaled = ropeInvFreq({ rope_theta: 500000, rope_scaling: scaling }, headDim)
    const bands = { high: 0, medium: 0, low: 0 }
    for (let i = 0; i < headDim / 2; i++) {
      expect(plain[i]).toBeCloseTo(500000 ** (-(2 * i) / headDim), 15)
      const wavelen = (2 * Math.PI) / plain[i]
      if (wavelen < 8192 / 4) {
        bands.high++
        expect(scaled[i]).toBe(plain[i])
      } else if (wavelen > 8192) {
        bands.low++
        expect(scaled[i]).toBeCloseTo(plain[i] / 8, 15)
      } else {
        bands.medium++
        const smooth = (8192 / wavelen - 1) / (4 - 1)
        expect(scaled[i]).toBeCloseTo(((1 - smooth) * plain[i]) / 8 + smooth * plain[i], 15)
        expect(scaled[i]).toBeGreaterThanOrEqual(plain[i] / 8)
        expect(scaled[i]).toBeLessThanOrEqual(plain[i])
      }
    }
    expect(bands.high).toBeGreaterThan(0)
    expect(bands.medium).toBeGreaterThan(0)
    expect(bands.low).toBeGreaterThan(0)
  })
})

describe('safetensors writer and random checkpoints', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'minga-safetensors-'))
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('rounds f32 to f16 and bf16 to nearest, ties to even', () => {
    expect(f32ToF16Bits(1)).toBe(0x3c00)
    expect(f32ToF16Bits(-2)).toBe(0xc000)
    expect(f32ToF16Bits(-0)).toBe(0x8000)
    expect(f32ToF16Bits(65504)).toBe(0x7bff)
    expect(f32ToF16Bits(65520)).toBe(0x7c00) // halfway to 65536: ties to even, which overflows
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001) // smallest subnormal
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000) // halfway to it: ties to even (zero)
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(0x0002) // 1.5 subnormal steps: ties to even
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00) // tie, kept even
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02) // tie, rounded up to even
    expect(f32ToF16Bits(Infinity)).toBe(0x7c00)
    expect(f32ToF16Bits(NaN) & 0x7c00).toBe(0x7c00)
    expect(f32ToF16Bits(NaN) & 0x3ff).not.toBe(0)
    expect(f32ToBf16Bits(1)).toBe(0x3f80)
    expect(f32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80)
    expect(f32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82)
    expect(f32ToBf16Bits(-Infinity)).toBe(0xff80)
    expect(f32ToBf16Bits(NaN) & 0x7f).not.toBe(0)
  })

  it('writes an aligned header with metadata and contiguous offsets', async () => {
    const path = join(dir, 'plain.safetensors')
    const a = Float32Array.from([1, 2, 3, 4, 5, 6])
    const b = Float32Array.from([0.1, -0.2, 0.3])
    await writeSafetensors(path, [
      { name: 'a', dtype: 'F32', shape: [2, 3], data: a },
      { name: 'b', dtype: 'F16', shape: [3], data: b },
      { name: 'c', dtype: 'BF16', shape: [1, 3], data: b }
    ], { format: 'pt', note: 'x' })
    const file = await readSafetensors(path)
    expect(file.headerLength % 8).toBe(0)
    expect(file.metadata).toEqual({ format: 'pt', note: 'x' })
    expect(file.header.a).toEqual({ dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] })
    expect(file.header.b).toEqual({ dtype: 'F16', shape: [3], data_offsets: [24, 30] })
    expect(file.header.c).toEqual({ dtype: 'BF16', shape: [1, 3], data_offsets: [30, 36] })
    expect(file.fileLength).toBe(8 + file.headerLength + 36)
    expect(Array.from(file.tensors.get('a')!)).toEqual(Array.from(a))
    expect(maxAbsDiff(file.tensors.get('b')!, b)).toBeLessThan(3e-4)
    expect(maxAbsDiff(file.tensors.get('c')!, b)).toBeLessThan(2e-3)
  })

  for (const dtype of ['F32', 'F16', 'BF16'] as const) {
    it(`round-trips a random ${dtype} llama checkpoint with attention biases`, async () => {
      const modelDir = join(dir, `llama-${dtype}`)
      const spec: RandomModelSpec = {
        modelType: 'llama',
        hiddenSize: 32,
        intermediateSize: 40,
        numLayers: 2,
        numHeads: 4,
        numKvHeads: 1,
        headDim: 16,
        vocabSize: 30,
        attentionBias: true,
        ropeScaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
        dtype,
        seed: 11
      }
      const { config, weights } = await makeRandomModel(modelDir, spec)
      const onDisk = JSON.parse(await readFile(join(modelDir, 'config.json'), 'utf8'))
      expect(onDisk).toEqual(config)
      expect(config).toMatchObject({
        model_type: 'llama',
        architectures: ['LlamaForCausalLM'],
        head_dim: 16,
        num_key_value_heads: 1,
        attention_bias: true,
        tie_word_embeddings: false,
        torch_dtype: { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[dtype],
        rope_scaling: spec.ropeScaling
      })

      const file = await readSafetensors(join(modelDir, 'model.safetensors'))
      expect(file.headerLength % 8).toBe(0)
      const names = Object.keys(file.header)
      expect(names.length).toBe(1 + 2 * 13 + 2) // embed, 2 x (9 weights + 4 biases), norm, lm_head
      expect(new Set(names)).toEqual(new Set(weights.keys()))
      expect(file.header['model.embed_tokens.weight'].shape).toEqual([30, 32])
      expect(file.header['model.layers.1.self_attn.q_proj.weight'].shape).toEqual([64, 32])
      expect(file.header['model.layers.1.self_attn.k_proj.weight'].shape).toEqual([16, 32])
      expect(file.header['model.layers.1.self_attn.v_proj.bias'].shape).toEqual([16])
      expect(file.header['model.layers.1.self_attn.o_proj.weight'].shape).toEqual([32, 64])
      expect(file.header['model.layers.1.self_attn.o_proj.bias'].shape).toEqual([32])
      expect(file.header['model.layers.0.mlp.down_proj.weight'].shape).toEqual([32, 40])
      expect(file.header['lm_head.weight'].shape).toEqual([30, 32])

      // Offsets tile the data section without gaps, in header order.
      let offset = 0
      for (const name of names) {
        const entry = file.header[name]
        expect(entry.dtype).toBe(dtype)
        expect(entry.data_offsets[0]).toBe(offset)
        offset = entry.data_offsets[1]
        expect(offset - entry.data_offsets[0]).toBe(entry.shape.reduce((x, y) => x * y, 1) * (dtype === 'F32' ? 4 : 2))
        expect(Array.from(file.tensors.get(name)!)).toEqual(Array.from(weights.get(name)!))
      }
      expect(file.fileLength).toBe(8 + file.headerLength + offset)

      const logits = referenceForward(config, weights, [1, 2, 3, 4])
      expect(logits.flatMap((row) => Array.from(row)).every(Number.isFinite)).toBe(true)
    })
  }

  it('stores the same seed as f16 and bf16 within their rounding error of f32', async () => {
    const base: RandomModelSpec = { modelType: 'mistral', hiddenSize: 16, intermediateSize: 24, numLayers: 1, numHeads: 2, numKvHeads: 2, vocabSize: 20, seed: 3 }
    const f32 = await makeRandomModel(join(dir, 'm32'), { ...base, dtype: 'F32' })
    const f16 = await makeRandomModel(join(dir, 'm16'), { ...base, dtype: 'F16' })
    const bf16 = await makeRandomModel(join(dir, 'mbf16'), { ...base, dtype: 'BF16' })
    expect(f32.config.architectures).toEqual(['MistralForCausalLM'])
    expect('attention_bias' in f32.config).toBe(false)
    for (const [name, exact] of f32.weights) {
      const half = f16.weights.get(name)!
      const brain = bf16.weights.get(name)!
      for (let i = 0; i < exact.length; i++) {
        expect(Math.abs(half[i] - exact[i])).toBeLessThanOrEqual(Math.abs(exact[i]) * 2 ** -11 + 2 ** -25)
        expect(Math.abs(brain[i] - exact[i])).toBeLessThanOrEqual(Math.abs(exact[i]) * 2 ** -8)
      }
    }
  })

  it('writes sharded qwen2 checkpoints with an index', async () => {
    const modelDir = join(dir, 'qwen2-sharded')
    const { config, weights } = await makeRandomModel(modelDir, {
      modelType: 'qwen2',
      hiddenSize: 24,
      intermediateSize: 32,
      numLayers: 3,
      numHeads: 6,
      numKvHeads: 2,
      vocabSize: 40,
      tieWordEmbeddings: true,
      dtype: 'BF16',
      shards: 3,
      seed: 5
    })
    expect(config.architectures).toEqual(['Qwen2ForCausalLM'])
    expect('attention_bias' in config).toBe(false)
    expect(weights.has('lm_head.weight')).toBe(false)
    expect(weights.has('model.layers.2.self_attn.k_proj.bias')).toBe(true)
    expect(weights.has('model.layers.2.self_attn.o_proj.bias')).toBe(false)

    const index = JSON.parse(await readFile(join(modelDir, 'model.safetensors.index.json'), 'utf8')) as {
      metadata: { total_size: number }
      weight_map: Record<string, string>
    }
    expect(new Set(Object.keys(index.weight_map))).toEqual(new Set(weights.keys()))
    const files = [...new Set(Object.values(index.weight_map))].sort()
    expect(files).toEqual(['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors'])

    let totalSize = 0
    for (const fileName of files) {
      const file = await readSafetensors(join(modelDir, fileName))
      expect(file.metadata).toEqual({ format: 'pt' })
      const inFile = Object.keys(index.weight_map).filter((name) => index.weight_map[name] === fileName)
      expect(Object.keys(file.header).sort()).toEqual(inFile.sort())
      for (const [name, entry] of Object.entries(file.header)) {
        totalSize += entry.data_offsets[1] - entry.data_offsets[0]
        expect(Array.from(file.tensors.get(name)!)).toEqual(Array.from(weights.get(name)!))
      }
    }
    expect(index.metadata.total_size).toBe(totalSize)
  })
})
