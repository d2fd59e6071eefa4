// A server killed mid-generation: the client re-routes, replays the history and finishes with
// exactly the uninterrupted output (greedy and seeded sampling), 20 trials.
import { expect, it } from 'vitest'
import { runFailoverTrials } from '../scripts/failover-trials.ts'
import { STORIES } from '../packages/engine/test/helpers.ts'

it('20 trials with a server killed (SIGKILL) at a random step all complete with identical output', async () => {
  const results = await runFailoverTrials({ modelDir: STORIES, trials: 20, seed: 20 })
  expect(results).toHaveLength(20)
  for (const r of results) {
    expect(r, `trial ${r.trial}`).toMatchObject({ identical: true })
    expect(r.failovers).toBeGreaterThanOrEqual(1)
  }
  expect(results.some(r => r.sampled)).toBe(true)
}, 600_000) // a bound for a starved machine; about 2–4 minutes on a quiet one
