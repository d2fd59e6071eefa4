// OpenAI's presence and frequency penalties: subtracted from the logits of tokens already generated.
import { describe, expect, it } from 'vitest'
import { createSampler } from '../src/index.ts'

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
