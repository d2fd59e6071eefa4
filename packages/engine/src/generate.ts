// The generation loop shared by local runs and the swarm client: embed → layers → logits → sample.
import { createLogitsBuffer, type ClientHead } from './client-head.ts'
import { ContextLengthError, InvalidArgumentError } from './errors.ts'
import { createSampler, type SamplingOptions } from './sampler.ts'
import type { TextTokenizer } from './tokenizer.ts'

/** One inference session through all of the model's layers, in order (local spans or a swarm route). */
export interface LayerChain {
  /** Hidden states of `tokens` new tokens in, the last layer's hidden states out. */
  forward (hidden: Float32Array, tokens: number): Promise<Float32Array>
}

export interface GenerateOptions extends SamplingOptions {
  /** Default 128; limited by the model's context. */
  maxNewTokens?: number
  /** Stop when the text contains one of these (the stop string is not returned). */
  stop?: string[]
  /** Prompt tokens per prefill step (default 128). */
  prefillChunkSize?: number
}

export interface GeneratedToken { id: number, text: string }

export interface GenerationResult {
  promptIds: number[]
  ids: number[]
  text: string
  stopReason: 'eos' | 'stop' | 'length'
  /** Time to the first new token's logits. */
  prefillMs: number
  /** Decode steps per second after the first token. */
  tokensPerSecond: number
}

export interface GenerationPlan { promptIds: number[], maxNewTokens: number, sessionLength: number }

/** Checks a prompt against the context and settles how long the session must be. */
export function planGeneration (promptIds: number[], options: GenerateOptions, maxPositions: number): GenerationPlan {
  const requested = options.maxNewTokens ?? 128
  if (!(Number.isInteger(requested) && requested >= 1)) throw new InvalidArgumentError(`max new tokens must be an integer ≥ 1, got ${requested}`)
  if (promptIds.length === 0) throw new InvalidArgumentError('the prompt is empty')
  if (promptIds.length >= maxPositions) {
    throw new ContextLengthError(`the prompt is ${promptIds.length} tokens, longer than the model's context of ${maxPositions} tokens (room is needed for at least one new token)`)
  }
  const maxNewTokens = Math.min(requested, maxPositions - promptIds.length)
  // The last sampled token is never fed back, so the session holds at most prompt + new − 1 tokens.
  return { promptIds, maxNewTokens, sessionLength: promptIds.length + maxNewTokens - 1 }
}

export async function * generateTokens (
  head: ClientHead, chain: LayerChain, tokenizer: TextTokenizer, eosTokenIds: number[], plan: GenerationPlan, options: GenerateOptions = {}
): AsyncGenerator<GeneratedToken, GenerationResult> {
  const { promptIds, maxNewTokens } = plan
  const sampler = createSampler(options)
  const chunkSize = options.prefillChunkSize ?? 128
  if (!(Number.isInteger(chunkSize) && chunkSize >= 1)) throw new InvalidArgumentError(`prefill chunk size must be an integer ≥ 1, got ${chunkSize}`)
  const { hiddenSize } = head.config
  const stops = new StopMatcher(options.stop ?? [])
  const textStream = tokenizer.createTextStream(promptIds)
  const seen = [...promptIds]
  const ids: number[] = []
  let text = ''
  let stopReason: GenerationResult['stopReason'] = 'length'

  const started = performance.now()
  let hidden: Float32Array = new Float32Array(0)
  for (let at = 0; at < promptIds.length; at += chunkSize) {
    const chunk = promptIds.slice(at, at + chunkSize)
    hidden = await chain.forward(await head.embed(chunk), chunk.length)
  }
  const logitsBuffer = createLogitsBuffer(head.config)
  let logits = await head.logits(hidden.subarray(hidden.length - hiddenSize), 1, logitsBuffer)
  const prefillMs = performance.now() - started
  const decodeStarted = performance.now()

  while (true) {
    const id = sampler.sample(logits, seen)
    if (eosTokenIds.includes(id)) { stopReason = 'eos'; break }
    ids.push(id)
    seen.push(id)
    const { emit, stopped } = stops.push(textStream.push(id))
    text += emit
    yield { id, text: emit }
    if (stopped) { stopReason = 'stop'; break }
    if (ids.length >= maxNewTokens) break
    logits = await head.logits(await chain.forward(await head.embed([id]), 1), 1, logitsBuffer)
  }
  const tail = stopReason === 'stop' ? '' : stops.flush()
  if (tail !== '') {
    text += tail
    yield { id: -1, text: tail }
  }
  const decodeSeconds = (performance.now() - decodeStarted) / 1000
  const steps = Math.max(0, ids.length - 1)
  return { promptIds, ids, text, stopReason, prefillMs, tokensPerSecond: steps > 0 ? steps / decodeSeconds : 0 }
}

/** Runs a generation stream to its end and returns its result, for callers that do not stream. */
export async function untilDone<R> (stream: AsyncGenerator<GeneratedToken, R>): Promise<R> {
  let step = await stream.next()
  while (step.done !== true) step = await stream.next()
  return step.value
}

/** Holds back text that may be the start of a stop string, and cuts the output where one appears. */
class StopMatcher {
  private held = ''
  constructor (private readonly stops: string[]) {}

  push (piece: string): { emit: string, stopped: boolean } {
    const text = this.held + piece
    let cut = -1
    for (const stop of this.stops) {
      const at = stop === '' ? -1 : text.indexOf(stop)
      if (at >= 0 && (cut < 0 || at < cut)) cut = at
    }
    if (cut >= 0) {
      this.held = ''
      return { emit: text.slice(0, cut), stopped: true }
    }
    let keep = 0
    for (const stop of this.stops) {
      for (let n = Math.min(stop.length - 1, text.length); n > keep; n--) {
        if (text.endsWith(stop.slice(0, n))) { keep = n; break }
      }
    }
    this.held = text.slice(text.length - keep)
    return { emit: text.slice(0, text.length - keep), stopped: false }
  }

  flush (): string {
    const rest = this.held
    this.held = ''
    return rest
  }
}
