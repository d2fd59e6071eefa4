// One prepared layer's weights file. As the layer's graphs are built it declares each initializer here,
// which gives it a page-aligned place in the file (ORT reads it from there as external data) and
// remembers how to fill it. `write` then fills the file from the checkpoint a slice of rows at a
// time, so preparing a layer never holds more than one slice and one output tensor in memory.
import { closeSync, ftruncateSync, openSync, writeFileSync, writeSync } from 'node:fs'
import { GraphBuilder, type DataType } from '../graph/onnx.ts'
import type { LayerWeights, LinearTensors } from '../graph/span-graph.ts'
import { fitFormat, isRowFormat, quantizeBlockwise, quantizedBuffers, quantizedLayout, quantizePerRow, type BlockFormat, type QuantFormat } from '../quantize.ts'
import type { SafetensorsCheckpoint } from '../safetensors.ts'

const ALIGN = 4096
/**
 * Values per slice read from the checkpoint (1 MiB as f32). Each weight's slices go through one
 * buffer and one quantized output: with a new 16 MiB slice and outputs each time, the allocator kept
 * 50–100 MiB of them in a client that had prepared the TinyLlama-shaped head, for as long as it ran.
 */
const SLICE_VALUES = 1 << 18

type Source = { name: string, rows: number }

type Recipe =
  | { kind: 'vector', offset: number, sources: Source[] }
  | { kind: 'values', offset: number, data: Float32Array }
  | { kind: 'f32-linear', offset: number, sources: Source[], n: number, k: number }
  | { kind: 'quantized-linear', format: BlockFormat, qweight: number, scales: number, zeroPoints?: number, sources: Source[], k: number }
  | { kind: 'int8-rows-linear', int7: boolean, weight: number, scales: number, zeroPoints: number, sources: Source[], n: number, k: number }

export class LayerFile implements LayerWeights {
  /** The graph being built (a layer has two: see startGraph). */
  graph = new GraphBuilder()
  /** Size of the weights file. */
  bytes = 0
  /** Bytes of the tensors alone (the file pads each to a page). */
  tensorBytes = 0
  private readonly recipes: Recipe[] = []

  /** `format`: of the linear weights (undefined: f32); `location`: the weights file's name, relative to the graph file. */
  constructor (private readonly format: QuantFormat | undefined, private readonly location: string) {}

  startGraph (): GraphBuilder {
    this.graph = new GraphBuilder()
    return this.graph
  }

  vector (name: string, sources: Source[]): string {
    const length = sources.reduce((n, s) => n + s.rows, 0)
    this.recipes.push({ kind: 'vector', offset: this.place(name, 'float32', [length], 4 * length), sources })
    return name
  }

  values (name: string, dims: number[], data: Float32Array): string {
    this.recipes.push({ kind: 'values', offset: this.place(name, 'float32', dims, 4 * dims.reduce((a, b) => a * b, 1)), data })
    return name
  }

  linear (name: string, sources: Source[], k: number): LinearTensors {
    const n = sources.reduce((total, s) => total + s.rows, 0)
    if (this.format == null) {
      const weight = `${name}.weight`
      this.recipes.push({ kind: 'f32-linear', offset: this.place(weight, 'float32', [k, n], 4 * k * n), sources, n, k })
      return { format: undefined, weight }
    }
    if (isRowFormat(this.format)) {
      const names = { weight: `${name}.weight`, scales: `${name}.scales`, zeroPoints: `${name}.zero_points` }
      const int7 = this.format.int7 === true
      this.recipes.push({
        kind: 'int8-rows-linear',
        int7,
        weight: this.place(names.weight, int7 ? 'int8' : 'uint8', [k, n], k * n),
        scales: this.place(names.scales, 'float32', [n], 4 * n),
        zeroPoints: this.place(names.zeroPoints, int7 ? 'int8' : 'uint8', [n], n),
        sources,
        n,
        k
      })
      return { format: this.format, ...names }
    }
    const format = fitFormat(this.format, k)
    const { blocksPerRow, blobBytes, zeroPointBytesPerRow } = quantizedLayout(format, k)
    const names = { qweight: `${name}.qweight`, scales: `${name}.scales`, zeroPoints: format.zeroPoints ? `${name}.zero_points` : undefined }
    this.recipes.push({
      kind: 'quantized-linear',
      format,
      qweight: this.place(names.qweight, 'uint8', [n, blocksPerRow, blobBytes], n * blocksPerRow * blobBytes),
      scales: this.place(names.scales, 'float32', [n * blocksPerRow], 4 * n * blocksPerRow),
      zeroPoints: names.zeroPoints == null ? undefined : this.place(names.zeroPoints, 'uint8', [n * zeroPointBytesPerRow], n * zeroPointBytesPerRow),
      sources,
      k
    })
    return { format, ...names }
  }

  /** Writes the weights file (filled from the checkpoint) and the graphs built over it, each at `paths[its name]`. */
  save (checkpoint: SafetensorsCheckpoint, graphs: Record<string, Uint8Array>, paths: Record<string, string> & { weights: string }): void {
    const fd = openSync(paths.weights, 'w')
    try {
      this.write(checkpoint, fd)
    } finally {
      closeSync(fd)
    }
    for (const [name, bytes] of Object.entries(graphs)) writeFileSync(paths[name], bytes)
  }

  /** Fills the weights file open as `fd` from the checkpoint. */
  write (checkpoint: SafetensorsCheckpoint, fd: number): void {
    ftruncateSync(fd, this.bytes)
    for (const recipe of this.recipes) {
      switch (recipe.kind) {
        case 'values':
          writeAt(fd, recipe.data, recipe.offset)
          break
        case 'vector': {
          let offset = recipe.offset
          for (const { name, rows } of recipe.sources) {
            const values = checkpoint.readShaped(name, [rows])
            writeAt(fd, values, offset)
            offset += values.byteLength
          }
          break
        }
        case 'f32-linear':
          writeF32Linear(checkpoint, fd, recipe)
          break
        case 'quantized-linear':
          writeQuantizedLinear(checkpoint, fd, recipe)
          break
        case 'int8-rows-linear':
          writeInt8RowsLinear(checkpoint, fd, recipe)
          break
      }
    }
  }

  private place (name: string, type: DataType, dims: number[], length: number): number {
    const offset = this.bytes
    this.graph.externalInitializer(name, type, dims, this.location, offset, length)
    this.tensorBytes += length
    this.bytes = Math.ceil((offset + length) / ALIGN) * ALIGN
    return offset
  }
}

/** Each source's rows, a slice at a time into one buffer: (rows [from, from + count) of the stacked matrix, values). */
function * slices (checkpoint: SafetensorsCheckpoint, sources: Source[], k: number): Generator<{ row: number, count: number, values: Float32Array }> {
  const sliceRows = rowsPerSlice(k)
  const buffer = new Float32Array(sliceRows * k)
  let row = 0
  for (const { name, rows } of sources) {
    checkpoint.checkShape(name, [rows, k])
    for (let r = 0; r < rows; r += sliceRows) {
      const count = Math.min(sliceRows, rows - r)
      yield { row: row + r, count, values: checkpoint.readRows(name, r, r + count, buffer) }
    }
    row += rows
  }
}

function rowsPerSlice (k: number): number {
  return Math.max(1, Math.floor(SLICE_VALUES / k))
}

/** MatMul wants [k, n]: the stacked rows are transposed into one output tensor, written once. */
function writeF32Linear (checkpoint: SafetensorsCheckpoint, fd: number, { offset, sources, n, k }: Extract<Recipe, { kind: 'f32-linear' }>): void {
  const out = new Float32Array(k * n)
  for (const { row, count, values } of slices(checkpoint, sources, k)) {
    for (let i = 0; i < count; i++) {
      for (let c = 0; c < k; c++) out[c * n + row + i] = values[i * k + c]
    }
  }
  writeAt(fd, out, offset)
}

/** MatMulNBits' tensors are row-major in n, so each slice of rows quantizes and lands on its own. */
function writeQuantizedLinear (checkpoint: SafetensorsCheckpoint, fd: number, recipe: Extract<Recipe, { kind: 'quantized-linear' }>): void {
  const buffers = quantizedBuffers(recipe.format, recipe.k, rowsPerSlice(recipe.k))
  for (const { row, count, values } of slices(checkpoint, recipe.sources, recipe.k)) {
    const q = quantizeBlockwise(values, count, recipe.k, recipe.format, buffers)
    writeAt(fd, q.data, recipe.qweight + row * (q.data.length / count))
    writeAt(fd, q.scales, recipe.scales + row * (q.scales.byteLength / count))
    if (q.zeroPoints != null && recipe.zeroPoints != null) writeAt(fd, q.zeroPoints, recipe.zeroPoints + row * (q.zeroPoints.length / count))
  }
}

/** Rows gathered before their columns are written out: 4 MiB at k = 2048. */
const ROWS_GROUP_VALUES = 1 << 22

/**
 * The integer matmul packs a [k, n] weight: rows are quantized a slice at a time into a group, and
 * each full group lands as k runs of its width, one per column of the checkpoint's rows (file
 * writes of a whole group's width, not of one slice's).
 */
function writeInt8RowsLinear (checkpoint: SafetensorsCheckpoint, fd: number, { int7, weight, scales, zeroPoints, sources, n, k }: Extract<Recipe, { kind: 'int8-rows-linear' }>): void {
  const sliceRows = rowsPerSlice(k)
  const groupRows = Math.max(sliceRows, Math.floor(ROWS_GROUP_VALUES / k / sliceRows) * sliceRows)
  const group = { data: new Uint8Array(groupRows * k), scales: new Float32Array(groupRows), zeroPoints: new Uint8Array(groupRows) }
  const column = new Uint8Array(groupRows)
  let groupStart = 0
  let groupCount = 0
  const flush = (): void => {
    for (let c = 0; c < k; c++) {
      for (let r = 0; r < groupCount; r++) column[r] = group.data[r * k + c]
      writeAt(fd, column.subarray(0, groupCount), weight + c * n + groupStart)
    }
    writeAt(fd, group.scales.subarray(0, groupCount), scales + 4 * groupStart)
    writeAt(fd, group.zeroPoints.subarray(0, groupCount), zeroPoints + groupStart)
    groupStart += groupCount
    groupCount = 0
  }
  for (const { row, count, values } of slices(checkpoint, sources, k)) {
    if (groupCount + count > groupRows) flush()
    if (groupCount === 0) groupStart = row
    quantizePerRow(values, count, k, { data: group.data.subarray(groupCount * k), scales: group.scales.subarray(groupCount), zeroPoints: group.zeroPoints.subarray(groupCount) }, int7)
    groupCount += count
  }
  if (groupCount > 0) flush()
}

function writeAt (fd: number, data: ArrayBufferView, position: number): void {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done, Math.min(bytes.length - done, 1 << 30), position + done)
}
