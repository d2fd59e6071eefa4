// Reads a Hugging Face config.json into the few numbers the engine needs, rejecting what it can't run.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { ModelLoadError, UnsupportedModelError } from './errors.ts'

export type ModelType = 'llama' | 'mistral' | 'qwen2'

export interface RopeScaling {
  type: 'llama3' | 'linear'
  factor: number
  lowFreqFactor: number
  highFreqFactor: number
  originalMaxPositionEmbeddings: number
}

export interface ModelConfig {
  modelType: ModelType
  hiddenSize: number
  intermediateSize: number
  numLayers: number
  numHeads: number
  numKvHeads: number
  headDim: number
  vocabSize: number
  rmsNormEps: number
  ropeTheta: number
  ropeScaling?: RopeScaling
  maxPositionEmbeddings: number
  tieWordEmbeddings: boolean
  /** Biases on q, k and v projections (qwen2 always, llama with attention_bias). */
  qkvBias: boolean
  /** Bias on the output projection (llama with attention_bias). */
  outputBias: boolean
  mlpBias: boolean
  bosTokenId?: number
  eosTokenIds: number[]
}

const SUPPORTED: ModelType[] = ['llama', 'mistral', 'qwen2']

/** Loads `config.json` (and `generation_config.json` for extra EOS ids) from a model directory. */
export function loadModelConfig (modelDir: string): ModelConfig {
  const raw = readJson(join(modelDir, 'config.json'), true)
  const generation = readJson(join(modelDir, 'generation_config.json'), false) ?? {}
  return parseModelConfig(raw!, generation)
}

export function parseModelConfig (raw: Record<string, any>, generation: Record<string, any> = {}): ModelConfig {
  const modelType = raw.model_type
  if (!SUPPORTED.includes(modelType)) {
    throw new UnsupportedModelError(`unsupported model_type ${JSON.stringify(modelType)} in config.json (supported: ${SUPPORTED.join(', ')})`)
  }
  const act = raw.hidden_act ?? 'silu'
  if (act !== 'silu') throw new UnsupportedModelError(`unsupported hidden_act ${JSON.stringify(act)} in config.json (only silu)`)

  const hiddenSize = positiveInt(raw, 'hidden_size')
  const numHeads = positiveInt(raw, 'num_attention_heads')
  const numKvHeads = raw.num_key_value_heads == null ? numHeads : positiveInt(raw, 'num_key_value_heads')
  if (numHeads % numKvHeads !== 0) {
    throw new UnsupportedModelError(`num_attention_heads (${numHeads}) is not a multiple of num_key_value_heads (${numKvHeads})`)
  }
  const headDim = raw.head_dim == null ? hiddenSize / numHeads : positiveInt(raw, 'head_dim')
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new UnsupportedModelError(`head dimension ${headDim} must be an even integer (hidden_size / num_attention_heads or head_dim)`)
  }
  const attentionBias = raw.attention_bias === true
  return {
    modelType,
    hiddenSize,
    intermediateSize: positiveInt(raw, 'intermediate_size'),
    numLayers: positiveInt(raw, 'num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: positiveInt(raw, 'vocab_size'),
    rmsNormEps: positiveNumber(raw, 'rms_norm_eps', 1e-6),
    ropeTheta: positiveNumber(raw, 'rope_theta', 10000),
    ropeScaling: parseRopeScaling(raw.rope_scaling),
    maxPositionEmbeddings: raw.max_position_embeddings == null ? 2048 : positiveInt(raw, 'max_position_embeddings'),
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    qkvBias: modelType === 'qwen2' || attentionBias,
    outputBias: modelType !== 'qwen2' && attentionBias,
    mlpBias: raw.mlp_bias === true,
    bosTokenId: firstId(raw.bos_token_id ?? generation.bos_token_id),
    eosTokenIds: [...new Set([...ids(raw.eos_token_id), ...ids(generation.eos_token_id)])]
  }
}

function parseRopeScaling (value: any): RopeScaling | undefined {
  if (value == null) return undefined
  const type = value.rope_type ?? value.type
  if (type === 'default') return undefined
  if (type !== 'llama3' && type !== 'linear') {
    throw new UnsupportedModelError(`unsupported rope_scaling type ${JSON.stringify(type)} in config.json (supported: llama3, linear)`)
  }
  const factor = positiveNumber(value, 'factor')
  return {
    type,
    factor,
    lowFreqFactor: type === 'llama3' ? positiveNumber(value, 'low_freq_factor') : 1,
    highFreqFactor: type === 'llama3' ? positiveNumber(value, 'high_freq_factor') : 1,
    originalMaxPositionEmbeddings: type === 'llama3' ? positiveInt(value, 'original_max_position_embeddings') : 0
  }
}

function readJson (path: string, required: boolean): Record<string, any> | undefined {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err: any) {
    if (!required && err.code === 'ENOENT') return undefined
    throw new ModelLoadError(err.code === 'ENOENT' ? `missing file ${path}` : `cannot read ${path}: ${err.message}`)
  }
  try {
    return JSON.parse(text)
  } catch (err: any) {
    throw new ModelLoadError(`${path} is not valid JSON: ${err.message}`)
  }
}

function positiveInt (obj: Record<string, any>, key: string): number {
  const value = obj[key]
  if (!Number.isInteger(value) || value <= 0) throw new ModelLoadError(`config.json: ${key} must be a positive integer, got ${JSON.stringify(value)}`)
  return value
}

function positiveNumber (obj: Record<string, any>, key: string, fallback?: number): number {
  const value = obj[key] ?? fallback
  if (typeof value !== 'number' || !(value > 0)) throw new ModelLoadError(`config.json: ${key} must be a positive number, got ${JSON.stringify(value)}`)
  return value
}

function ids (value: unknown): number[] {
  if (Array.isArray(value)) return value.filter(Number.isInteger)
  return Number.isInteger(value) ? [value as number] : []
}

function firstId (value: unknown): number | undefined {
  return ids(value)[0]
}
