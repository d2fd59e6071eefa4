// The client's part of the model: token ids → embeddings, and last hidden states → logits.
import type { ModelConfig } from './config.ts'
import type { Quantization } from './quantize.ts'
import type { HeadLoadArgs } from './worker/head-worker.ts'
import { ownBuffer, WorkerClient } from './worker/rpc.ts'

export interface ClientHeadInit {
  modelDir: string
  /** Quantization of the LM head (default none: it decides every token). */
  quant?: Quantization
  threads?: number
}

export interface ClientHead {
  readonly config: ModelConfig
  embed (ids: number[]): Promise<Float32Array>
  /** Logits [tokens, vocab] for hidden states [tokens, hidden]; `hidden`'s buffer is handed over. */
  logits (hidden: Float32Array, tokens: number): Promise<Float32Array>
  close (): Promise<void>
}

export async function createClientHead (init: ClientHeadInit): Promise<ClientHead> {
  const worker = new WorkerClient(new URL('./worker/head-worker.ts', import.meta.url), 'client head')
  try {
    const args: HeadLoadArgs = { modelDir: init.modelDir, quant: init.quant ?? 'none', threads: init.threads }
    const { config } = await worker.call<{ config: ModelConfig }>('load', args)
    return {
      config,
      embed: async (ids) => await worker.call('embed', { ids }),
      logits: async (hidden, tokens) => {
        const own = ownBuffer(hidden)
        return await worker.call('logits', { hidden: own, tokens }, [own.buffer])
      },
      close: async () => { await worker.terminate() }
    }
  } catch (err) {
    await worker.terminate()
    throw err
  }
}
