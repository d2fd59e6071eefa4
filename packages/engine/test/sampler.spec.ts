// Sampling: temperature, top-k and top-p draw from the distribution a plain sort of the whole
// vocabulary gives; OpenAI's presence and frequency penalties are subtracted from the logits of
// tokens already generated.
import { describe, expect, it } from 'vitest'
import { createSampler, seededRandom, type SamplingOptions } from '../src/index.ts'

/** Greedy picks over `steps` steps with the same logits each step (the prompt does not count). */
function picks (options: Parameters<typeof createSampler>[0], logits: number[], steps: number): number[] {
  const sampler = createSampler(options)
  return Array.from({ length: steps }, () => sampler.sample(Float32Array.from(logits), [0, 1, 2]))
}

describe('presence and frequency penalties', () => {
  it('without them greedy repeats the best token', () => {
    expect(picks({}, [2, 1.5, 0], 4)).toEqual([0, 0, 0, 0])
  })

  it('presence: once a token was generated it loses the penalty, however often it was', () => {
    // 2 − 1 = 1 < 1.5 → 1; then both were generated: 1 > 0.5 → 0, and 0 from then on
    expect(picks({ presencePenalty: 1 }, [2, 1.5, 0], 4)).toEqual([0, 1, 0, 0])
  })

  it('frequency: the penalty grows with each time a token was generated', () => {
    // counts (0,0) → 0; (1,0): 1.4 vs 1.5 → 1; (1,1): 1.4 vs 0.9 → 0; (2,1): 0.8 vs 0.9 → 1
    expect(picks({ frequencyPenalty: 0.6 }, [2, 1.5, 0], 4)).toEqual([0, 1, 0, 1])
    expect(picks({ frequencyPenalty: -1 }, [1.5, 2, 0], 3)).toEqual([1, 1, 1])
  })

  it('values outside −2…2 are refused, naming the penalty', () => {
    expect(() => createSampler({ presencePenalty: 3 })).toThrow(/presence penalty must be a number from -2 to 2, got 3/)
    expect(() => createSampler({ frequencyPenalty: Number.NaN })).toThrow(/frequency penalty/)
  })
})

/** The distribution the sampler must draw from, by a plain sort of every token (ties: lower id first). */
function expected (logits: Float32Array, { temperature = 1, topK = 0, topP = 1 }: SamplingOptions): Map<number, number> {
  let ids = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a])
  if (topK > 0) ids = ids.slice(0, topK)
  const weights = ids.map(id => Math.exp((logits[id] - logits[ids[0]]) / temperature))
  const total = weights.reduce((a, b) => a + b, 0)
  let kept = ids.length
  let mass = 0
  for (let i = 0; i < ids.length && topP < 1; i++) {
    mass += weights[i]
    if (mass >= topP * total) { kept = i + 1; break }
  }
  const keptTotal = weights.slice(0, kept).reduce((a, b) => a + b, 0)
  return new Map(ids.slice(0, kept).map((id, i) => [id, weights[i] / keptTotal]))
}

/** How often each token was drawn in `draws` samples of the same logits. */
function frequencies (logits: Float32Array, options: SamplingOptions, draws: number): Map<number, number> {
  const sampler = createSampler({ ...options, seed: 7 })
  const counts = new Map<number, number>()
  for (let i = 0; i < draws; i++) {
    const id = sampler.sample(logits.slice(), [])
    counts.set(id, (counts.get(id) ?? 0) + 1 / draws)
  }
  return counts
}

describe('temperature, top-k and top-p', () => {
  const random = seededRandom(3)
  const vocab = Float32Array.from({ length: 1000 }, () => random() * 6 - 3)
  const cases: SamplingOptions[] = [
    { temperature: 0.7 },
    { temperature: 1, topK: 5 },
    { temperature: 0.5, topP: 0.9 },
    { temperature: 1.2, topK: 50, topP: 0.5 },
    { temperature: 0.8, topK: 5000 }
  ]
  for (const options of cases) {
    it(`draws from the sorted distribution: ${JSON.stringify(options)}`, () => {
      const want = expected(vocab, options)
      const got = frequencies(vocab, options, 10000)
      for (const id of got.keys()) expect(want.has(id), `token ${id} is outside the kept set`).toBe(true)
      for (const [id, p] of want) expect(Math.abs((got.get(id) ?? 0) - p), `token ${id}`).toBeLessThan(0.02)
    })
  }

  it('equal logits: top-k keeps the lowest ids, top-p as many as its mass needs', () => {
    const flat = new Float32Array(100)
    expect([...frequencies(flat, { temperature: 1, topK: 3 }, 3000).keys()].sort((a, b) => a - b)).toEqual([0, 1, 2])
    expect([...frequencies(flat, { temperature: 1, topP: 0.05 }, 3000).keys()].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4])
    // ties below zero, and −0 against 0 (equal: the lower id wins)
    const ids = (logits: number[], options: SamplingOptions): number[] => [...frequencies(Float32Array.from(logits), options, 2000).keys()].sort((a, b) => a - b)
    expect(ids([-2, -1, -1, -2, 0.5, -3], { temperature: 1, topK: 3 })).toEqual([1, 2, 4])
    expect(ids([-5, -0, 0, -5], { temperature: 1, topK: 1 })).toEqual([1])
    expect(ids([-4, -1, -1, -4, -1], { temperature: 0.01, topP: 0.5 })).toEqual([1, 2])
  })

  it('the same seed gives the same draws', () => {
    const draw = (): number[] => {
      const sampler = createSampler({ temperature: 0.9, topP: 0.95, seed: 11 })
      return Array.from({ length: 50 }, () => sampler.sample(vocab.slice(), []))
    }
    expect(draw()).toEqual(draw())
  })
})
