// Block-wise asymmetric quantization of a linear layer's weight into ORT's MatMulNBits layout.
// Weight rows are output features ([N, K], the Hugging Face layout), which is what MatMulNBits expects.

export type Quantization = 'none' | 'int8' | 'int4'
export const QUANTIZATIONS: Quantization[] = ['none', 'int8', 'int4']
/** The quantization of spans unless told otherwise: a quarter of f32's memory for a 0.5 % top-1 difference. */
export const DEFAULT_QUANT: Quantization = 'int8'
export const QUANT_BLOCK_SIZE = 32

export interface QuantizedWeight {
  bits: 4 | 8
  n: number
  k: number
  blocksPerRow: number
  /** [N, blocksPerRow, blockSize * bits / 8] */
  data: Uint8Array
  /** [N * blocksPerRow] */
  scales: Float32Array
  /** [N * ceil(blocksPerRow * bits / 8)], 4-bit values packed two per byte, low nibble first */
  zeroPoints: Uint8Array
}

export function quantizeBlockwise (weight: Float32Array, n: number, k: number, bits: 4 | 8): QuantizedWeight {
  const blockSize = QUANT_BLOCK_SIZE
  const blocksPerRow = Math.ceil(k / blockSize)
  const levels = (1 << bits) - 1
  const blobSize = (blockSize * bits) / 8
  const zpPerRow = Math.ceil((blocksPerRow * bits) / 8)
  const data = new Uint8Array(n * blocksPerRow * blobSize)
  const scales = new Float32Array(n * blocksPerRow)
  const zeroPoints = new Uint8Array(n * zpPerRow)

  for (let row = 0; row < n; row++) {
    for (let block = 0; block < blocksPerRow; block++) {
      const from = row * k + block * blockSize
      const to = row * k + Math.min(k, (block + 1) * blockSize)
      // The range always includes 0 so that padding (and exact zeros) stay exact.
      let min = 0
      let max = 0
      for (let i = from; i < to; i++) {
        const w = weight[i]
        if (w < min) min = w
        if (w > max) max = w
      }
      const scale = max > min ? (max - min) / levels : 1
      const zeroPoint = Math.min(levels, Math.max(0, Math.round(-min / scale)))
      scales[row * blocksPerRow + block] = scale
      if (bits === 8) {
        zeroPoints[row * zpPerRow + block] = zeroPoint
      } else {
        zeroPoints[row * zpPerRow + (block >> 1)] |= zeroPoint << ((block & 1) * 4)
      }
      const blob = (row * blocksPerRow + block) * blobSize
      for (let i = 0; i < blockSize; i++) {
        const w = from + i < to ? weight[from + i] : 0
        const q = Math.min(levels, Math.max(0, Math.round(w / scale) + zeroPoint))
        if (bits === 8) data[blob + i] = q
        else data[blob + (i >> 1)] |= q << ((i & 1) * 4)
      }
    }
  }
  return { bits, n, k, blocksPerRow, data, scales, zeroPoints }
}

/**
 * quantizeBlockwise over a weight read `chunkRows` rows at a time, so that the weight's f32 form
 * never exists whole (the client head quantizes a vocab × hidden matrix this way).
 */
export function quantizeByRows (n: number, k: number, bits: 4 | 8, readRows: (from: number, to: number) => Float32Array, chunkRows = 512): QuantizedWeight {
  const blocksPerRow = Math.ceil(k / QUANT_BLOCK_SIZE)
  const dataPerRow = blocksPerRow * QUANT_BLOCK_SIZE * bits / 8
  const zpPerRow = Math.ceil((blocksPerRow * bits) / 8)
  const out: QuantizedWeight = {
    bits, n, k, blocksPerRow,
    data: new Uint8Array(n * dataPerRow),
    scales: new Float32Array(n * blocksPerRow),
    zeroPoints: new Uint8Array(n * zpPerRow)
  }
  for (let first = 0; first < n; first += chunkRows) {
    const count = Math.min(chunkRows, n - first)
    const part = quantizeBlockwise(readRows(first, first + count), count, k, bits)
    out.data.set(part.data, first * dataPerRow)
    out.scales.set(part.scales, first * blocksPerRow)
    out.zeroPoints.set(part.zeroPoints, first * zpPerRow)
  }
  return out
}

/** Bytes of a quantized weight as the graph stores it. */
export function quantizedBytes (q: QuantizedWeight): number {
  return q.data.byteLength + q.scales.byteLength + q.zeroPoints.byteLength
}
