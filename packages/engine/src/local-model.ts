// A whole model on this machine: tokenizer, client head and one or more spans chained in order.
import { randomUUID } from 'node:crypto'
import { createClientHead, type ClientHead } from './client-head.ts'
import { loadModelConfig, type ModelConfig } from './config.ts'
import { InvalidArgumentError } from './errors.ts'
import { generateTokens, planGeneration, type GenerateOptions, type GeneratedToken, type GenerationResult, type LayerChain } from './generate.ts'
import type { Quantization } from './quantize.ts'
import { createSpanExecutor, type SpanExecutor } from './span-executor.ts'
import { loadTokenizer, type TextTokenizer } from './tokenizer.ts'

export interface LocalModelInit {
  modelDir: string
  /** Quantization of the layers' linear weights (default none). */
  quant?: Quantization
  /** Quantization of the client head's LM head (default int8, see createClientHead). */
  headQuant?: Quantization
  /** Spans [start, end) covering every layer in order; default one span of all layers. */
  spans?: Array<[number, number]>
  threads?: number
}

export interface LocalModel {
  readonly config: ModelConfig
  readonly tokenizer: TextTokenizer
  readonly head: ClientHead
  readonly spans: SpanExecutor[]
  /** Streams new tokens; the generator's return value is the whole result. */
  generate (prompt: string | number[], options?: GenerateOptions): AsyncGenerator<GeneratedToken, GenerationResult>
  /** Opens a session through every span, for callers that drive the layers themselves. */
  openChain (maxLength: number): Promise<LayerChain & { close: () => Promise<void> }>
  close (): Promise<void>
}

export async function createLocalModel (init: LocalModelInit): Promise<LocalModel> {
  const config = loadModelConfig(init.modelDir)
  const tokenizer = loadTokenizer(init.modelDir, config)
  const spans = init.spans ?? [[0, config.numLayers]]
  spans.forEach(([start, end], i) => {
    const expected = i === 0 ? 0 : spans[i - 1][1]
    if (start !== expected || end <= start) throw new InvalidArgumentError(`spans must cover layers 0–${config.numLayers} in order; [${start}, ${end}) does not follow ${expected}`)
  })
  if (spans[spans.length - 1][1] !== config.numLayers) throw new InvalidArgumentError(`spans end at layer ${spans[spans.length - 1][1]}, but the model has ${config.numLayers}`)

  const head = await createClientHead({ modelDir: init.modelDir, headQuant: init.headQuant, threads: init.threads })
  const executors: SpanExecutor[] = []
  try {
    for (const [start, end] of spans) {
      executors.push(await createSpanExecutor({ modelDir: init.modelDir, start, end, quant: init.quant, threads: init.threads }))
    }
  } catch (err) {
    await Promise.all([head.close(), ...executors.map(async e => { await e.close() })])
    throw err
  }

  const openChain = async (maxLength: number): Promise<LayerChain & { close: () => Promise<void> }> => {
    const sessionId = randomUUID()
    for (const executor of executors) await executor.openSession(sessionId, maxLength)
    return {
      async forward (hidden, tokens) {
        for (const executor of executors) hidden = await executor.forward(sessionId, hidden, { tokens })
        return hidden
      },
      async close () {
        await Promise.all(executors.map(async e => await e.closeSession(sessionId)))
      }
    }
  }

  return {
    config,
    tokenizer,
    head,
    spans: executors,
    openChain,
    async * generate (prompt, options = {}) {
      const promptIds = typeof prompt === 'string' ? tokenizer.encode(prompt) : prompt
      const plan = planGeneration(promptIds, options, executors[0].maxPositions)
      const chain = await openChain(plan.sessionLength)
      try {
        return yield * generateTokens(head, chain, tokenizer, config.eosTokenIds, plan, options)
      } finally {
        await chain.close()
      }
    },
    async close () {
      await Promise.all([head.close(), ...executors.map(async e => { await e.close() })])
    }
  }
}
