// A small GGUF (v3) writer: metadata key/values, tensor infos, then the tensors' data, each aligned,
// written tensor by tensor so a 1 B-parameter model never sits in memory whole. Tensors are F32,
// F16, or quantized in GGML's block layouts: Q8_0 (32 int8 + an f16 scale: 34 bytes per block) and
// Q4_0 (32 4-bit values + an f16 scale: 18 bytes per block). The format is described in
// https://github.com/ggml-org/ggml/blob/master/docs/gguf.md; the quantizers follow ggml's
// quantize_row_q8_0_ref / quantize_row_q4_0_ref.
import { closeSync, openSync, renameSync, rmSync, writeSync } from 'node:fs'
import { f32ToF16 } from '@minga/p2p'

export const GGUF_MAGIC = 0x46554747 // "GGUF" little-endian
export const GGUF_VERSION = 3
export const GGUF_ALIGNMENT = 32
export const QK = 32 // values per Q4_0/Q8_0 block

/** ggml_type ids of the tensor types this writer produces. */
export enum GgmlType { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8 }

/** Metadata value types (gguf_metadata_value_type). */
enum ValueType { UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7, STRING = 8, ARRAY = 9 }

export type GgufValue =
  | { type: 'u32', value: number }
  | { type: 'i32', value: number }
  | { type: 'f32', value: number }
  | { type: 'bool', value: boolean }
  | { type: 'string', value: string }
  | { type: 'string[]', value: string[] }
  | { type: 'f32[]', value: Float32Array | number[] }
  | { type: 'i32[]', value: Int32Array | number[] }

export interface GgufTensor {
  name: string
  /** GGUF order: ne[0] is the innermost (contiguous) dimension, i.e. the reverse of a row-major shape. */
  dims: number[]
  type: GgmlType
  /** The tensor's values, row-major, as f32; called once, when its data is written. */
  values: () => Float32Array
}

export function tensorBytes (type: GgmlType, count: number): number {
  switch (type) {
    case GgmlType.F32: return 4 * count
    case GgmlType.F16: return 2 * count
    case GgmlType.Q8_0: return (count / QK) * (2 + QK)
    case GgmlType.Q4_0: return (count / QK) * (2 + QK / 2)
  }
}

// ---------------------------------------------------------------------------------------------
// f16 and the block quantizers

const one = new Float32Array(1)
const oneHalf = new Uint16Array(1)

/** IEEE half-precision bits of x, rounded to nearest even (p2p's f16 conversion, as ggml's GGML_FP32_TO_FP16). */
export function toHalf (x: number): number {
  one[0] = x
  f32ToF16(one, oneHalf)
  return oneHalf[0]
}

function encodeF16 (values: Float32Array): Uint8Array {
  const out = new Uint16Array(values.length)
  f32ToF16(values, out)
  return new Uint8Array(out.buffer)
}

/** C's roundf: halves away from zero. */
const roundAway = (x: number): number => (x < 0 ? -Math.round(-x) : Math.round(x))

export function quantizeQ8_0 (values: Float32Array): Uint8Array {
  const blocks = values.length / QK
  const out = new Uint8Array(blocks * (2 + QK))
  const view = new DataView(out.buffer)
  for (let b = 0; b < blocks; b++) {
    const from = b * QK
    let amax = 0
    for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(values[from + j]))
    const d = amax / 127
    const id = d !== 0 ? 1 / d : 0
    const at = b * (2 + QK)
    view.setUint16(at, toHalf(d), true)
    for (let j = 0; j < QK; j++) view.setInt8(at + 2 + j, roundAway(values[from + j] * id))
  }
  return out
}

export function quantizeQ4_0 (values: Float32Array): Uint8Array {
  const blocks = values.length / QK
  const out = new Uint8Array(blocks * (2 + QK / 2))
  const view = new DataView(out.buffer)
  for (let b = 0; b < blocks; b++) {
    const from = b * QK
    // the value of largest magnitude, with its sign, maps to −8: the scale may be negative
    let amax = 0
    let max = 0
    for (let j = 0; j < QK; j++) {
      const v = values[from + j]
      if (Math.abs(v) > amax) { amax = Math.abs(v); max = v }
    }
    const d = max / -8
    const id = d !== 0 ? 1 / d : 0
    const at = b * (2 + QK / 2)
    view.setUint16(at, toHalf(d), true)
    // low nibbles hold values 0–15 of the block, high nibbles 16–31
    for (let j = 0; j < QK / 2; j++) {
      const lo = Math.min(15, Math.trunc(values[from + j] * id + 8.5))
      const hi = Math.min(15, Math.trunc(values[from + QK / 2 + j] * id + 8.5))
      out[at + 2 + j] = lo | (hi << 4)
    }
  }
  return out
}

function encodeTensor (type: GgmlType, values: Float32Array): Uint8Array {
  switch (type) {
    case GgmlType.F32: return new Uint8Array(values.buffer, values.byteOffset, values.byteLength)
    case GgmlType.F16: return encodeF16(values)
    case GgmlType.Q8_0: return quantizeQ8_0(values)
    case GgmlType.Q4_0: return quantizeQ4_0(values)
  }
}

// ---------------------------------------------------------------------------------------------
// The file

/** Little-endian bytes of the header: grows as it is written. */
class ByteSink {
  private buf = new Uint8Array(1 << 16)
  private view = new DataView(this.buf.buffer)
  length = 0

  private room (n: number): void {
    if (this.length + n <= this.buf.length) return
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.length + n))
    next.set(this.buf.subarray(0, this.length))
    this.buf = next
    this.view = new DataView(next.buffer)
  }

  u32 (v: number): void { this.room(4); this.view.setUint32(this.length, v, true); this.length += 4 }
  i32 (v: number): void { this.room(4); this.view.setInt32(this.length, v, true); this.length += 4 }
  f32 (v: number): void { this.room(4); this.view.setFloat32(this.length, v, true); this.length += 4 }
  u64 (v: number): void { this.room(8); this.view.setBigUint64(this.length, BigInt(v), true); this.length += 8 }
  u8 (v: number): void { this.room(1); this.buf[this.length++] = v }
  string (s: string): void {
    const bytes = Buffer.from(s, 'utf8')
    this.u64(bytes.length)
    this.room(bytes.length)
    this.buf.set(bytes, this.length)
    this.length += bytes.length
  }

  bytes (): Uint8Array { return this.buf.subarray(0, this.length) }
}

function writeValue (sink: ByteSink, v: GgufValue): void {
  switch (v.type) {
    case 'u32': sink.u32(ValueType.UINT32); sink.u32(v.value); break
    case 'i32': sink.u32(ValueType.INT32); sink.i32(v.value); break
    case 'f32': sink.u32(ValueType.FLOAT32); sink.f32(v.value); break
    case 'bool': sink.u32(ValueType.BOOL); sink.u8(v.value ? 1 : 0); break
    case 'string': sink.u32(ValueType.STRING); sink.string(v.value); break
    case 'string[]':
      sink.u32(ValueType.ARRAY); sink.u32(ValueType.STRING); sink.u64(v.value.length)
      for (const s of v.value) sink.string(s)
      break
    case 'f32[]':
      sink.u32(ValueType.ARRAY); sink.u32(ValueType.FLOAT32); sink.u64(v.value.length)
      for (const x of v.value) sink.f32(x)
      break
    case 'i32[]':
      sink.u32(ValueType.ARRAY); sink.u32(ValueType.INT32); sink.u64(v.value.length)
      for (const x of v.value) sink.i32(x)
      break
  }
}

const align = (n: number): number => Math.ceil(n / GGUF_ALIGNMENT) * GGUF_ALIGNMENT

/**
 * Writes a GGUF file at `path` (through a temporary name, renamed when complete). `onTensor` is
 * told after each tensor, for progress.
 */
export function writeGguf (path: string, metadata: Record<string, GgufValue>, tensors: GgufTensor[], onTensor?: (index: number, name: string) => void): number {
  const header = new ByteSink()
  header.u32(GGUF_MAGIC)
  header.u32(GGUF_VERSION)
  header.u64(tensors.length)
  const kvs = Object.entries({ ...metadata, 'general.alignment': { type: 'u32', value: GGUF_ALIGNMENT } as GgufValue })
  header.u64(kvs.length)
  for (const [key, value] of kvs) {
    header.string(key)
    writeValue(header, value)
  }
  let offset = 0
  const sizes: number[] = []
  for (const t of tensors) {
    const count = t.dims.reduce((a, b) => a * b, 1)
    if (t.type !== GgmlType.F32 && t.type !== GgmlType.F16 && t.dims[0] % QK !== 0) throw new Error(`tensor ${t.name}: ne[0] = ${t.dims[0]} is not a multiple of ${QK}`)
    header.string(t.name)
    header.u32(t.dims.length)
    for (const d of t.dims) header.u64(d)
    header.u32(t.type)
    header.u64(offset)
    sizes.push(tensorBytes(t.type, count))
    offset = align(offset + sizes[sizes.length - 1])
  }

  const tmp = `${path}.${process.pid}.tmp`
  const fd = openSync(tmp, 'w')
  try {
    let position = 0
    const write = (bytes: Uint8Array): void => {
      for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done, bytes.length - done, position + done)
      position += bytes.length
    }
    const pad = (): void => { if (position % GGUF_ALIGNMENT !== 0) write(new Uint8Array(align(position) - position)) }
    write(header.bytes())
    pad()
    tensors.forEach((t, i) => {
      const values = t.values()
      const count = t.dims.reduce((a, b) => a * b, 1)
      if (values.length !== count) throw new Error(`tensor ${t.name}: ${values.length} values for dims [${t.dims.join(', ')}]`)
      const bytes = encodeTensor(t.type, values)
      if (bytes.length !== sizes[i]) throw new Error(`tensor ${t.name}: encoded ${bytes.length} bytes, expected ${sizes[i]}`)
      write(bytes)
      pad()
      onTensor?.(i, t.name)
    })
    closeSync(fd)
    renameSync(tmp, path)
    return position
  } catch (err) {
    try { closeSync(fd) } catch {}
    rmSync(tmp, { force: true })
    throw err
  }
}
