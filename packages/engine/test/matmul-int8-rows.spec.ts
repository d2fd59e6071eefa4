// Per-row int8 linears (ROW_INT8: uint8 weights; ROW_INT7: int8 weights within [-64, 63]): per-row
// weight quantization, and the integer matmul onnxruntime runs for them, against a plain-TypeScript
// integer reference; a row's result must not depend on its batch.
import * as ort from 'onnxruntime-node'
import { describe, expect, it } from 'vitest'
import { seededRandom } from '../src/index.ts'
import { quantizePerRow, type RowQuantized } from '../src/quantize.ts'
import { rowsLinearModel } from './helpers.ts'

const n = 48
const k = 160
const random = seededRandom(8)
const weight = Float32Array.from({ length: n * k }, (_, i) => i % 11 === 0 ? 0 : (random() * 2 - 1) * (1 + (i % n) / 8))
const buffers = (): RowQuantized => ({ data: new Uint8Array(n * k), scales: new Float32Array(n), zeroPoints: new Uint8Array(n) })

const formats = [
  { name: 'uint8 (ROW_INT8)', int7: false, range: [0, 255] },
  { name: 'int7 (ROW_INT7)', int7: true, range: [-64, 63] }
]

describe.each(formats)('per-row weights, $name', ({ int7, range: [low, high] }) => {
  const rows = quantizePerRow(weight, n, k, buffers(), int7)
  // values and zero points as numbers: int7's bytes are int8
  const values = int7 ? new Int8Array(rows.data.buffer, rows.data.byteOffset, rows.data.length) : rows.data
  const zeroPoints = int7 ? new Int8Array(rows.zeroPoints.buffer, rows.zeroPoints.byteOffset, rows.zeroPoints.length) : rows.zeroPoints

  it('keeps 0 exact, stays in range, and every weight within half a step of its row', () => {
    for (let row = 0; row < n; row++) {
      const scale = rows.scales[row]
      for (let i = 0; i < k; i++) {
        const w = weight[row * k + i]
        const v = values[row * k + i]
        expect(v).toBeGreaterThanOrEqual(low)
        expect(v).toBeLessThanOrEqual(high)
        expect(Math.abs((v - zeroPoints[row]) * scale - w)).toBeLessThanOrEqual(scale / 2 + 1e-7)
        if (w === 0) expect(v).toBe(zeroPoints[row])
      }
    }
  })

  it('names buffers too small for the rows', () => {
    expect(() => quantizePerRow(weight, n, k, { data: new Uint8Array(k), scales: new Float32Array(n), zeroPoints: new Uint8Array(n) }, int7))
      .toThrow(/too small for 48 rows of 160/)
  })

  /** What the graph computes, in integers: x's row quantized symmetrically to ±127, times (w - zero point). */
  function reference (x: Float32Array): Float64Array {
    const out = new Float64Array(n)
    const rowScale = Math.max(x.reduce((m, v) => Math.max(m, Math.abs(v)), 0) / 127, 1e-30)
    const q = Array.from(x, v => Math.round(v / rowScale))
    for (let j = 0; j < n; j++) {
      let sum = 0
      for (let c = 0; c < k; c++) sum += q[c] * (values[j * k + c] - zeroPoints[j])
      out[j] = sum * rows.scales[j] * rowScale
    }
    return out
  }

  it('runs as an integer matmul equal to the reference, each row of a batch of 8 equal to that row alone', async () => {
    const session = await ort.InferenceSession.create(rowsLinearModel(rows, k, n, 'm', int7))
    const m = 8
    const x = Float32Array.from({ length: m * k }, (_, i) => (random() * 2 - 1) * (1 + Math.floor(i / k)))
    x.fill(0, 3 * k, 4 * k) // an all-zero row gives zeros, not NaN
    const batch = (await session.run({ x: new ort.Tensor('float32', x, [m, k]) })).y.data as Float32Array
    for (let r = 0; r < m; r++) {
      const row = x.subarray(r * k, (r + 1) * k)
      const alone = (await session.run({ x: new ort.Tensor('float32', row.slice(), [1, k]) })).y.data as Float32Array
      expect(Array.from(batch.subarray(r * n, (r + 1) * n))).toEqual(Array.from(alone))
      const expected = reference(row)
      for (let j = 0; j < n; j++) expect(alone[j]).toBeCloseTo(expected[j], 4)
    }
    await session.release()
  })
})
