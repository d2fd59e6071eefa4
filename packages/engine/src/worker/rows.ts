// A batch's rows: the hidden states of several requests stacked into one [Σ tokens, width] input,
// and the batch's output rows handed back to each request.
import { Transfer } from './rpc.ts'

/** The requests' rows as one array; a single request's is used as it is (no copy). */
export function stackRows (parts: Array<{ hidden: Float32Array, tokens: number }>, width: number): Float32Array {
  if (parts.length === 1) return parts[0].hidden
  const stacked = new Float32Array(parts.reduce((n, part) => n + part.tokens, 0) * width)
  let row = 0
  for (const part of parts) {
    stacked.set(part.hidden, row * width)
    row += part.tokens
  }
  return stacked
}

/**
 * Each request's rows of `out`: written into its `into` buffer if it brought one (null is then its
 * answer), else transferred to the caller: a single request gets `out` itself, several a buffer each.
 */
export function splitRows (out: Float32Array, parts: Array<{ tokens: number, into?: Float32Array }>, width: number): Array<Transfer<Float32Array> | null> {
  if (parts.length === 1 && parts[0].into == null) return [new Transfer(out, [out.buffer as ArrayBuffer])]
  let row = 0
  return parts.map(({ tokens, into }) => {
    const rows = out.subarray(row * width, (row += tokens) * width)
    if (into != null) {
      into.set(rows)
      return null
    }
    const own = rows.slice()
    return new Transfer(own, [own.buffer])
  })
}
