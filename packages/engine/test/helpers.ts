// Shared by the engine's tests: where the real test model is, its reference output, and small drivers.
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { ClientHead, SpanExecutor } from '../src/index.ts'
import { matMulInt8RowsNode } from '../src/graph/matmul-int8-rows.ts'
import { GraphBuilder } from '../src/graph/onnx.ts'
import type { RowQuantized } from '../src/quantize.ts'
import { until } from '../../../test/fixtures/until.ts'

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '../../..')
export const STORIES = join(REPO_ROOT, '../shared/models/stories260k')
export const STORIES_PROMPT = 'Once upon a time'
export const STORIES_PROMPT_IDS = [1, 403, 407, 261, 378]
/** llama2.c's own greedy continuation (../shared/models/README.md). */
/** What reproduces llama2.c's f32 reference exactly: f32 layers and an f32 LM head. */
export const STORIES_F32 = { quant: 'none', headQuant: 'none' } as const
export const STORIES_REFERENCE_IDS = [432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426]

export function tempDir (label: string): { path: string, remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), `minga-${label}-`))
  return { path, remove: () => { rmSync(path, { recursive: true, force: true }) } }
}

/** Runs `ids` through the spans in order within one session; returns the last span's hidden states. */
export async function forwardThrough (spans: SpanExecutor[], sessionId: string, hidden: Float32Array, tokens: number): Promise<Float32Array> {
  for (const span of spans) hidden = await span.forward(sessionId, hidden, { tokens })
  return hidden
}

/** Logits for every position of `ids`, computed by a fresh session through `spans` in one prefill. */
export async function logitsOf (head: ClientHead, spans: SpanExecutor[], ids: number[], sessionId: string): Promise<Float32Array[]> {
  for (const span of spans) await span.openSession(sessionId, ids.length)
  try {
    const hidden = await forwardThrough(spans, sessionId, await head.embed(ids), ids.length)
    return rows(await head.logits(hidden, ids.length), head.config.vocabSize)
  } finally {
    for (const span of spans) await span.closeSession(sessionId)
  }
}

/** A simple chat template for stories260k, which has none (the tests' model, not a real chat format). */
export const STORIES_CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"

/**
 * A copy of stories260k with STORIES_CHAT_TEMPLATE in its tokenizer_config.json (the shipped model
 * stays untouched). The model id covers tokenizer_config.json, so servers must serve this copy too.
 */
export function storiesWithChatTemplate (): { path: string, remove: () => void } {
  const dir = tempDir('chat-model')
  for (const file of readdirSync(STORIES)) if (file !== 'tokenizer_config.json') copyFileSync(join(STORIES, file), join(dir.path, file))
  const config = JSON.parse(readFileSync(join(STORIES, 'tokenizer_config.json'), 'utf8'))
  writeFileSync(join(dir.path, 'tokenizer_config.json'), JSON.stringify({ ...config, chat_template: STORIES_CHAT_TEMPLATE }, null, 2))
  return dir
}

export function rows (flat: Float32Array, width: number): Float32Array[] {
  return Array.from({ length: flat.length / width }, (_, i) => flat.slice(i * width, (i + 1) * width))
}

export function maxAbsDiff (a: ArrayLike<number>, b: ArrayLike<number>): number {
  let max = 0
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]))
  return max
}

export function maxAbs (a: ArrayLike<number>): number {
  let max = 0
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]))
  return max
}

/** Polls `condition` until it holds; fails naming `what` after `timeoutMs` (never a fixed sleep). */
export async function waitFor (condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  await until(condition, what, { timeoutMs, intervalMs: 5 })
}

/**
 * A model of one per-row int8 linear (`y` = `x` Wᵀ, `x` [rows, k]) over weights quantized by
 * quantizePerRow ([n, k], `int7` as it was quantized); the weight is transposed to the [k, n] the
 * matmul packs, as prepared files hold it.
 */
export function rowsLinearModel (weight: RowQuantized, k: number, n: number, rows: number | string, int7 = false): Uint8Array {
  const transposed = new Uint8Array(k * n)
  for (let row = 0; row < n; row++) for (let c = 0; c < k; c++) transposed[c * n + row] = weight.data[row * k + c]
  const g = new GraphBuilder()
  const tensors = {
    weight: g.initializer('w', int7 ? 'int8' : 'uint8', [k, n], transposed),
    scales: g.initializer('w.scales', 'float32', [n], weight.scales),
    zeroPoints: g.initializer('w.zero_points', int7 ? 'int8' : 'uint8', [n], weight.zeroPoints)
  }
  g.input('x', 'float32', [rows, k])
  g.node('Identity', [matMulInt8RowsNode(g, 'linear', 'x', tensors)], {}, { outputs: ['y'] })
  g.output('y', 'float32', [rows, n])
  return g.toBytes('rows_linear')
}
