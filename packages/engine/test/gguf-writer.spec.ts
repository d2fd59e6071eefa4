// The benchmark's GGUF writer (packages/engine/bench/gguf-writer.ts): f16 bits, GGML's Q8_0/Q4_0
// block layouts decoded back, and the file layout llama.cpp reads (header, metadata, aligned data).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { GgmlType, GGUF_ALIGNMENT, quantizeQ4_0, quantizeQ8_0, toHalf, writeGguf } from '../bench/gguf-writer.ts'
import { seededRandom } from '../src/index.ts'

function fromHalf (h: number): number {
  const sign = (h & 0x8000) !== 0 ? -1 : 1
  const exp = (h >> 10) & 0x1f
  const mant = h & 0x3ff
  if (exp === 0) return sign * mant * 2 ** -24
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN
  return sign * (1 + mant / 1024) * 2 ** (exp - 15)
}

const random = seededRandom(5)
const values = Float32Array.from({ length: 256 }, () => (random() - 0.5) * 3)
const dir = mkdtempSync(join(tmpdir(), 'minga-gguf-'))
afterAll(() => { rmSync(dir, { recursive: true, force: true }) })

describe('gguf writer', () => {
  it('rounds f32 to f16 bits as IEEE does', () => {
    expect(toHalf(1)).toBe(0x3c00)
    expect(toHalf(-2)).toBe(0xc000)
    expect(toHalf(65504)).toBe(0x7bff)
    expect(toHalf(1e6)).toBe(0x7c00)
    expect(toHalf(2 ** -24)).toBe(0x0001)
    expect(toHalf(1e-9)).toBe(0)
    for (const v of values) expect(Math.abs(fromHalf(toHalf(v)) - v)).toBeLessThanOrEqual(Math.abs(v) * 2 ** -11)
  })

  it('Q8_0 blocks (f16 scale + 32 int8) decode to within half a step', () => {
    const q = quantizeQ8_0(values)
    expect(q.length).toBe((values.length / 32) * 34)
    const view = new DataView(q.buffer)
    for (let b = 0; b < values.length / 32; b++) {
      const d = fromHalf(view.getUint16(b * 34, true))
      for (let j = 0; j < 32; j++) expect(Math.abs(view.getInt8(b * 34 + 2 + j) * d - values[b * 32 + j])).toBeLessThanOrEqual(d * 0.51)
    }
  })

  it('Q4_0 blocks (f16 scale + 32 nibbles, low nibbles first) decode to within one step', () => {
    const q = quantizeQ4_0(values)
    expect(q.length).toBe((values.length / 32) * 18)
    const view = new DataView(q.buffer)
    for (let b = 0; b < values.length / 32; b++) {
      const d = fromHalf(view.getUint16(b * 18, true))
      for (let j = 0; j < 16; j++) {
        const byte = q[b * 18 + 2 + j]
        expect(Math.abs(((byte & 0x0f) - 8) * d - values[b * 32 + j])).toBeLessThanOrEqual(Math.abs(d))
        expect(Math.abs(((byte >> 4) - 8) * d - values[b * 32 + 16 + j])).toBeLessThanOrEqual(Math.abs(d))
      }
    }
  })

  it('writes the header, metadata and tensor infos, then each tensor at its aligned offset', () => {
    const path = join(dir, 'tiny.gguf')
    const norm = Float32Array.from([1, 2, 3])
    writeGguf(path, { 'general.architecture': { type: 'string', value: 'llama' }, 'llama.block_count': { type: 'u32', value: 1 } }, [
      { name: 'norm.weight', dims: [3], type: GgmlType.F32, values: () => norm },
      { name: 'w.weight', dims: [32, 8], type: GgmlType.Q8_0, values: () => values }
    ])
    const bytes = readFileSync(path)
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    expect(bytes.subarray(0, 4).toString('latin1')).toBe('GGUF')
    expect(view.getUint32(4, true)).toBe(3)
    expect(Number(view.getBigUint64(8, true))).toBe(2) // tensors
    expect(Number(view.getBigUint64(16, true))).toBe(3) // key/values, general.alignment included
    // walk the metadata and tensor infos
    let at = 24
    const str = (): string => { const n = Number(view.getBigUint64(at, true)); at += 8; const s = bytes.subarray(at, at + n).toString('utf8'); at += n; return s }
    expect(str()).toBe('general.architecture')
    expect(view.getUint32(at, true)).toBe(8); at += 4
    expect(str()).toBe('llama')
    expect(str()).toBe('llama.block_count'); at += 4 + 4
    expect(str()).toBe('general.alignment'); at += 4
    expect(view.getUint32(at, true)).toBe(GGUF_ALIGNMENT); at += 4
    const infos: Array<{ name: string, type: number, offset: number }> = []
    for (let t = 0; t < 2; t++) {
      const name = str()
      const dims = view.getUint32(at, true); at += 4 + 8 * dims
      const type = view.getUint32(at, true); at += 4
      infos.push({ name, type, offset: Number(view.getBigUint64(at, true)) }); at += 8
    }
    expect(infos).toEqual([{ name: 'norm.weight', type: 0, offset: 0 }, { name: 'w.weight', type: 8, offset: 32 }])
    const data = Math.ceil(at / GGUF_ALIGNMENT) * GGUF_ALIGNMENT
    expect(view.getFloat32(data + 8, true)).toBe(3)
    expect(bytes.subarray(data + 32, data + 32 + 272)).toEqual(Buffer.from(quantizeQ8_0(values)))
    expect(bytes.length).toBe(data + 32 + 272 + (GGUF_ALIGNMENT - (272 % GGUF_ALIGNMENT)))
  })
})
