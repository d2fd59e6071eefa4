// A fuzz run is reproducible only if its generator is: the same seed, the same sequence, everywhere.
import { expect, it } from 'vitest'
import { Rng } from '../src/index.ts'

it('the same seed gives the same sequence, and another seed another one', () => {
  const draw = (seed: number): number[] => { const rng = new Rng(seed); return Array.from({ length: 64 }, () => rng.u32()) }
  expect(draw(7)).toEqual(draw(7))
  expect(draw(7)).not.toEqual(draw(8))
  expect(new Set(draw(1)).size).toBe(64)
})
