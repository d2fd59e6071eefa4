// The batch wait's rule: wait for the callers due back within about one batch's run, a little past
// when each is due, and never past the cap; and the pacing a worker keeps for it.
import { describe, expect, it } from 'vitest'
import { BatchPacer, MIN_WAIT_BOUND_MS, sentNow, waitUntil } from '../src/worker/batch-wait.ts'

describe('waitUntil', () => {
  it('waits for a caller due within the last run time, a little past its due time', () => {
    // replied at 100, came back 6 ms after its reply last time: due at 106, waited for until
    // 106 + 1 + 6/4 + 50/4 (a quarter of the last run)
    expect(waitUntil([{ repliedAt: 100, gap: 6 }], 101, 50, 1000)).toBe(121)
  })

  it('does not wait for callers due after the bound, overdue ones, or ones never seen twice', () => {
    expect(waitUntil([{ repliedAt: 100, gap: 80 }], 101, 50, 1000)).toBe(101)
    expect(waitUntil([{ repliedAt: 0, gap: 6 }], 101, 50, 1000)).toBe(101)
    expect(waitUntil([{ repliedAt: 100 }], 101, 50, 1000)).toBe(101)
    expect(waitUntil([], 101, 50, 1000)).toBe(101)
  })

  it('waits for the latest of those due, within the bound', () => {
    const others = [{ repliedAt: 100, gap: 4 }, { repliedAt: 100, gap: 30 }, { repliedAt: 100, gap: 500 }]
    expect(waitUntil(others, 100, 100, 1000)).toBe(130 + 1 + 30 / 4 + 100 / 4)
    // a caller due at the bound's edge is waited for, but not past it
    expect(waitUntil([{ repliedAt: 100, gap: 49 }], 100, 50, 1000)).toBe(150)
  })

  it('bounds the wait by the cap, and by MIN_WAIT_BOUND_MS when runs are very short', () => {
    expect(waitUntil([{ repliedAt: 100, gap: 30 }], 100, 50, 10)).toBe(100)
    expect(waitUntil([{ repliedAt: 100, gap: 8 }], 100, 50, 10)).toBe(110)
    expect(waitUntil([{ repliedAt: 100, gap: 1 }], 100, 0.2, 1000)).toBe(100 + MIN_WAIT_BOUND_MS)
    expect(waitUntil([{ repliedAt: 100, gap: 1 }], 100, 0.2, 0)).toBe(100)
  })
})

describe('BatchPacer', () => {
  // (runs of 400 ms: a caller is waited for until 100 ms past due, far more than the test takes)
  const RUN_MS = 400

  it('learns each caller\'s gap from its stamped requests, and waits for the others due', () => {
    const pacer = new BatchPacer<string>(1000)
    pacer.answered(['a', 'b'], performance.now() - RUN_MS)
    // before their second requests nobody's gap is known: no wait
    let since = performance.now()
    expect(pacer.waitUntil(new Set(['a']), since)).toBe(since)
    pacer.arrived('a', sentNow())
    pacer.arrived('b', sentNow())
    pacer.answered(['a', 'b'], performance.now() - RUN_MS)
    // a is back; b came back at once last time, so it is due now and worth waiting for
    pacer.arrived('a', sentNow())
    since = performance.now()
    const until = pacer.waitUntil(new Set(['a']), since)
    expect(until).toBeGreaterThan(since)
    expect(until).toBeLessThanOrEqual(since + RUN_MS)
    // both in: nobody else to wait for; a caller that cannot join is not waited for either
    expect(pacer.waitUntil(new Set(['a', 'b']), since)).toBe(since)
    expect(pacer.waitUntil(new Set(['a']), since, caller => caller !== 'b')).toBe(since)
    pacer.forget('b')
    expect(pacer.waitUntil(new Set(['a']), since)).toBe(since)
  })

  it('never waits with a cap of 0', () => {
    const pacer = new BatchPacer<string>(0)
    pacer.answered(['a', 'b'], performance.now() - RUN_MS)
    pacer.arrived('b', sentNow())
    pacer.answered(['b'], performance.now() - RUN_MS)
    const since = performance.now()
    expect(pacer.waitUntil(new Set(['a']), since)).toBe(since)
  })
})
