// Quantization formats: block sizes fitted to a weight's width, and symmetric blocks (no zero points).
import { describe, expect, it } from 'vitest'
import { seededRandom } from '../src/index.ts'
import { fitFormat, QUANT_FORMATS, quantizeBlockwise, type BlockFormat } from '../src/quantize.ts'

describe('fitFormat', () => {
  const b128: BlockFormat = { bits: 4, blockSize: 128, zeroPoints: false }
  it.each([
    { k: 2048, blockSize: 128 }, // real widths are multiples of 128
    { k: 5632, blockSize: 128 },
    { k: 64, blockSize: 64 }, // stories260k's hidden: one block, no padding
    { k: 172, blockSize: 64 }, // its FFN: 192 stored (block 128 would store 256)
    { k: 70, blockSize: 16 }
  ])('stores width $k in blocks of $blockSize', ({ k, blockSize }) => {
    expect(fitFormat(b128, k)).toEqual({ ...b128, blockSize })
  })
})

describe('quantizeBlockwise', () => {
  it.each([4, 8] as const)('symmetric %i-bit blocks keep 0 exact, store no zero points and stay within half a step', (bits) => {
    const format: BlockFormat = { bits, blockSize: 64, zeroPoints: false }
    const n = 5
    const k = 100 // a ragged last block, padded with zeros
    const random = seededRandom(bits)
    const weight = Float32Array.from({ length: n * k }, (_, i) => i % 7 === 0 ? 0 : random() * 2 - 1)
    const q = quantizeBlockwise(weight, n, k, format)
    expect(q.zeroPoints).toBeUndefined()
    const half = 1 << (bits - 1)
    const blob = (format.blockSize * bits) / 8
    for (let row = 0; row < n; row++) {
      for (let i = 0; i < q.blocksPerRow * format.blockSize; i++) {
        const block = Math.floor(i / format.blockSize)
        const at = (row * q.blocksPerRow + block) * blob + (bits === 8 ? i % format.blockSize : (i % format.blockSize) >> 1)
        const v = bits === 8 ? q.data[at] : (q.data[at] >> ((i & 1) * 4)) & 15
        expect(v).toBeGreaterThanOrEqual(1) // ±(2^(bits-1) - 1): the range is symmetric
        const scale = q.scales[row * q.blocksPerRow + block]
        const w = i < k ? weight[row * k + i] : 0
        expect(Math.abs((v - half) * scale - w)).toBeLessThanOrEqual(scale / 2 + 1e-7)
        if (w === 0) expect(v).toBe(half)
      }
    }
  })

  it('quantizes each quantization in its own format', () => {
    const q = quantizeBlockwise(new Float32Array(256).fill(0.5), 1, 256, QUANT_FORMATS.int4)
    expect(q.format).toBe(QUANT_FORMATS.int4)
    expect(q.blocksPerRow).toBe(256 / QUANT_FORMATS.int4.blockSize)
  })
})
