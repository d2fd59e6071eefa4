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
  const scratch: SamplingScratch = { weights: new Float64Array(0), ids: new Int32Array(0), keys: new Float64Array(0) }
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
      return pick(sampleTempered(logits, { temperature, topK, topP }, random(), scratch))
    }
  }
}

/** Buffers one sampler reuses from token to token (a vocabulary's worth: 32000 tokens are 256 KB). */
interface SamplingScratch { weights: Float64Array, ids: Int32Array, keys: Float64Array }

/**
 * A token drawn with probability ∝ exp(logit / T) among the top-k, then within the top-p nucleus;
 * `r` is uniform in [0, 1). Nothing sorts the whole vocabulary: with neither cut the draw walks the
 * logits in order; top-k keeps its k best in a heap; top-p first drops every token whose probability
 * is below (1 − p) / (n − 1), which no nucleus can need (llama2.c's cut), then sorts what is left.
 * Where candidates are sorted, ties go to the lower id.
 */
function sampleTempered (logits: Float32Array, { temperature, topK, topP }: { temperature: number, topK: number, topP: number }, r: number, scratch: SamplingScratch): number {
  const n = logits.length
  if (scratch.weights.length < n) {
    scratch.weights = new Float64Array(n)
    scratch.ids = new Int32Array(n)
    scratch.keys = new Float64Array(n)
  }
  const { weights, ids, keys } = scratch
  let count: number
  let sorted = true
  if (topK > 0 && topK < n) {
    count = topKIds(logits, topK, ids, keys)
  } else {
    count = n
    for (let i = 0; i < n; i++) ids[i] = i
    sorted = false
  }
  let max = -Infinity
  for (let i = 0; i < count; i++) max = Math.max(max, logits[ids[i]])
  let total = 0
  for (let i = 0; i < count; i++) {
    weights[i] = Math.exp((logits[ids[i]] - max) / temperature)
    total += weights[i]
  }
  let kept = count
  if (topP < 1 && count > 1) {
    if (!sorted) {
      const cutoff = total * (1 - topP) / (count - 1)
      count = 0
      for (let i = 0; i < n; i++) if (weights[i] >= cutoff) ids[count++] = i
      sortByLogit(ids.subarray(0, count), logits, keys)
      for (let i = 0; i < count; i++) weights[i] = Math.exp((logits[ids[i]] - max) / temperature)
    }
    let mass = 0
    for (let i = 0; i < count; i++) {
      mass += weights[i]
      if (mass >= topP * total) { kept = i + 1; break }
    }
    kept = Math.min(kept, count)
  }
  let keptTotal = 0
  for (let i = 0; i < kept; i++) keptTotal += weights[i]
  let left = r * keptTotal
  for (let i = 0; i < kept; i++) {
    left -= weights[i]
    if (left < 0) return ids[i]
  }
  return ids[kept - 1]
}

/** Whether token a ranks before token b: a higher logit, or the same one and a lower id. */
function ranksBefore (logits: Float32Array, a: number, b: number): boolean {
  return logits[a] > logits[b] || (logits[a] === logits[b] && a < b)
}

/** The k best ids, best first, into ids[0..k): a heap of the best k so far, its worst at the root. */
function topKIds (logits: Float32Array, k: number, ids: Int32Array, keys: Float64Array): number {
  const heap = ids.subarray(0, k)
  const siftDown = (from: number): void => {
    let at = from
    for (;;) {
      const left = 2 * at + 1
      if (left >= k) return
      const worse = left + 1 < k && ranksBefore(logits, heap[left], heap[left + 1]) ? left + 1 : left
      if (!ranksBefore(logits, heap[at], heap[worse])) return
      const id = heap[at]
      heap[at] = heap[worse]
      heap[worse] = id
      at = worse
    }
  }
  for (let i = 0; i < k; i++) heap[i] = i
  for (let i = (k >> 1) - 1; i >= 0; i--) siftDown(i)
  for (let id = k; id < logits.length; id++) {
    if (ranksBefore(logits, id, heap[0])) {
      heap[0] = id
      siftDown(0)
    }
  }
  sortByLogit(heap, logits, keys)
  return k
}

/** Bits of one f32, to turn a logit into an integer of the same order. */
const f32 = new Float32Array(1)
const f32Bits = new Uint32Array(f32.buffer)
/** Ids below 2^21 (a vocabulary of up to 2 M tokens) fit beside a logit's 32 bits in a float64's 53. */
const ID_SPAN = 2 ** 21

/**
 * Sorts ids best first (ties: lower id first). Each id becomes one number, its logit's order in the
 * high bits and the id in the low ones, so the typed array's own numeric sort does the work: a
 * comparator calling back into JS took 4 ms for the 20000 tokens a flat distribution leaves to top-p.
 */
function sortByLogit (ids: Int32Array, logits: Float32Array, keys: Float64Array): void {
  const n = ids.length
  if (logits.length > ID_SPAN) {
    ids.sort((a, b) => ranksBefore(logits, a, b) ? -1 : ranksBefore(logits, b, a) ? 1 : 0)
    return
  }
  for (let i = 0; i < n; i++) {
    f32[0] = logits[ids[i]] + 0 // (−0 ranks as 0)
    const bits = f32Bits[0]
    // IEEE order as unsigned integers (negatives reversed), then flipped: a higher logit, a smaller key
    const ascending = bits >= 0x80000000 ? ~bits >>> 0 : bits + 0x80000000
    keys[i] = (0xffffffff - ascending) * ID_SPAN + ids[i]
  }
  const sorted = keys.subarray(0, n).sort()
  for (let i = 0; i < n; i++) ids[i] = sorted[i] % ID_SPAN
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
