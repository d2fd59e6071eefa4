// Worker: the client's own part of the model — token embeddings, final norm and LM head.
// Embeddings are read from the checkpoint row by row as tokens need them (a row is a few KB, and
// the OS page cache keeps the hot ones), so the vocab × hidden f32 matrix is never held here. The
// final norm and LM head come from the prepared cache (prepared/prepare-head.ts), prepared there the
// first time: ORT reads them from the files itself, so no JS copy and no ModelProto bytes of the
// weights exist in this process.
import * as ort from 'onnxruntime-node'
import { loadModelConfig, type ModelConfig } from '../config.ts'
import { InvalidArgumentError, ShapeError } from '../errors.ts'
import { HEAD_IO } from '../graph/head-graph.ts'
import { EMBEDDINGS, prepareHead } from '../prepared/prepare-head.ts'
import type { QuantFormat, Quantization } from '../quantize.ts'
import { SafetensorsCheckpoint } from '../safetensors.ts'
import { beforeOutputs } from './garbage.ts'
import { sessionOptions } from './ort-options.ts'
import { BatchPacer } from './batch-wait.ts'
import { emitEvent, serveRequests, Transfer, type BatchedMethod } from './rpc.ts'
import { splitRows, stackRows } from './rows.ts'

export interface HeadLoadArgs { modelDir: string, headQuant: Quantization, headFormat?: QuantFormat, threads?: number, cacheDir?: string, modelId?: string }

export interface HeadLoadResult {
  config: ModelConfig
  /** Checkpoint bytes the load read (0 when the head was already prepared). */
  bytesRead: number
  /** Bytes of the head's weights as prepared (final norm + LM head, quantized or not). */
  preparedBytes: number
}

/** Events the worker sends while it loads. */
export type HeadLoadEvent = { type: 'log', message: string }

let config: ModelConfig
let checkpoint: SafetensorsCheckpoint
let head: ort.InferenceSession

async function load ({ modelDir, headQuant, headFormat, threads, cacheDir, modelId }: HeadLoadArgs): Promise<HeadLoadResult> {
  config = loadModelConfig(modelDir)
  checkpoint = new SafetensorsCheckpoint(modelDir) // stays open: embeddings are read per token
  try {
    checkpoint.checkShape(EMBEDDINGS, [config.vocabSize, config.hiddenSize])
    const prepared = prepareHead({ modelDir, quant: headQuant, format: headFormat, cacheDir, modelId, log: message => { emitEvent({ type: 'log', message } satisfies HeadLoadEvent) } })
    head = await ort.InferenceSession.create(prepared.graph, sessionOptions(threads))
    return { config, bytesRead: prepared.bytesRead, preparedBytes: prepared.weightBytes }
  } catch (err) {
    checkpoint.close()
    throw err
  }
}

function embed ({ ids }: { ids: number[] }): Transfer<Float32Array> {
  const { hiddenSize, vocabSize } = config
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw new InvalidArgumentError(`token id ${id} is outside the vocabulary of ${vocabSize}`)
  }
  const out = new Float32Array(ids.length * hiddenSize)
  ids.forEach((id, i) => { checkpoint.readRows(EMBEDDINGS, id, id + 1, out.subarray(i * hiddenSize)) })
  return new Transfer(out, [out.buffer])
}

/**
 * Logits between scavenges (4 tokens of a 32000-token vocabulary): the allocator keeps what the
 * dead outputs held, so a client's RSS grows by what lives between two scavenges. After 300 tokens
 * of the TinyLlama-shaped int8 head, RSS − baseline − prepared was 8.7–13.3 MiB with 4 MB between
 * scavenges and 5.5–6.6 MiB with this, at the same ms per token (`pnpm bench:head`).
 */
const LOGITS_BYTES_BETWEEN_SCAVENGES = 512 * 2 ** 10

/**
 * `into`, if given, views a SharedArrayBuffer the logits are written to (nothing is sent back); its
 * calls are one generation's, `caller`, stamped when sent (sentNow()) for the batch wait.
 */
export interface LogitsArgs { hidden: Float32Array, tokens: number, into?: Float32Array, caller?: number, sentAt?: number }

/** The longest a logits call waits for other generations' calls due soon (a head run is a few ms). */
const LOGITS_WAIT_CAP_MS = 20
const pacer = new BatchPacer<number>(LOGITS_WAIT_CAP_MS)

/**
 * Logits for the requests queued together, as one run over all their rows: a client with several
 * sessions gets their steps back from a server at once, and their heads then read the LM head's
 * weights once (and send their next steps together, so the server can batch those too). Each
 * generation's pacing is kept for the next batch's wait.
 */
async function logitsBatch (batch: LogitsArgs[]): Promise<unknown[]> {
  const started = performance.now()
  for (const { caller, sentAt } of batch) if (caller != null) pacer.arrived(caller, sentAt)
  try {
    return await logitsRun(batch)
  } finally {
    pacer.answered(callersOf(batch), started)
  }
}

function callersOf (batch: LogitsArgs[]): Set<number> {
  return new Set(batch.flatMap(args => args.caller != null ? [args.caller] : []))
}

/** The run itself: each request's logits rows, or the ShapeError of a request that is wrong. */
async function logitsRun (batch: LogitsArgs[]): Promise<unknown[]> {
  const { hiddenSize, vocabSize } = config
  const results: unknown[] = batch.map(({ hidden, tokens }) => hidden.length === tokens * hiddenSize && Number.isInteger(tokens) && tokens >= 1
    ? undefined
    : new ShapeError(`hidden states of ${hidden.length} values do not match ${tokens} tokens × hidden size ${hiddenSize}`))
  const valid = batch.filter((_, i) => results[i] == null)
  if (valid.length === 0) return results
  const rows = valid.reduce((n, args) => n + args.tokens, 0)
  const hidden = new ort.Tensor('float32', stackRows(valid, hiddenSize), [1, rows, hiddenSize])
  beforeOutputs(rows * vocabSize * 4, LOGITS_BYTES_BETWEEN_SCAVENGES)
  const out = (await head.run({ [HEAD_IO.hidden]: hidden }))[HEAD_IO.logits].data as Float32Array
  const outputs = splitRows(out, valid, vocabSize)
  return results.map(result => result ?? outputs.shift())
}

const logits: BatchedMethod<LogitsArgs> = { run: logitsBatch, waitUntil: (batch, since) => pacer.waitUntil(callersOf(batch), since) }

/** File descriptors belong to the process, not the worker: close them before the worker ends. */
async function close (): Promise<void> {
  checkpoint?.close()
  await head?.release()
}

serveRequests({ load, embed, close }, { logits })
