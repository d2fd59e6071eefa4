// The wire fuzzer of @minga/fuzz, at test size: ≥ 10k random and mutated frames against a real
// `minga serve` process while a normal client generates through it.
import { expect, it } from 'vitest'
import { runFuzz, summary, type FuzzReport } from '@minga/fuzz'
import { STORIES } from '../packages/engine/test/helpers.ts'

const FRAMES = 10_000

it(`a live server survives ${FRAMES} fuzzed frames and a concurrent session still equals the local engine`, async () => {
  const report: FuzzReport = await runFuzz({ frames: FRAMES, seed: 20251123, workers: 8, modelDir: STORIES })
  console.log(summary(report))

  // no crash, no hang, a clean shutdown
  expect(report.crashes).toBe(0)
  expect(report.server.stoppedCleanly).toBe(true)
  expect(report.framesSent).toBeGreaterThanOrEqual(FRAMES)
  expect(report.timeouts).toBe(0)
  expect(report.heartbeat.failed).toBe(0)
  // every well-delimited frame got exactly one reply, with the request id, the code its mistake
  // deserves and a message; nothing unanticipated (INTERNAL)
  expect(report.missingReplies).toBe(0)
  expect(report.violationSamples).toEqual([])
  expect(report.violations).toBe(0)
  expect(report.internalErrors).toBe(0)
  expect(report.channelFailures.dialFailed).toBe(0)
  expect(report.channelFailures.resetByServer).toBe(0)
  for (const code of ['BAD_FRAME', 'UNKNOWN_SESSION', 'WRONG_SHAPE', 'WRONG_POSITION', 'TOO_LARGE', 'ACK', 'RESULT']) {
    expect(report.replies[code] ?? 0, `replies ${code}`).toBeGreaterThan(0)
  }
  expect(report.probes.oversizeFrame).toMatch(/^TOO_LARGE, then the stream carried on/)

  // the normal session ran during the fuzz and matched the local engine, and the server still
  // serves afterwards: a fresh generation, and every session slot at full length (nothing leaked)
  expect(report.normal.failures).toEqual([])
  expect(report.normal.overlappedFuzz).toBe(true)
  expect(report.normal.equal).toBe(true)
  expect(report.final.equal).toBe(true)
  expect(report.probes.capacityAfter.opened).toBe(report.probes.capacityAfter.wanted)
  expect(report.ok).toBe(true)
}, 240_000)
