// Reads individual tensors from a (possibly sharded) safetensors checkpoint, touching only their bytes:
// a node hosting layers 10–15 of a large checkpoint must not read the rest.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs'
import { join } from 'node:path'
import { ModelLoadError, UnsupportedModelError } from './errors.ts'

export type StoredDType = 'F32' | 'F16' | 'BF16'

export interface TensorEntry {
  file: string
  dtype: StoredDType
  shape: number[]
  begin: number
  end: number
}

const BYTES: Record<StoredDType, number> = { F32: 4, F16: 2, BF16: 2 }

export class SafetensorsCheckpoint {
  /** Bytes read from disk so far, headers included: a span load should read little more than its own tensors. */
  bytesRead = 0
  private readonly tensors = new Map<string, TensorEntry>()
  private readonly fds = new Map<string, number>()
  /** The raw bytes of half-precision rows read `into` a caller's buffer, kept from call to call. */
  private scratch = new Uint8Array(0)

  constructor (readonly modelDir: string) {
    const single = join(modelDir, 'model.safetensors')
    const index = join(modelDir, 'model.safetensors.index.json')
    if (existsSync(single)) {
      this.readHeader(single)
    } else if (existsSync(index)) {
      let weightMap: Record<string, string>
      try {
        weightMap = JSON.parse(readFileSync(index, 'utf8')).weight_map
      } catch (err: any) {
        throw new ModelLoadError(`${index} is not a valid safetensors index: ${err.message}`)
      }
      if (weightMap == null || typeof weightMap !== 'object') throw new ModelLoadError(`${index} has no weight_map`)
      for (const file of new Set(Object.values(weightMap))) this.readHeader(join(modelDir, file))
    } else {
      throw new ModelLoadError(`missing weights in ${modelDir}: neither model.safetensors nor model.safetensors.index.json`)
    }
  }

  /** Every tensor with its file and absolute byte range [begin, end) in that file. */
  entries (): Array<[string, TensorEntry]> {
    return [...this.tensors]
  }

  /** Reads `target.length` raw bytes of a tensor, from `offset` within its data. */
  readRaw (name: string, target: Uint8Array, offset = 0): void {
    const entry = this.entry(name)
    if (offset < 0 || offset + target.length > entry.end - entry.begin) throw new ModelLoadError(`bytes [${offset}, ${offset + target.length}) are outside tensor ${name}`)
    this.readAt(entry.file, target, entry.begin + offset)
  }

  has (name: string): boolean {
    return this.tensors.has(name)
  }

  shape (name: string): number[] {
    return this.entry(name).shape
  }

  /** Reads one tensor and widens it to f32. */
  read (name: string): Float32Array {
    const entry = this.entry(name)
    return this.readRange(entry, 0, entry.end - entry.begin)
  }

  /** Reads a tensor and checks its shape. */
  readShaped (name: string, shape: number[]): Float32Array {
    this.checkShape(name, shape)
    return this.read(name)
  }

  /**
   * Reads rows [from, to) of a tensor (first dimension), widened to f32: big tensors a slice at a time.
   * Into the start of `into` if given (and returned as a view of it), so a loop over slices or tokens
   * reuses one buffer instead of leaving one per call to the garbage collector.
   */
  readRows (name: string, from: number, to: number, into?: Float32Array): Float32Array {
    const entry = this.entry(name)
    const rowBytes = (entry.end - entry.begin) / entry.shape[0]
    const values = (to - from) * rowBytes / BYTES[entry.dtype]
    into ??= new Float32Array(values)
    if (into.length < values) throw new RangeError(`rows [${from}, ${to}) of ${name} are ${values} values, more than the ${into.length} of the buffer given`)
    const out = into.subarray(0, values)
    if (entry.dtype === 'F32') {
      this.readAt(entry.file, new Uint8Array(out.buffer, out.byteOffset, out.byteLength), entry.begin + from * rowBytes)
      return out
    }
    const bytes = values * BYTES[entry.dtype]
    if (this.scratch.length < bytes) this.scratch = new Uint8Array(bytes)
    const raw = this.scratch.subarray(0, bytes)
    this.readAt(entry.file, raw, entry.begin + from * rowBytes)
    widenHalves(new Uint16Array(raw.buffer, 0, values), entry.dtype, out)
    return out
  }

  checkShape (name: string, shape: number[]): void {
    const actual = this.shape(name)
    if (actual.length !== shape.length || actual.some((d, i) => d !== shape[i])) {
      throw new ModelLoadError(`tensor ${name} has shape [${actual}], expected [${shape}] from config.json`)
    }
  }

  close (): void {
    for (const fd of this.fds.values()) closeSync(fd)
    this.fds.clear()
    this.scratch = new Uint8Array(0)
  }

  private entry (name: string): TensorEntry {
    const entry = this.tensors.get(name)
    if (entry == null) throw new ModelLoadError(`tensor ${name} is missing from the checkpoint in ${this.modelDir}`)
    return entry
  }

  private readRange (entry: TensorEntry, from: number, to: number): Float32Array {
    const bytes = new Uint8Array(to - from)
    this.readAt(entry.file, bytes, entry.begin + from)
    return toFloat32(bytes, entry.dtype)
  }

  private readHeader (file: string): void {
    if (!existsSync(file)) throw new ModelLoadError(`missing file ${file}`)
    const lengthBytes = new Uint8Array(8)
    this.readAt(file, lengthBytes, 0)
    const headerLength = Number(new DataView(lengthBytes.buffer).getBigUint64(0, true))
    const fileSize = fstatSync(this.fd(file)).size
    if (headerLength > Math.min(100_000_000, fileSize - 8)) throw new ModelLoadError(`${file} is not a safetensors file (header length ${headerLength})`)
    const headerBytes = new Uint8Array(headerLength)
    this.readAt(file, headerBytes, 8)
    let header: Record<string, any>
    try {
      header = JSON.parse(new TextDecoder().decode(headerBytes))
    } catch (err: any) {
      throw new ModelLoadError(`${file} has a malformed safetensors header: ${err.message}`)
    }
    const dataStart = 8 + headerLength
    for (const [name, info] of Object.entries(header)) {
      if (name === '__metadata__') continue
      const dtype = info?.dtype
      const [begin, end] = info?.data_offsets ?? []
      if (!(dtype in BYTES)) throw new UnsupportedModelError(`tensor ${name} in ${file} has unsupported dtype ${dtype} (supported: F32, F16, BF16)`)
      const count = (info.shape as number[]).reduce((a, b) => a * b, 1)
      if (end - begin !== count * BYTES[dtype as StoredDType] || dataStart + end > fileSize) {
        throw new ModelLoadError(`tensor ${name} in ${file} has inconsistent offsets (file truncated?)`)
      }
      this.tensors.set(name, { file, dtype, shape: info.shape, begin: dataStart + begin, end: dataStart + end })
    }
  }

  private fd (file: string): number {
    let fd = this.fds.get(file)
    if (fd == null) {
      fd = openSync(file, 'r')
      this.fds.set(file, fd)
    }
    return fd
  }

  private readAt (file: string, target: Uint8Array, position: number): void {
    const fd = this.fd(file)
    // readSync moves at most 2 GiB per call.
    for (let done = 0; done < target.length;) {
      const n = readSync(fd, target, done, Math.min(target.length - done, 1 << 30), position + done)
      if (n === 0) throw new ModelLoadError(`${file} ended early (truncated?)`)
      done += n
      this.bytesRead += n
    }
  }
}

function toFloat32 (bytes: Uint8Array, dtype: StoredDType): Float32Array {
  if (dtype === 'F32') return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
  const halves = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2)
  return widenHalves(halves, dtype, new Float32Array(halves.length))
}

function widenHalves (halves: Uint16Array, dtype: 'F16' | 'BF16', out: Float32Array): Float32Array {
  if (dtype === 'BF16') {
    const bits = new Uint32Array(out.buffer, out.byteOffset, halves.length)
    for (let i = 0; i < halves.length; i++) bits[i] = halves[i] << 16
  } else {
    for (let i = 0; i < halves.length; i++) out[i] = halfToFloat(halves[i])
  }
  return out
}

function halfToFloat (h: number): number {
  const sign = h & 0x8000 ? -1 : 1
  const exponent = (h >> 10) & 0x1f
  const fraction = h & 0x3ff
  if (exponent === 0) return sign * fraction * 2 ** -24
  if (exponent === 31) return fraction === 0 ? sign * Infinity : NaN
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15)
}
