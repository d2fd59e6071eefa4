import type { InferenceSession } from 'onnxruntime-node'
import { availableParallelism } from 'node:os'

/** Session options for every engine graph. Spinning is off: several workers take turns on few cores. */
export function sessionOptions (threads?: number): InferenceSession.SessionOptions {
  return {
    intraOpNumThreads: threads ?? availableParallelism(),
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } }
  }
}
