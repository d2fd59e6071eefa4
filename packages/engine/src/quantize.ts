// Quantization of a linear layer's weight. Block-wise into ORT's MatMulNBits layout, asymmetric (a
// zero point per block) or symmetric (none stored: MatMulNBits then takes 2^(bits-1) as every block's
// zero point); weight rows are output features ([N, K], the Hugging Face layout), which is what
// MatMulNBits expects. Or int8 with one scale per output row (graph/matmul-int8-rows.ts).

export type Quantization = 'none' | 'int8' | 'int4'
export const QUANTIZATIONS: Quantization[] = ['none', 'int8', 'int4']
/** The quantization of spans unless told otherwise: a quarter of f32's memory for a 1 % top-1 difference (198/200 on stories260k). */
export const DEFAULT_QUANT: Quantization = 'int8'

/** How a block-quantized weight is stored: MatMulNBits' `bits` and `block_size`, and whether zero points are. */
export interface BlockFormat {
  bits: 4 | 8
  /** Values per block sharing one scale (MatMulNBits: a power of two, at least 16). */
  blockSize: 16 | 32 | 64 | 128 | 256
  /** Asymmetric (min/max range, a zero point per block) or symmetric (scale = max|w| / (2^(bits-1) - 1)). */
  zeroPoints: boolean
}

/**
 * 8 bits per weight with a scale and a zero point per output row, run as an integer matmul over
 * inputs quantized per row (graph/matmul-int8-rows.ts). onnxruntime packs such a weight and releases
 * the original, so it costs its own bytes; MatMulNBits keeps its scales and zero points beside a
 * packed copy that adds per-block sums (6.3 MiB over the 65.0 MiB of the TinyLlama-shaped int8 head).
 */
export interface RowFormat {
  bits: 8
  perRow: true
  /**
   * Weights as int8 within [-64, 63], run as uint8 × int8: VNNI and AMX have kernels for that pair
   * whose cost barely grows with a batch's rows (uint8 × uint8's nearly doubles from 1 row to 8), and
   * 7 bits keep the 16-bit pair sums of kernels without VNNI from saturating, so every CPU computes
   * the same integers. Otherwise uint8 × uint8 over the full 8 bits.
   */
  int7?: true
}

export type QuantFormat = BlockFormat | RowFormat

export const ROW_INT8: RowFormat = { bits: 8, perRow: true }
export const ROW_INT7: RowFormat = { bits: 8, perRow: true, int7: true }

export function isRowFormat (format: QuantFormat): format is RowFormat {
  return 'perRow' in format
}

/**
 * The format of each quantization of the layers, chosen by `pnpm bench:quant` and `pnpm bench:batch`
 * (engine README). int8 per row in 7 bits: against block 128, the TinyLlama-shaped span prefills
 * 1.8× faster, decodes as fast, serves 8 sessions at 1.6× the aggregate, and agrees at 199/200 on
 * stories260k (block 128: 198). int4 keeps block 128, which runs the span 1.2× faster per token than
 * block 32; its zero points stay: without them top-1 agreement with f32 drops more (173 vs 180 of 200
 * on stories260k) for no clear gain in speed.
 */
export const QUANT_FORMATS: { int8: RowFormat, int4: BlockFormat } = {
  int8: ROW_INT7,
  int4: { bits: 4, blockSize: 128, zeroPoints: true }
}

/**
 * The client head's. int8 per row: a client's memory is then its head's bytes and the runtime's,
 * where block 128 added 6.3 MiB of onnxruntime's packing; its matmul (uint8 × uint8, exact on every
 * CPU) is as fast within the noise and agrees at 199/200 on stories260k (README). int4 keeps block 32, at which it picks f32's top-1 at 190/200 positions
 * against 179/200 at block 64/128 (the head's top-1 is what the user sees).
 */
export const HEAD_QUANT_FORMATS: Record<Exclude<Quantization, 'none'>, QuantFormat> = {
  int8: ROW_INT8,
  int4: { bits: 4, blockSize: 32, zeroPoints: true }
}

/** `format` if given (it must have the quantization's bits), else the quantization's own; undefined for f32. */
export function quantFormat (quant: Quantization, format?: QuantFormat): QuantFormat | undefined {
  if (quant === 'none') return undefined
  const own = QUANT_FORMATS[quant]
  if (format == null) return own
  if (format.bits !== own.bits) throw new RangeError(`a ${format.bits}-bit format cannot store ${quant}`)
  if (isRowFormat(format)) return format
  if (!(Number.isInteger(Math.log2(format.blockSize)) && format.blockSize >= 16)) throw new RangeError(`block size ${format.blockSize} is not a power of two ≥ 16`)
  return format
}

/** A short name of a format, e.g. `b128-sym`: part of the prepared folder's name, so formats never mix. */
export function formatLabel (format: QuantFormat | undefined): string {
  if (format == null) return 'f32'
  return isRowFormat(format) ? (format.int7 === true ? 'rows7' : 'rows') : `b${format.blockSize}${format.zeroPoints ? '' : '-sym'}`
}

/**
 * The format a [n, k] weight is stored in: blocks shrink (halving, down to 16) while padding k to a
 * whole number of them would add more than k / 8 zeros, so small widths (stories260k's 64 and 172)
 * are not stored twice over. Real models' widths are multiples of 128 and keep the format's block.
 */
export function fitFormat (format: BlockFormat, k: number): BlockFormat {
  let blockSize = format.blockSize
  while (blockSize > 16 && Math.ceil(k / blockSize) * blockSize - k > k / 8) blockSize /= 2
  return blockSize === format.blockSize ? format : { ...format, blockSize: blockSize as BlockFormat['blockSize'] }
}

export interface QuantizedWeight {
  format: BlockFormat
  n: number
  k: number
  blocksPerRow: number
  /** [N, blocksPerRow, blockSize * bits / 8] */
  data: Uint8Array
  /** [N * blocksPerRow] */
  scales: Float32Array
  /** [N * ceil(blocksPerRow * bits / 8)], 4-bit values packed two per byte, low nibble first; none when symmetric */
  zeroPoints?: Uint8Array
}

/** Sizes of a quantized [n, k] weight's three tensors in `format`. */
export function quantizedLayout (format: BlockFormat, k: number): { blocksPerRow: number, blobBytes: number, zeroPointBytesPerRow: number } {
  const blocksPerRow = Math.ceil(k / format.blockSize)
  return {
    blocksPerRow,
    blobBytes: (format.blockSize * format.bits) / 8,
    zeroPointBytesPerRow: format.zeroPoints ? Math.ceil((blocksPerRow * format.bits) / 8) : 0
  }
}

/** Buffers a quantized weight is written into, each for at least as many rows as the weight has. */
export type QuantizedBuffers = Pick<QuantizedWeight, 'data' | 'scales' | 'zeroPoints'>

/** Buffers for quantizing `rows` rows of width `k` at a time into (quantizeBlockwise's `into`). */
export function quantizedBuffers (format: BlockFormat, k: number, rows: number): QuantizedBuffers {
  const { blocksPerRow, blobBytes, zeroPointBytesPerRow } = quantizedLayout(format, k)
  return {
    data: new Uint8Array(rows * blocksPerRow * blobBytes),
    scales: new Float32Array(rows * blocksPerRow),
    zeroPoints: format.zeroPoints ? new Uint8Array(rows * zeroPointBytesPerRow) : undefined
  }
}

/** Quantizes [n, k] `weight`; into the start of `into` if given (its views are returned), else into new buffers. */
export function quantizeBlockwise (weight: Float32Array, n: number, k: number, format: BlockFormat, into?: QuantizedBuffers): QuantizedWeight {
  const { bits, blockSize } = format
  const { blocksPerRow, blobBytes, zeroPointBytesPerRow } = quantizedLayout(format, k)
  const levels = (1 << bits) - 1
  // Symmetric: q = round(w / scale) + 2^(bits-1) within ±(2^(bits-1) - 1), so the range is symmetric and 0 exact.
  const half = 1 << (bits - 1)
  const buffers = into ?? quantizedBuffers(format, k, n)
  const data = buffers.data.subarray(0, n * blocksPerRow * blobBytes)
  const scales = buffers.scales.subarray(0, n * blocksPerRow)
  const zeroPoints = format.zeroPoints ? buffers.zeroPoints?.subarray(0, n * zeroPointBytesPerRow) : undefined
  if (data.length < n * blocksPerRow * blobBytes || scales.length < n * blocksPerRow || (format.zeroPoints && zeroPoints?.length !== n * zeroPointBytesPerRow)) {
    throw new RangeError(`buffers too small for ${n} rows of ${k} in ${formatLabel(format)}`)
  }
  // 4-bit values are OR-ed into their bytes, which may hold an earlier weight's
  if (bits === 4) { data.fill(0); zeroPoints?.fill(0) }

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
      let scale: number
      let zeroPoint: number
      if (zeroPoints != null) {
        scale = max > min ? (max - min) / levels : 1
        zeroPoint = Math.min(levels, Math.max(0, Math.round(-min / scale)))
        if (bits === 8) zeroPoints[row * zeroPointBytesPerRow + block] = zeroPoint
        else zeroPoints[row * zeroPointBytesPerRow + (block >> 1)] |= zeroPoint << ((block & 1) * 4)
      } else {
        const absMax = Math.max(max, -min)
        scale = absMax > 0 ? absMax / (half - 1) : 1
        zeroPoint = half
      }
      scales[row * blocksPerRow + block] = scale
      const blob = (row * blocksPerRow + block) * blobBytes
      for (let i = 0; i < blockSize; i++) {
        const w = from + i < to ? weight[from + i] : 0
        const q = Math.min(levels, Math.max(0, Math.round(w / scale) + zeroPoint))
        if (bits === 8) data[blob + i] = q
        else data[blob + (i >> 1)] |= q << ((i & 1) * 4)
      }
    }
  }
  return { format, n, k, blocksPerRow, data, scales, zeroPoints }
}

/**
 * quantizeBlockwise over a weight read `chunkRows` rows at a time, so that the weight's f32 form
 * never exists whole.
 */
export function quantizeByRows (n: number, k: number, format: BlockFormat, readRows: (from: number, to: number) => Float32Array, chunkRows = 512): QuantizedWeight {
  const { blocksPerRow, blobBytes, zeroPointBytesPerRow } = quantizedLayout(format, k)
  const out = quantizedBuffers(format, k, n)
  for (let first = 0; first < n; first += chunkRows) {
    const count = Math.min(chunkRows, n - first)
    quantizeBlockwise(readRows(first, first + count), count, k, format, {
      data: out.data.subarray(first * blocksPerRow * blobBytes),
      scales: out.scales.subarray(first * blocksPerRow),
      zeroPoints: out.zeroPoints?.subarray(first * zeroPointBytesPerRow)
    })
  }
  return { format, n, k, blocksPerRow, ...out }
}

/** Bytes of a quantized weight as the graph stores it. */
export function quantizedBytes (q: QuantizedWeight): number {
  return q.data.byteLength + q.scales.byteLength + (q.zeroPoints?.byteLength ?? 0)
}

/**
 * A RowFormat's rows: [rows, k] values with a scale and a zero point per row, as bytes: uint8, or
 * int8's two's complement for `int7` (an Int8Array over the same buffer reads them).
 */
export interface RowQuantized { data: Uint8Array, scales: Float32Array, zeroPoints: Uint8Array }

/**
 * Quantizes `rows` rows of width `k` to 8 bits (uint8), or to 7 (int8 in [-64, 63]) with `int7`, one
 * scale and zero point per row over its [min, max] (which includes 0, so zeros stay exact), into the
 * start of `into`; returns views of what was written.
 */
export function quantizePerRow (weight: Float32Array, rows: number, k: number, into: RowQuantized, int7 = false): RowQuantized {
  if (into.data.length < rows * k || into.scales.length < rows || into.zeroPoints.length < rows) throw new RangeError(`buffers too small for ${rows} rows of ${k}`)
  const [low, high] = int7 ? [-64, 63] : [0, 255]
  const inRange = (q: number): number => Math.min(high, Math.max(low, q))
  for (let row = 0; row < rows; row++) {
    let min = 0
    let max = 0
    for (let i = row * k; i < (row + 1) * k; i++) { min = Math.min(min, weight[i]); max = Math.max(max, weight[i]) }
    const scale = max > min ? (max - min) / (high - low) : 1
    const zeroPoint = inRange(low + Math.round(-min / scale))
    into.scales[row] = scale
    // (& 0xff: an int8 as its byte)
    into.zeroPoints[row] = zeroPoint & 0xff
    for (let i = row * k; i < (row + 1) * k; i++) into.data[i] = inRange(Math.round(weight[i] / scale) + zeroPoint) & 0xff
  }
  return { data: into.data.subarray(0, rows * k), scales: into.scales.subarray(0, rows), zeroPoints: into.zeroPoints.subarray(0, rows) }
}
