// Which processors the onnxruntime pool's own threads are pinned to: the allowed ones after the
// first, left to the caller's thread, and none where pinning could only make threads wait.
import { describe, expect, it } from 'vitest'
import { allowedProcessors, poolAffinities, sessionOptions } from '../src/worker/ort-options.ts'

describe('allowedProcessors', () => {
  it('reads Cpus_allowed_list as 0-based processors', () => {
    expect(allowedProcessors('Name:\tnode\nCpus_allowed_list:\t0-1\nMems_allowed:\t1\n')).toEqual([0, 1])
    expect(allowedProcessors('Cpus_allowed_list:\t0,2-3,7\n')).toEqual([0, 2, 3, 7])
  })

  it('is undefined for a status without the line or with one it cannot read', () => {
    expect(allowedProcessors('Name:\tnode\n')).toBeUndefined()
    expect(allowedProcessors('Cpus_allowed_list:\t0-x\n')).toBeUndefined()
  })
})

describe('poolAffinities', () => {
  it('pins threads-1 pool threads, 1-based, on the processors after the first', () => {
    expect(poolAffinities(2, [0, 1])).toBe('2')
    expect(poolAffinities(3, [0, 2, 3, 7])).toBe('3;4')
  })

  it('pins nothing for one thread, more threads than processors, or unknown processors', () => {
    expect(poolAffinities(1, [0, 1])).toBeUndefined()
    expect(poolAffinities(3, [0, 1])).toBeUndefined()
    expect(poolAffinities(2, undefined)).toBeUndefined()
  })
})

describe('sessionOptions', () => {
  it('keeps spinning off and sets the thread count asked for', () => {
    const options = sessionOptions(1)
    expect(options.intraOpNumThreads).toBe(1)
    expect(options.extra).toMatchObject({ session: { intra_op: { allow_spinning: '0' } } })
    expect(JSON.stringify(options.extra)).not.toContain('affinities')
  })
})
