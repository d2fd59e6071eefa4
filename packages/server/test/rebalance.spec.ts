// The rebalancing rule: move only to cover a gap or to make the weakest block clearly faster.
import { describe, expect, it } from 'vitest'
import { planMove } from '../src/rebalance.ts'

describe('planMove', () => {
  it('moves to blocks that have no server when leaving opens no gap', () => {
    const plan = planMove(5, { start: 0, end: 3, throughput: 100 }, [{ start: 0, end: 3, throughput: 100 }])
    expect(plan).toEqual({ start: 2, end: 5, reason: 'blocks 3–4 had no server' })
  })

  it('stays when leaving would uncover its own blocks', () => {
    expect(planMove(5, { start: 0, end: 3, throughput: 100 }, [{ start: 2, end: 4, throughput: 100 }])).toBeUndefined()
  })

  it('stays when the gain is below the margin, moves when it is clear', () => {
    const others = [{ start: 0, end: 5, throughput: 100 }, { start: 0, end: 2, throughput: 100 }]
    // self on [0,2): weakest block 100; moving to [2,4) or [3,5) leaves block 4 or 2 at 100: no gain
    expect(planMove(5, { start: 0, end: 2, throughput: 100 }, others)).toBeUndefined()
    const slow = [{ start: 0, end: 5, throughput: 10 }, { start: 0, end: 3, throughput: 100 }]
    // self on [0,3) too: blocks 3–4 have 10 tokens/s; moving to [2,5) makes the weakest 110
    expect(planMove(5, { start: 0, end: 3, throughput: 100 }, slow)).toMatchObject({ start: 2, end: 5 })
  })

  it('stays where it is when that is already the best window', () => {
    expect(planMove(5, { start: 2, end: 5, throughput: 100 }, [{ start: 0, end: 3, throughput: 100 }])).toBeUndefined()
  })
})
