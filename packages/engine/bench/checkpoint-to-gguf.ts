// Writes a Hugging Face Llama checkpoint (what minga runs) as a GGUF file llama.cpp loads, so the
// benchmark compares both on the very same weights. Names, the q/k row permutation and the metadata
// follow llama.cpp's convert_hf_to_gguf.py for LlamaForCausalLM. The tokenizer metadata is minimal
// but valid (an SPM vocabulary: <unk> <s> </s>, the 256 byte tokens, then placeholder words): the
// benchmark feeds token ids, never text.
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { loadModelConfig, type ModelConfig } from '../src/index.ts'
import { SafetensorsCheckpoint } from '../src/safetensors.ts'
import { GgmlType, writeGguf, type GgufTensor, type GgufValue } from './gguf-writer.ts'

export type GgufFileType = 'Q4_0' | 'Q8_0' | 'F16'
export const GGUF_FILE_TYPES: GgufFileType[] = ['Q4_0', 'Q8_0', 'F16']

/** llama_ftype values of general.file_type. */
const FTYPE: Record<GgufFileType, number> = { F16: 1, Q4_0: 2, Q8_0: 7 }
const LAYER_TYPE: Record<GgufFileType, GgmlType> = { F16: GgmlType.F16, Q4_0: GgmlType.Q4_0, Q8_0: GgmlType.Q8_0 }
/** The LM head: Q8_0 in the Q4_0 file, as minga's client head is int8 by default (llama.cpp's own quantize would pick Q6_K). */
const HEAD_TYPE: Record<GgufFileType, GgmlType> = { F16: GgmlType.F16, Q4_0: GgmlType.Q8_0, Q8_0: GgmlType.Q8_0 }

/**
 * HF stores q/k rows per head as [first halves of the rotary pairs, second halves] (rotate_half);
 * llama.cpp's rope pairs adjacent values. Row h·d + a·d/2 + b moves to h·d + 2b + a.
 */
export function permuteRotary (weight: Float32Array, heads: number, cols: number): Float32Array {
  const rows = weight.length / cols
  const headDim = rows / heads
  const half = headDim / 2
  const out = new Float32Array(weight.length)
  for (let h = 0; h < heads; h++) {
    for (let a = 0; a < 2; a++) {
      for (let b = 0; b < half; b++) {
        const from = (h * headDim + a * half + b) * cols
        out.set(weight.subarray(from, from + cols), (h * headDim + 2 * b + a) * cols)
      }
    }
  }
  return out
}

function tokenizerMetadata (config: ModelConfig): Record<string, GgufValue> {
  const n = config.vocabSize
  const tokens: string[] = ['<unk>', '<s>', '</s>']
  const types = [2, 3, 3] // unknown, control, control
  for (let b = 0; b < 256 && tokens.length < n; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)
    types.push(6) // byte
  }
  while (tokens.length < n) {
    tokens.push(`▁w${tokens.length}`)
    types.push(1) // normal
  }
  return {
    'tokenizer.ggml.model': { type: 'string', value: 'llama' },
    'tokenizer.ggml.tokens': { type: 'string[]', value: tokens },
    'tokenizer.ggml.scores': { type: 'f32[]', value: new Float32Array(n) },
    'tokenizer.ggml.token_type': { type: 'i32[]', value: types },
    'tokenizer.ggml.unknown_token_id': { type: 'u32', value: 0 },
    'tokenizer.ggml.bos_token_id': { type: 'u32', value: config.bosTokenId ?? 1 },
    'tokenizer.ggml.eos_token_id': { type: 'u32', value: config.eosTokenIds[0] ?? 2 },
    'tokenizer.ggml.add_bos_token': { type: 'bool', value: true }
  }
}

export interface GgufConversion { path: string, bytes: number, reused: boolean, ms: number }

/**
 * `<outDir>/model-<type>.gguf` from the checkpoint in `modelDir`, written once: a file newer than the
 * checkpoint's config.json and weights is reused.
 */
export function ensureGguf (modelDir: string, outDir: string, fileType: GgufFileType, onProgress?: (msg: string) => void): GgufConversion {
  const path = join(outDir, `model-${fileType}.gguf`)
  if (existsSync(path)) {
    const sources = readdirSync(modelDir).filter(f => f === 'config.json' || f.endsWith('.safetensors')).map(f => statSync(join(modelDir, f)).mtimeMs)
    const file = statSync(path)
    if (sources.every(t => t < file.mtimeMs)) return { path, bytes: file.size, reused: true, ms: 0 }
  }
  const started = performance.now()
  mkdirSync(outDir, { recursive: true })
  const config = loadModelConfig(modelDir)
  if (config.modelType !== 'llama' || config.qkvBias || config.outputBias || config.mlpBias || config.ropeScaling != null) {
    throw new Error(`${modelDir}: only plain Llama checkpoints (no biases, no rope scaling) are converted to GGUF`)
  }
  const checkpoint = new SafetensorsCheckpoint(modelDir)
  try {
    const h = config.hiddenSize
    const tensors: GgufTensor[] = []
    const add = (name: string, source: string, type: GgmlType, transform?: (w: Float32Array) => Float32Array): void => {
      const shape = checkpoint.shape(source)
      tensors.push({ name, dims: [...shape].reverse(), type: shape.length === 1 ? GgmlType.F32 : type, values: () => transform != null ? transform(checkpoint.read(source)) : checkpoint.read(source) })
    }
    const layerType = LAYER_TYPE[fileType]
    add('token_embd.weight', 'model.embed_tokens.weight', layerType)
    for (let i = 0; i < config.numLayers; i++) {
      const p = `model.layers.${i}.`
      add(`blk.${i}.attn_norm.weight`, p + 'input_layernorm.weight', GgmlType.F32)
      add(`blk.${i}.attn_q.weight`, p + 'self_attn.q_proj.weight', layerType, w => permuteRotary(w, config.numHeads, h))
      add(`blk.${i}.attn_k.weight`, p + 'self_attn.k_proj.weight', layerType, w => permuteRotary(w, config.numKvHeads, h))
      add(`blk.${i}.attn_v.weight`, p + 'self_attn.v_proj.weight', layerType)
      add(`blk.${i}.attn_output.weight`, p + 'self_attn.o_proj.weight', layerType)
      add(`blk.${i}.ffn_norm.weight`, p + 'post_attention_layernorm.weight', GgmlType.F32)
      add(`blk.${i}.ffn_gate.weight`, p + 'mlp.gate_proj.weight', layerType)
      add(`blk.${i}.ffn_up.weight`, p + 'mlp.up_proj.weight', layerType)
      add(`blk.${i}.ffn_down.weight`, p + 'mlp.down_proj.weight', layerType)
    }
    add('output_norm.weight', 'model.norm.weight', GgmlType.F32)
    add('output.weight', config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight', HEAD_TYPE[fileType])

    const metadata: Record<string, GgufValue> = {
      'general.architecture': { type: 'string', value: 'llama' },
      'general.name': { type: 'string', value: `minga bench ${fileType}` },
      'general.file_type': { type: 'u32', value: FTYPE[fileType] },
      'llama.context_length': { type: 'u32', value: config.maxPositionEmbeddings },
      'llama.embedding_length': { type: 'u32', value: h },
      'llama.block_count': { type: 'u32', value: config.numLayers },
      'llama.feed_forward_length': { type: 'u32', value: config.intermediateSize },
      'llama.attention.head_count': { type: 'u32', value: config.numHeads },
      'llama.attention.head_count_kv': { type: 'u32', value: config.numKvHeads },
      'llama.attention.key_length': { type: 'u32', value: config.headDim },
      'llama.attention.value_length': { type: 'u32', value: config.headDim },
      'llama.rope.dimension_count': { type: 'u32', value: config.headDim },
      'llama.rope.freq_base': { type: 'f32', value: config.ropeTheta },
      'llama.attention.layer_norm_rms_epsilon': { type: 'f32', value: config.rmsNormEps },
      'llama.vocab_size': { type: 'u32', value: config.vocabSize },
      ...tokenizerMetadata(config)
    }
    let last = performance.now()
    const bytes = writeGguf(path, metadata, tensors, (i, name) => {
      if (onProgress != null && (performance.now() - last > 5000 || i === tensors.length - 1)) {
        last = performance.now()
        onProgress(`  ${fileType}: tensor ${i + 1}/${tensors.length} (${name})`)
      }
    })
    return { path, bytes, reused: false, ms: performance.now() - started }
  } finally {
    checkpoint.close()
  }
}
