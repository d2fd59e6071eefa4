// The async face of a span worker: open a session, push hidden states through its layers, close it.
import type { ModelConfig } from './config.ts'
import type { Quantization } from './quantize.ts'
import { ownBuffer, WorkerClient } from './worker/rpc.ts'
import type { SpanLoadArgs, SpanLoadResult, SpanStats } from './worker/span-worker.ts'

export type { SpanStats }

export interface SpanExecutorInit {
  modelDir: string
  /** First layer of the span (inclusive). */
  start: number
  /** Last layer of the span (exclusive). */
  end: number
  quant?: Quantization
  /** ORT intra-op threads (default: all cores). */
  threads?: number
  /** Sessions open at once (default 16). */
  maxSessions?: number
  /** Sum of all open sessions' lengths, bounding KV cache memory (default 16 × the model's context). */
  maxCacheTokens?: number
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
  /** Bytes the load read from disk (headers included). */
  readonly bytesRead: number
  /** Longest session the model's position tables allow. */
  readonly maxPositions: number
  openSession (sessionId: string, maxLength: number, options?: OpenSessionOptions): Promise<SpanStats>
  /** Runs new tokens' hidden states through the span. `hidden`'s buffer is handed to the worker. */
  forward (sessionId: string, hidden: Float32Array, options: ForwardOptions): Promise<Float32Array>
  closeSession (sessionId: string): Promise<SpanStats>
  stats (): Promise<SpanStats>
  close (): Promise<void>
}

export async function createSpanExecutor (init: SpanExecutorInit): Promise<SpanExecutor> {
  const worker = new WorkerClient(new URL('./worker/span-worker.ts', import.meta.url), `span [${init.start}, ${init.end})`)
  const quant = init.quant ?? 'none'
  try {
    const args: SpanLoadArgs = {
      modelDir: init.modelDir,
      start: init.start,
      end: init.end,
      quant,
      threads: init.threads,
      maxSessions: init.maxSessions ?? 16,
      maxCacheTokens: init.maxCacheTokens
    }
    const loaded = await worker.call<SpanLoadResult>('load', args)
    return {
      config: loaded.config,
      start: init.start,
      end: init.end,
      quant,
      bytesRead: loaded.bytesRead,
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
