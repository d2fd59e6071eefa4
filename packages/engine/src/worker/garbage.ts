// onnxruntime-node returns every output in a new ArrayBuffer, outside V8's heap, and V8 looks for
// dead ones only once such memory has grown by tens of MB: a client head's worker (128 KB of logits
// per token for a 32000-token vocabulary) grew by 30–35 MB in 300 tokens. A scavenge after every few
// MB of outputs frees them while they are young; it costs well under a millisecond.
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

/** Output bytes between scavenges unless the caller says otherwise: a span's steps (~0.6 MB a token for TinyLlama). */
const BYTES_BETWEEN_SCAVENGES = 4 * 2 ** 20

// (--expose-gc reaches contexts made after it is set: hence the new context)
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as (options: { type: 'minor' }) => void
let outputBytes = 0

/**
 * Called before a run that makes `bytes` of outputs, when the earlier runs' outputs are dead: every
 * `between` bytes of them, a scavenge frees them.
 */
export function beforeOutputs (bytes: number, between = BYTES_BETWEEN_SCAVENGES): void {
  outputBytes += bytes
  if (outputBytes < between) return
  outputBytes = 0
  gc({ type: 'minor' })
}
