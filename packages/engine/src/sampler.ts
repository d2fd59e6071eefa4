// Picks the next token from logits: greedy, or temperature / top-k / top-p sampling with a seed.
import { randomInt } from 'node:crypto'
import { InvalidArgumentError } from './errors.ts'

export interface SamplingOptions {
  /** 0 (the default) picks the most likely token. */
  temperature?: number
  /** Keep only the k most likely tokens (0 = all). */
  topK?: number
  /** Keep the smallest set of tokens whose probability reaches p (1 = all). */
  topP?: number
  /** Same seed, same output. */
  seed?: number
  /** > 1 discourages tokens already in the prompt or the output (as in transformers). */
  repetitionPenalty?: number
  /** Subtracted from the logit of every token already generated (OpenAI's presence_penalty, −2 to 2). */
  presencePenalty?: number
  /** Subtracted once per time a token was already generated (OpenAI's frequency_penalty, −2 to 2). */
  frequencyPenalty?: number
}

export interface Sampler {
  /**
   * `logits` is modified in place; `seen` holds the ids of the prompt and the output so far. A
   * sampler belongs to one generation: the ids it picks are the output its penalties count.
   */
  sample (logits: Float32Array, seen: Iterable<number>): number
}

export function validateSampling (options: SamplingOptions): Required<SamplingOptions> {
  const { temperature = 0, topK = 0, topP = 1, repetitionPenalty = 1, presencePenalty = 0, frequencyPenalty = 0 } = options
  if (!(Number.isFinite(temperature) && temperature >= 0)) throw new InvalidArgumentError(`temperature must be a number ≥ 0, got ${temperature}`)
  if (!(Number.isInteger(topK) && topK >= 0)) throw new InvalidArgumentError(`top-k must be an integer ≥ 0, got ${topK}`)
  if (!(topP > 0 && topP <= 1)) throw new InvalidArgumentError(`top-p must be in (0, 1], got ${topP}`)
  if (!(Number.isFinite(repetitionPenalty) && repetitionPenalty > 0)) throw new InvalidArgumentError(`repetition penalty must be a number > 0, got ${repetitionPenalty}`)
  for (const [name, value] of [['presence', presencePenalty], ['frequency', frequencyPenalty]] as const) {
    if (!(Number.isFinite(value) && value >= -2 && value <= 2)) throw new InvalidArgumentError(`${name} penalty must be a number from -2 to 2, got ${value}`)
  }
  const seed = options.seed ?? randomInt(2 ** 32)
  if (!Number.isSafeInteger(seed)) throw new InvalidArgumentError(`seed must be an integer, got ${seed}`)
  return { temperature, topK, topP, repetitionPenalty, presencePenalty, frequencyPenalty, seed }
}

export function createSampler (options: SamplingOptions = {}): Sampler {
  const { temperature, topK, topP, repetitionPenalty, presencePenalty, frequencyPenalty, seed } = validateSampling(options)
  const random = seededRandom(seed)
  // Times each token was picked so far, kept only when a presence or frequency penalty needs it.
  const picked = presencePenalty !== 0 || frequencyPenalty !== 0 ? new Map<number, number>() : undefined
  const pick = (id: number): number => {
    picked?.set(id, (picked.get(id) ?? 0) + 1)
    return id
  }
  return {
    sample (logits, seen) {
      if (repetitionPenalty !== 1) {
        for (const id of new Set(seen)) {
          const score = logits[id]
          logits[id] = score < 0 ? score * repetitionPenalty : score / repetitionPenalty
        }
      }
      if (picked != null) for (const [id, count] of picked) logits[id] -= presencePenalty + frequencyPenalty * count
      if (temperature === 0) return pick(argmax(logits))

      // Candidates by descending logit; top-k cuts the list before the softmax, top-p after it.
      let candidates = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a])
      if (topK > 0) candidates = candidates.slice(0, topK)
      const max = logits[candidates[0]]
      const weights = candidates.map(id => Math.exp((logits[id] - max) / temperature))
      const total = weights.reduce((a, b) => a + b, 0)
      let kept = candidates.length
      if (topP < 1) {
        let mass = 0
        for (let i = 0; i < candidates.length; i++) {
          mass += weights[i] / total
          if (mass >= topP) { kept = i + 1; break }
        }
      }
      const keptTotal = weights.slice(0, kept).reduce((a, b) => a + b, 0)
      let r = random() * keptTotal
      for (let i = 0; i < kept; i++) {
        r -= weights[i]
        if (r < 0) return pick(candidates[i])
      }
      return pick(candidates[kept - 1])
    }
  }
}

export function argmax (values: Float32Array): number {
  let best = 0
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i
  return best
}

/** A small seeded PRNG (mulberry32) in [0, 1), for sampling and benchmarks — not for anything secret. */
export function seededRandom (seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
