// The async face of a span's workers: open a session, push hidden states through its layers, close
// it. A large span is split into consecutive parts, one worker each, so that their layers' sessions
// are created at once on several cores (creating a session prepacks its weights on one thread); a
// step then goes through the parts in order.
import { availableParallelism } from 'node:os'
import { loadModelConfig, type ModelConfig } from './config.ts'
import { computeModelId } from './manifest.ts'
import { InvalidArgumentError, UnknownSessionError } from './errors.ts'
import { DEFAULT_QUANT, type QuantFormat, type Quantization } from './quantize.ts'
import { sentNow } from './worker/batch-wait.ts'
import { ownBuffer, WorkerClient } from './worker/rpc.ts'
import type { SpanLoadArgs, SpanLoadEvent, SpanLoadResult, SpanPrepareArgs, SpanPrepareResult, SpanStats } from './worker/span-worker.ts'
import { isSpanPrepared, preparedSpanBytes, type PrepareProgress, type PrepareSpanInit } from './prepared/prepare-span.ts'

export type { SpanStats }

/** KV caches grow in blocks of this many tokens, as their sessions fill them. */
export const KV_BLOCK_TOKENS = 64
/** Bytes of one token's keys and values (f32) over `layers` layers. */
export function kvBytesPerToken (config: ModelConfig, layers: number): number {
  return 2 * config.numKvHeads * config.headDim * Float32Array.BYTES_PER_ELEMENT * layers
}

/**
 * A step's longest wait for companions, unless told otherwise, and the most it may be told. Waits
 * are shorter in practice: only for sessions due soon, and at most one batch's run (batch-wait.ts).
 */
export const DEFAULT_BATCH_WAIT_MS = 50
export const MAX_BATCH_WAIT_MS = 1000

/** The KV cache budget of a span unless told otherwise. */
export const DEFAULT_CACHE_BYTES = 256 * 2 ** 20

/** Where the span comes from is PrepareSpanInit's; the rest is how its worker serves it. */
export interface SpanExecutorInit extends Omit<PrepareSpanInit, 'onProgress'> {
  /** ORT intra-op threads (default: all cores). */
  threads?: number
  /** Sessions open at once (default 16). */
  maxSessions?: number
  /** KV cache budget of all sessions together, in bytes (default 256 MiB). Caches grow as sessions fill them. */
  cacheBytes?: number
  /**
   * The longest a step may wait for other sessions' steps to run with it as one batch, in ms (0 =
   * never wait; at most MAX_BATCH_WAIT_MS; default DEFAULT_BATCH_WAIT_MS). A step waits only for
   * sessions whose next step is due (from the time each took to come back last time) within about
   * one batch's run time. Steps that are already queued batch either way.
   */
  batchWaitMs?: number
  /** Each layer prepared on this load (the first load of a span prepares it). */
  onPrepareProgress?: (progress: PrepareProgress) => void
  /**
   * Workers the span is split into (consecutive layers each). Default: one per LAYERS_BYTES_PER_WORKER
   * of prepared weights or part of it (so a small span keeps one), at most one per core and MAX_SPAN_WORKERS.
   */
  workers?: number
}

/** The most workers a span is split into by default. */
export const MAX_SPAN_WORKERS = 4
/**
 * A worker of its own for every this many bytes of prepared weights (or part of it), by default.
 * Creating sessions prepacks their weights on the creating thread alone, about a second per
 * 600–900 MB on this project's 2-core VM, so a larger span would miss a 2 s warm start in one
 * worker (int8 [0, 22) of the TinyLlama shape, 971 MiB: 2.1 s in one, 1.1 s in two). A step costs
 * 1–4 ms more in two workers than in one, so smaller spans keep one: int4 [0, 22) (506 MiB, 1.0 s)
 * and a Llama-2-7B-shaped int4 node of 8 layers (835 MiB) among them.
 */
export const LAYERS_BYTES_PER_WORKER = 900 * 2 ** 20

export interface ForwardOptions {
  /** Number of new tokens in `hidden` ([tokens, hiddenSize]). */
  tokens: number
  /** If given, must equal the number of tokens the session already holds. */
  position?: number
}

export interface OpenSessionOptions {
  /** Run only layers [start, end) of the span in this session (default: all of it). */
  start?: number
  end?: number
}

export interface SpanExecutor {
  readonly config: ModelConfig
  readonly start: number
  readonly end: number
  readonly quant: Quantization
  /** Checkpoint bytes the load read (0 when the span was already prepared). */
  readonly bytesRead: number
  /** Size of the prepared span (graphs and weights files). */
  readonly preparedBytes: number
  /** Where its prepared layers are, and which ones this load had to prepare. */
  readonly prepared: { dir: string, built: number[] }
  /** Longest session the model's position tables allow. */
  readonly maxPositions: number
  openSession (sessionId: string, maxLength: number, options?: OpenSessionOptions): Promise<SpanStats>
  /**
   * Runs new tokens' hidden states through the span. `hidden`'s buffer is handed to the worker.
   * Concurrent calls of different sessions run as one batch (each session's output is what it would
   * be alone); a second call of one session waits for the first.
   */
  forward (sessionId: string, hidden: Float32Array, options: ForwardOptions): Promise<Float32Array>
  closeSession (sessionId: string): Promise<SpanStats>
  stats (): Promise<SpanStats>
  close (): Promise<void>
}

export async function createSpanExecutor (init: SpanExecutorInit): Promise<SpanExecutor> {
  const batchWaitMs = init.batchWaitMs ?? DEFAULT_BATCH_WAIT_MS
  if (!(Number.isFinite(batchWaitMs) && batchWaitMs >= 0 && batchWaitMs <= MAX_BATCH_WAIT_MS)) {
    throw new InvalidArgumentError(`batchWaitMs ${batchWaitMs} must be between 0 and ${MAX_BATCH_WAIT_MS} ms`)
  }
  if (init.workers != null && !(Number.isInteger(init.workers) && init.workers >= 1)) throw new InvalidArgumentError(`workers ${init.workers} must be a whole number ≥ 1`)
  const onEvent = (event: SpanLoadEvent): void => {
    if (event.type === 'progress') init.onPrepareProgress?.(event)
    else init.log?.(event.message)
  }
  const quant = init.quant ?? DEFAULT_QUANT
  // (the id is computed once here, not again in every worker)
  const modelId = init.modelId ?? computeModelId(init.modelDir)
  const whole: SpanPrepareArgs = { modelDir: init.modelDir, modelId, cacheDir: init.cacheDir, start: init.start, end: init.end, quant, format: init.format }
  const parts = splitSpan(init.start, init.end, init.workers ?? defaultSpanWorkers(loadModelConfig(init.modelDir), quant, init.end - init.start, init.format))
  // Layers still to prepare are prepared first, in a worker of their own (a layer in memory at a
  // time), which ends before the span's workers load: preparing leaves ~100 MB of quantization
  // buffers in its worker's heap, and a finished worker gives them all back.
  const prepared = isSpanPrepared(whole) ? undefined : await prepareInWorker(whole, onEvent)
  const workers = parts.map(part => new WorkerClient(SPAN_WORKER, `span [${part.start}, ${part.end})`, onEvent))
  const totalCacheBytes = init.cacheBytes ?? DEFAULT_CACHE_BYTES
  try {
    const loads = await Promise.all(workers.map(async (worker, i) => await worker.call<SpanLoadResult>('load', {
      ...whole,
      ...parts[i],
      threads: init.threads,
      maxSessions: init.maxSessions ?? 16,
      // (each part's share of the budget follows its layers: a session grows in every part at once)
      cacheBytes: Math.floor(totalCacheBytes * (parts[i].end - parts[i].start) / (init.end - init.start)),
      batchWaitMs
    } satisfies SpanLoadArgs)))
    const { config, maxPositions } = loads[0]
    /** The parts each open session runs through, in order. */
    const sessions = new Map<string, number[]>()
    const stats = async (): Promise<SpanStats> => mergeStats(await Promise.all(workers.map(async worker => await worker.call<SpanStats>('stats', {}))), sessions.size, kvBytesPerToken(config, init.end - init.start))
    const closeSession = async (sessionId: string): Promise<SpanStats> => {
      const through = sessions.get(sessionId) ?? []
      sessions.delete(sessionId)
      await Promise.all(through.map(async i => await workers[i].call('close', { sessionId })))
      return await stats()
    }
    return {
      config,
      start: init.start,
      end: init.end,
      quant,
      bytesRead: prepared?.bytesRead ?? loads[0].bytesRead,
      preparedBytes: loads.reduce((n, load) => n + load.preparedBytes, 0),
      prepared: { dir: loads[0].preparedDir, built: prepared?.built ?? loads[0].built },
      maxPositions,
      openSession: async (sessionId, maxLength, { start = init.start, end = init.end } = {}) => {
        if (sessions.has(sessionId)) throw new InvalidArgumentError(`session ${sessionId} is already open`)
        if (!(Number.isInteger(start) && Number.isInteger(end) && init.start <= start && start < end && end <= init.end)) {
          throw new InvalidArgumentError(`layers [${start}, ${end}) are not within this span [${init.start}, ${init.end})`)
        }
        const through = parts.flatMap((part, i) => part.start < end && start < part.end ? [i] : [])
        const opened: number[] = []
        try {
          for (const i of through) {
            await workers[i].call('open', { sessionId, maxLength, start: Math.max(start, parts[i].start), end: Math.min(end, parts[i].end) })
            opened.push(i)
          }
        } catch (err) {
          await Promise.all(opened.map(async i => await workers[i].call('close', { sessionId })))
          throw err
        }
        sessions.set(sessionId, through)
        return await stats()
      },
      forward: async (sessionId, hidden, { tokens, position }) => {
        const through = sessions.get(sessionId)
        if (through == null) throw new UnknownSessionError(`unknown session ${sessionId}`)
        let states = ownBuffer(hidden)
        for (let n = 0; n < through.length; n++) {
          try {
            states = await workers[through[n]].call<Float32Array<ArrayBuffer>>('forward', { sessionId, hidden: states, tokens, position, sentAt: sentNow() }, [states.buffer])
          } catch (err) {
            // The parts before this one hold the step's keys and values, this one does not: the
            // session can no longer go on, and is closed in every part.
            if (n > 0) await closeSession(sessionId).catch(() => {})
            throw err
          }
        }
        return states
      },
      closeSession,
      stats,
      close: async () => { await Promise.all(workers.map(async worker => { await worker.terminate() })) }
    }
  } catch (err) {
    await Promise.all(workers.map(async worker => { await worker.terminate() }))
    throw err
  }
}

const SPAN_WORKER = new URL('./worker/span-worker.ts', import.meta.url)

async function prepareInWorker (span: SpanPrepareArgs, onEvent: (event: SpanLoadEvent) => void): Promise<SpanPrepareResult> {
  const preparer = new WorkerClient(SPAN_WORKER, `preparing span [${span.start}, ${span.end})`, onEvent)
  try {
    return await preparer.call<SpanPrepareResult>('prepare', span)
  } finally {
    await preparer.terminate()
  }
}

/**
 * How many workers a span of `layers` layers loads in by default: one per LAYERS_BYTES_PER_WORKER
 * of prepared weights or part of it, at most one per core, per layer and MAX_SPAN_WORKERS.
 */
export function defaultSpanWorkers (config: ModelConfig, quant: Quantization, layers: number, format?: QuantFormat): number {
  const bytes = preparedSpanBytes(config, quant, layers, format)
  return Math.max(1, Math.min(availableParallelism(), MAX_SPAN_WORKERS, layers, Math.ceil(bytes / LAYERS_BYTES_PER_WORKER)))
}

/** [start, end) in `count` consecutive parts whose sizes differ by at most one layer. */
function splitSpan (start: number, end: number, count: number): Array<{ start: number, end: number }> {
  const layers = end - start
  const n = Math.max(1, Math.min(count, layers))
  return Array.from({ length: n }, (_, i) => ({ start: start + Math.floor(i * layers / n), end: start + Math.floor((i + 1) * layers / n) }))
}

/** The span's stats from its parts': a session needs room in every part it runs through. */
function mergeStats (parts: SpanStats[], sessions: number, spanTokenBytes: number): SpanStats {
  if (parts.length === 1) return parts[0]
  const cacheBytes = parts.reduce((n, p) => n + p.cacheBytes, 0)
  return {
    sessions,
    cacheTokens: Math.ceil(cacheBytes / spanTokenBytes),
    freeSessions: Math.min(...parts.map(p => p.freeSessions)),
    freeCacheTokens: Math.min(...parts.map(p => p.freeCacheTokens)),
    cacheBytes,
    freeCacheBytes: parts.reduce((n, p) => n + p.freeCacheBytes, 0),
    // (a step runs in every part: counted once, as the first part saw it)
    steps: parts[0].steps,
    batches: parts[0].batches,
    largestBatch: parts[0].largestBatch
  }
}
