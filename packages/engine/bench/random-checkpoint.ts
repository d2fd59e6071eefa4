// A random-weight checkpoint in the shape of TinyLlama-1.1B, written tensor by tensor to a cache
// folder outside the repository so the benchmark can load a realistically sized model without
// downloading one. Only shapes matter for speed and memory; the weights are seeded uniform noise.
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs'
import { homedir } from 'node:os'
import { join, relative, resolve, isAbsolute } from 'node:path'

export interface LlamaShape {
  hiddenSize: number
  intermediateSize: number
  numLayers: number
  numHeads: number
  numKvHeads: number
  vocabSize: number
  maxPositionEmbeddings: number
  ropeTheta: number
  rmsNormEps: number
}

export const TINYLLAMA_SHAPE: LlamaShape = {
  hiddenSize: 2048,
  intermediateSize: 5632,
  numLayers: 22,
  numHeads: 32,
  numKvHeads: 4,
  vocabSize: 32000,
  maxPositionEmbeddings: 2048,
  ropeTheta: 10000,
  rmsNormEps: 1e-5
}

/** Llama-2-7B's shape (BF16 ≈ 13.5 GB): what `pnpm bench:old-hardware` serves on four small nodes. */
export const LLAMA2_7B_SHAPE: LlamaShape = {
  hiddenSize: 4096,
  intermediateSize: 11008,
  numLayers: 32,
  numHeads: 32,
  numKvHeads: 32,
  vocabSize: 32000,
  maxPositionEmbeddings: 4096,
  ropeTheta: 10000,
  rmsNormEps: 1e-5
}

/** Bump when the file layout or the sampling changes, so stale caches are rebuilt. */
const FORMAT_VERSION = 1
const MARKER = '.complete'
const WEIGHTS = 'model.safetensors'

interface TensorPlan { name: string, shape: number[], kind: 'norm' | 'embedding' | 'linear' }

function tensorPlan (s: LlamaShape): TensorPlan[] {
  const h = s.hiddenSize
  const kv = (s.numKvHeads * h) / s.numHeads
  const plan: TensorPlan[] = [{ name: 'model.embed_tokens.weight', shape: [s.vocabSize, h], kind: 'embedding' }]
  for (let i = 0; i < s.numLayers; i++) {
    const p = `model.layers.${i}.`
    plan.push(
      { name: p + 'input_layernorm.weight', shape: [h], kind: 'norm' },
      { name: p + 'self_attn.q_proj.weight', shape: [h, h], kind: 'linear' },
      { name: p + 'self_attn.k_proj.weight', shape: [kv, h], kind: 'linear' },
      { name: p + 'self_attn.v_proj.weight', shape: [kv, h], kind: 'linear' },
      { name: p + 'self_attn.o_proj.weight', shape: [h, h], kind: 'linear' },
      { name: p + 'post_attention_layernorm.weight', shape: [h], kind: 'norm' },
      { name: p + 'mlp.gate_proj.weight', shape: [s.intermediateSize, h], kind: 'linear' },
      { name: p + 'mlp.up_proj.weight', shape: [s.intermediateSize, h], kind: 'linear' },
      { name: p + 'mlp.down_proj.weight', shape: [h, s.intermediateSize], kind: 'linear' }
    )
  }
  plan.push({ name: 'model.norm.weight', shape: [h], kind: 'norm' })
  plan.push({ name: 'lm_head.weight', shape: [s.vocabSize, h], kind: 'linear' }) // untied
  return plan
}

function hfConfig (s: LlamaShape): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: s.hiddenSize,
    intermediate_size: s.intermediateSize,
    num_hidden_layers: s.numLayers,
    num_attention_heads: s.numHeads,
    num_key_value_heads: s.numKvHeads,
    vocab_size: s.vocabSize,
    max_position_embeddings: s.maxPositionEmbeddings,
    rms_norm_eps: s.rmsNormEps,
    rope_theta: s.ropeTheta,
    hidden_act: 'silu',
    tie_word_embeddings: false,
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'bfloat16'
  }
}

/** `$MINGA_CACHE/bench/tinyllama-random`, or `~/.cache/minga/bench/tinyllama-random`. */
export function defaultCheckpointDir (): string {
  const root = process.env.MINGA_CACHE != null && process.env.MINGA_CACHE !== ''
    ? resolve(process.env.MINGA_CACHE)
    : join(homedir(), '.cache', 'minga')
  return join(root, 'bench', 'tinyllama-random')
}

function isInside (dir: string, parent: string): boolean {
  const rel = relative(parent, dir)
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel))
}

export interface CheckpointInfo { dir: string, bytes: number, parameters: number, reused: boolean, buildMs: number }

/**
 * Returns the checkpoint in `dir`, building it first unless a complete one (marker written last,
 * same format and shape) is already there. Refuses to write inside `repoRoot`.
 */
export function ensureRandomCheckpoint (dir: string, repoRoot: string, shape: LlamaShape = TINYLLAMA_SHAPE, seed = 1234, rebuild = false): CheckpointInfo {
  dir = resolve(dir)
  if (isInside(dir, resolve(repoRoot))) throw new Error(`refusing to write the ~2 GB benchmark checkpoint inside the repository (${dir}); set MINGA_CACHE elsewhere`)
  const plan = tensorPlan(shape)
  const parameters = plan.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0)
  const stamp = JSON.stringify({ version: FORMAT_VERSION, seed, shape })
  const markerPath = join(dir, MARKER)
  const weightsPath = join(dir, WEIGHTS)

  if (!rebuild && existsSync(markerPath) && existsSync(weightsPath)) {
    const marker = JSON.parse(readFileSync(markerPath, 'utf8')) as { stamp: string, bytes: number }
    if (marker.stamp === stamp && statSync(weightsPath).size === marker.bytes) {
      return { dir, bytes: marker.bytes, parameters, reused: true, buildMs: 0 }
    }
  }

  const started = performance.now()
  mkdirSync(dir, { recursive: true })
  rmSync(markerPath, { force: true })
  writeFileSync(join(dir, 'config.json'), JSON.stringify(hfConfig(shape), null, 2) + '\n')
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: 1, eos_token_id: 2 }, null, 2) + '\n')
  const partial = weightsPath + '.partial'
  const bytes = writeRandomSafetensors(partial, plan, seed)
  renameSync(partial, weightsPath)
  writeFileSync(markerPath, JSON.stringify({ stamp, bytes }) + '\n')
  return { dir, bytes, parameters, reused: false, buildMs: performance.now() - started }
}

/** Elements generated and written per chunk (2 MiB of BF16). */
const CHUNK = 1 << 20

/**
 * Streams a BF16 safetensors file: the header first (every name and shape is known up front), then
 * each tensor's values generated chunk by chunk. Memory stays at one chunk whatever the model size.
 */
function writeRandomSafetensors (path: string, plan: TensorPlan[], seed: number): number {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } }
  let offset = 0
  for (const t of plan) {
    const size = 2 * t.shape.reduce((a, b) => a * b, 1)
    header[t.name] = { dtype: 'BF16', shape: t.shape, data_offsets: [offset, offset + size] }
    offset += size
  }
  let json = JSON.stringify(header)
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8) // tensor data starts 8-byte aligned
  const jsonBytes = Buffer.from(json, 'utf8')
  const prefix = Buffer.alloc(8)
  prefix.writeBigUInt64LE(BigInt(jsonBytes.length))

  const values = new Float32Array(CHUNK)
  const bits = new Uint32Array(values.buffer)
  const halves = new Uint16Array(CHUNK)
  const fd = openSync(path, 'w')
  try {
    writeAll(fd, prefix)
    writeAll(fd, jsonBytes)
    plan.forEach((t, index) => {
      const count = t.shape.reduce((a, b) => a * b, 1)
      // Uniform in [-a, a] has std a/√3: linear weights get std 1/√fan_in, embeddings std 1.
      const a = t.kind === 'linear' ? Math.sqrt(3 / t.shape[1]) : Math.sqrt(3)
      // xorshift32, seeded per tensor so each tensor's values do not depend on the others.
      let x = (Math.imul(seed ^ 0x9e3779b9, index + 1) ^ 0x85ebca6b) | 1
      for (let start = 0; start < count; start += CHUNK) {
        const n = Math.min(CHUNK, count - start)
        if (t.kind === 'norm') {
          values.fill(1, 0, n)
        } else {
          for (let i = 0; i < n; i++) {
            x ^= x << 13
            x ^= x >>> 17
            x ^= x << 5
            values[i] = ((x >>> 0) * 4.656612873077393e-10 - 1) * a // (2u − 1)·a with u in [0, 1)
          }
        }
        for (let i = 0; i < n; i++) {
          const b = bits[i]
          halves[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16 // to bfloat16, round to nearest even
        }
        writeAll(fd, new Uint8Array(halves.buffer, 0, 2 * n))
      }
    })
  } finally {
    closeSync(fd)
  }
  return 8 + jsonBytes.length + offset
}

function writeAll (fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done, bytes.length - done)
}

// A random checkpoint has no tokenizer, but the local model and the client both load one
// (loadTokenizer runs even when the prompt is given as ids). Write a minimal valid one: BPE without
// merges over a generated 32000-word vocabulary ("w3" … "w31999"), ids 0–2 the usual specials.

export function ensureTokenizer (dir: string, vocabSize: number): boolean {
  const tokenizerPath = join(dir, 'tokenizer.json')
  const configPath = join(dir, 'tokenizer_config.json')
  if (existsSync(tokenizerPath) && existsSync(configPath)) {
    try {
      const vocab = JSON.parse(readFileSync(tokenizerPath, 'utf8'))?.model?.vocab as Record<string, number> | undefined
      if (vocab != null && Object.keys(vocab).length === vocabSize) return false
    } catch {}
  }
  const specials = ['<unk>', '<s>', '</s>']
  const vocab: Record<string, number> = {}
  specials.forEach((token, id) => { vocab[token] = id })
  for (let id = specials.length; id < vocabSize; id++) vocab[`▁w${id}`] = id
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [{ type: 'WhitespaceSplit' }, { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: false }]
    },
    post_processor: null,
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: false },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: false, ignore_merges: true, vocab, merges: []
    }
  }
  const tokenizerConfig = {
    tokenizer_class: 'LlamaTokenizerFast', add_bos_token: true, add_eos_token: false,
    bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', model_max_length: 2048
  }
  const writeAtomic = (path: string, value: unknown): void => {
    writeFileSync(`${path}.${process.pid}.tmp`, JSON.stringify(value) + '\n')
    renameSync(`${path}.${process.pid}.tmp`, path)
  }
  writeAtomic(configPath, tokenizerConfig)
  writeAtomic(tokenizerPath, tokenizer)
  return true
}
