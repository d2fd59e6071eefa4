// The client's part of the model: token ids → embeddings, and last hidden states → logits.
import type { ModelConfig } from './config.ts'
import { InvalidArgumentError } from './errors.ts'
import { QUANTIZATIONS, type QuantFormat, type Quantization } from './quantize.ts'
import { sentNow } from './worker/batch-wait.ts'
import type { HeadLoadArgs, HeadLoadEvent, HeadLoadResult, LogitsArgs } from './worker/head-worker.ts'
import { ownBuffer, WorkerClient } from './worker/rpc.ts'

/**
 * int8 by default: the f32 head reads vocab × hidden × 4 bytes per token (262 MB for a 32k × 2048
 * head), int8 a quarter of that, and picks the same top-1 token at ≥ 99 % of positions.
 */
export const DEFAULT_HEAD_QUANT: Quantization = 'int8'

export interface ClientHeadInit {
  modelDir: string
  /** Quantization of the LM head (default int8; `none` is f32). */
  headQuant?: Quantization
  /** The LM head's quantized format (default HEAD_QUANT_FORMATS[headQuant]; for measuring other formats). */
  headFormat?: QuantFormat
  threads?: number
  /** Where the prepared head is kept (default: defaultCacheDir()), beside the span's layers. */
  cacheDir?: string
  /** The checkpoint's model id, if the caller has it (it keys the prepared head). */
  modelId?: string
  /** Notes from the load, e.g. a damaged prepared head being rebuilt. */
  log?: (message: string) => void
}

export interface ClientHead {
  readonly config: ModelConfig
  readonly headQuant: Quantization
  /** Bytes of the final norm and LM head weights as prepared for onnxruntime. */
  readonly preparedBytes: number
  /** Embedding rows for `ids`, read from the checkpoint: [ids, hidden] f32. */
  embed (ids: number[]): Promise<Float32Array>
  /**
   * Logits [tokens, vocab] for hidden states [tokens, hidden]; `hidden`'s buffer is handed over.
   * Into `into` if given (from createLogitsBuffer, reused from token to token): no new buffer per
   * call, which a loop over tokens would otherwise leave to the garbage collector, 128 KB a token
   * for a 32000-token vocabulary. Calls into one buffer are one generation's: concurrent ones'
   * calls share a run when they come together, and a call waits briefly for the others due soon.
   */
  logits (hidden: Float32Array, tokens: number, into?: Float32Array): Promise<Float32Array>
  close (): Promise<void>
}

/** A number for each logits buffer: the head's worker paces calls by it (batch-wait.ts). */
const callers = new WeakMap<ArrayBufferLike, number>()
let lastCaller = 0
function callerOf (buffer: ArrayBufferLike): number {
  let caller = callers.get(buffer)
  if (caller == null) callers.set(buffer, caller = ++lastCaller)
  return caller
}

/** A buffer for `logits(…, into)`: [tokens, vocab] f32 the head's worker writes to directly. */
export function createLogitsBuffer (config: ModelConfig, tokens = 1): Float32Array {
  return new Float32Array(new SharedArrayBuffer(tokens * config.vocabSize * 4))
}

export async function createClientHead (init: ClientHeadInit): Promise<ClientHead> {
  const headQuant = init.headQuant ?? DEFAULT_HEAD_QUANT
  if (!QUANTIZATIONS.includes(headQuant)) throw new InvalidArgumentError(`head quantization ${JSON.stringify(headQuant)} is not one of ${QUANTIZATIONS.join(', ')}`)
  const worker = new WorkerClient(new URL('./worker/head-worker.ts', import.meta.url), 'client head', (event: HeadLoadEvent) => { init.log?.(event.message) })
  try {
    const args: HeadLoadArgs = { modelDir: init.modelDir, headQuant, headFormat: init.headFormat, threads: init.threads, cacheDir: init.cacheDir, modelId: init.modelId }
    const { config, preparedBytes } = await worker.call<HeadLoadResult>('load', args)
    return {
      config,
      headQuant,
      preparedBytes,
      embed: async (ids) => await worker.call('embed', { ids }),
      logits: async (hidden, tokens, into) => {
        const own = ownBuffer(hidden)
        if (into == null) return await worker.call('logits', { hidden: own, tokens }, [own.buffer])
        const size = tokens * config.vocabSize
        if (!(into.buffer instanceof SharedArrayBuffer) || into.length < size) {
          throw new InvalidArgumentError(`logits for ${tokens} tokens need ${size} values in a SharedArrayBuffer (createLogitsBuffer), got ${into.length}${into.buffer instanceof SharedArrayBuffer ? '' : ' in an unshared buffer'}`)
        }
        await worker.call('logits', { hidden: own, tokens, into, caller: callerOf(into.buffer), sentAt: sentNow() } satisfies LogitsArgs, [own.buffer])
        return into.subarray(0, size)
      },
      close: async () => {
        await worker.call('close', {}).catch(() => {}) // a failed worker has nothing left to close
        await worker.terminate()
      }
    }
  } catch (err) {
    await worker.terminate()
    throw err
  }
}
