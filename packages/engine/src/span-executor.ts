// The async face of a span worker: open a session, push hidden states through its layers, close it.
import type { ModelConfig } from './config.ts'
import { InvalidArgumentError } from './errors.ts'
import { DEFAULT_QUANT, type Quantization } from './quantize.ts'
import { ownBuffer, WorkerClient } from './worker/rpc.ts'
import type { SpanLoadArgs, SpanLoadEvent, SpanLoadResult, SpanStats } from './worker/span-worker.ts'
import type { PrepareProgress, PrepareSpanInit } from './prepared/prepare-span.ts'

export type { SpanStats }

/** KV caches grow in blocks of this many tokens, as their sessions fill them. */
export const KV_BLOCK_TOKENS = 64
/** Bytes of one token's keys and values (f32) over `layers` layers. */
export function kvBytesPerToken (config: ModelConfig, layers: number): number {
  return 2 * config.numKvHeads * config.headDim * Float32Array.BYTES_PER_ELEMENT * layers
}

/** A step's longest wait for companions, unless told otherwise, and the most it may be told. */
export const DEFAULT_BATCH_WAIT_MS = 2
export const MAX_BATCH_WAIT_MS = 2

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
   * How long a step may wait for other active sessions' steps to run with it as one batch, in ms
   * (0 = never wait; at most MAX_BATCH_WAIT_MS; default DEFAULT_BATCH_WAIT_MS). Steps that are
   * already queued batch either way.
   */
  batchWaitMs?: number
  /** Each layer prepared on this load (the first load of a span prepares it). */
  onPrepareProgress?: (progress: PrepareProgress) => void
}

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
  const onEvent = (event: SpanLoadEvent): void => {
    if (event.type === 'progress') init.onPrepareProgress?.(event)
    else init.log?.(event.message)
  }
  const worker = new WorkerClient(new URL('./worker/span-worker.ts', import.meta.url), `span [${init.start}, ${init.end})`, onEvent)
  const quant = init.quant ?? DEFAULT_QUANT
  try {
    const args: SpanLoadArgs = {
      modelDir: init.modelDir,
      modelId: init.modelId,
      cacheDir: init.cacheDir,
      start: init.start,
      end: init.end,
      quant,
      format: init.format,
      threads: init.threads,
      maxSessions: init.maxSessions ?? 16,
      cacheBytes: init.cacheBytes ?? DEFAULT_CACHE_BYTES,
      batchWaitMs
    }
    const loaded = await worker.call<SpanLoadResult>('load', args)
    return {
      config: loaded.config,
      start: init.start,
      end: init.end,
      quant,
      bytesRead: loaded.bytesRead,
      preparedBytes: loaded.preparedBytes,
      prepared: { dir: loaded.preparedDir, built: loaded.built },
      maxPositions: loaded.maxPositions,
      openSession: async (sessionId, maxLength, options = {}) => await worker.call('open', { sessionId, maxLength, ...options }),
      forward: async (sessionId, hidden, { tokens, position }) => {
        const own = ownBuffer(hidden)
        return await worker.call('forward', { sessionId, hidden: own, tokens, position }, [own.buffer])
      },
      closeSession: async (sessionId) => await worker.call('close', { sessionId }),
      stats: async () => await worker.call('stats', {}),
      close: async () => { await worker.terminate() }
    }
  } catch (err) {
    await worker.terminate()
    throw err
  }
}
