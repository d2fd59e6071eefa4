// Random inference frames, edge values and byte-level mutations of encoded frames.
import { DType, FrameType, HEADER_BYTES, MAX_LENGTH, bytesOf, decodeFrame, f32ToF16, type Frame, type FrameInit } from '@minga/p2p'
import { Rng } from './rng.ts'

const U32_EDGES = [0, 1, 2, 63, 64, 65, 255, 256, 511, 512, 513, 0x7fff, 0x8000, 0xffff, 0x10000, 1 << 20, (1 << 20) + 1, 1 << 24, (1 << 24) + 1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff]
const U16_EDGES = [0, 1, 2, 4, 5, 6, 63, 64, 65, 0xff, 0x100, 0x7fff, 0x8000, 0xfffe, 0xffff]
const SPECIALS = [Number.NaN, Infinity, -Infinity, 3.4e38, -3.4e38, 1e-45, -0, 65504, 65520]

export interface Model { hiddenSize: number, numLayers: number, maxPositions: number }

export function tensor (rng: Rng, tokens: number, hidden: number, dtype: number, specials: boolean): Uint8Array {
  const values = new Float32Array(tokens * hidden)
  for (let i = 0; i < values.length; i++) values[i] = rng.normal()
  if (specials) {
    const n = rng.int(1, Math.max(1, values.length >> 2))
    for (let i = 0; i < n; i++) values[rng.int(0, values.length - 1)] = rng.pick(SPECIALS)
  }
  if (dtype === DType.F32) return bytesOf(values)
  const halves = new Uint16Array(values.length)
  if (specials && rng.chance(0.3)) {
    for (let i = 0; i < halves.length; i++) halves[i] = rng.u32() & 0xffff // any bit pattern, NaNs included
  } else {
    f32ToF16(values, halves)
  }
  return bytesOf(halves)
}

export function randomSpan (rng: Rng, m: Model): [number, number] {
  const n = m.numLayers
  return rng.weighted({
    full: 6, sub: 2, beyond: 1, wild: 1
  }) === 'full'
    ? [0, n]
    : rng.pick<[number, number]>([[0, 1], [1, Math.max(2, n - 1)], [n - 1, n], [0, n + 1], [n, n + 2], [rng.int(0, 0xfffe), 0xffff], [2, 1000]])
}

/** A frame the encoder accepts (so correct on the wire), with random, often wrong, semantics. */
export function randomFrame (rng: Rng, m: Model, known: Uint8Array[]): FrameInit {
  const kind = rng.weighted({ open: 22, forward: 45, close: 18, other: 15 })
  const sessionId = known.length > 0 && rng.chance(0.6) ? rng.pick(known) : rng.sessionId()
  const flags = rng.chance(0.1) ? rng.int(0, 255) : 0
  const nextHops = rng.chance(0.05)
    ? Array.from({ length: rng.int(1, 3) }, () => ({ peer: `12D3KooW${rng.int(0, 1e9)}`, startBlock: rng.int(0, 4), endBlock: rng.int(5, 9) }))
    : undefined
  if (kind === 'open') {
    const [startBlock, endBlock] = randomSpan(rng, m)
    const maxLength = rng.pick([1, rng.int(1, m.maxPositions), m.maxPositions, m.maxPositions + 1, 4096, MAX_LENGTH, rng.int(1, MAX_LENGTH)])
    return { type: FrameType.OPEN_SESSION, sessionId, startBlock, endBlock, maxLength, flags, nextHops }
  }
  if (kind === 'forward') {
    const dtype = rng.chance(0.5) ? DType.F32 : DType.F16
    const hiddenSize = rng.chance(0.8) ? m.hiddenSize : rng.pick([1, 32, m.hiddenSize - 1, m.hiddenSize + 1, 2 * m.hiddenSize, rng.int(1, 300)])
    const tokens = rng.chance(0.85) ? rng.int(1, 8) : rng.pick([rng.int(9, 64), m.maxPositions, m.maxPositions + 1, rng.int(1, 2048)])
    const [startBlock, endBlock] = rng.chance(0.8) ? [0, m.numLayers] : randomSpan(rng, m)
    const position = rng.chance(0.5) ? 0 : rng.pick([1, rng.int(0, 64), m.maxPositions, MAX_LENGTH, rng.int(0, MAX_LENGTH)])
    return { type: FrameType.FORWARD, sessionId, dtype, startBlock, endBlock, position, tokens, hiddenSize, payload: tensor(rng, tokens, hiddenSize, dtype, rng.chance(0.2)), flags, nextHops }
  }
  if (kind === 'close') return { type: FrameType.CLOSE_SESSION, sessionId, flags }
  const other = rng.pick([FrameType.RESULT, FrameType.ERROR, FrameType.ACK])
  if (other === FrameType.RESULT) return { type: other, sessionId, dtype: DType.F32, tokens: 1, hiddenSize: m.hiddenSize, payload: tensor(rng, 1, m.hiddenSize, DType.F32, false) }
  if (other === FrameType.ERROR) return { type: other, sessionId, errorCode: rng.int(1, 0xffff), payload: new TextEncoder().encode('not from a client') }
  return { type: other, sessionId }
}

/** Byte-level damage to an encoded frame (the result is still sent with a correct length prefix). */
export function mutate (rng: Rng, frame: Uint8Array): Uint8Array {
  let bytes: Uint8Array = frame.slice()
  const n = rng.weighted({ zero: 3, one: 4, two: 2, many: 1 })
  const count = n === 'zero' ? 0 : n === 'one' ? 1 : n === 'two' ? 2 : rng.int(3, 8)
  for (let i = 0; i < count; i++) {
    const op = rng.weighted(MUTATIONS)
    const whole = bytes.length >= HEADER_BYTES
    if (bytes.length === 0 && op !== 'extend') continue
    // positions favour the header, where the decoder makes its decisions
    const at = (): number => rng.chance(0.7) ? rng.int(0, Math.min(HEADER_BYTES, bytes.length) - 1) : rng.int(0, bytes.length - 1)
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    if (op === 'flip') {
      bytes[at()] ^= 1 << rng.int(0, 7)
    } else if (op === 'byte') {
      bytes[at()] = rng.int(0, 255)
    } else if (op === 'u32' && whole) {
      view.setUint32(rng.pick([8, 32, 36, 40, 44, 48]), rng.chance(0.7) ? rng.pick(U32_EDGES) : rng.u32(), true)
    } else if (op === 'u16' && whole) {
      view.setUint16(rng.pick([6, 28, 30, 52, 54]), rng.chance(0.7) ? rng.pick(U16_EDGES) : rng.int(0, 0xffff), true)
    } else if (op === 'dtype' && bytes.length > 4) {
      bytes[4] = rng.pick([0, 1, 2, 3, 4, 127, 255])
    } else if (op === 'type' && bytes.length > 3) {
      bytes[3] = rng.pick([0, 1, 2, 3, 4, 5, 6, 7, 8, 255])
    } else if (op === 'version' && bytes.length > 2) {
      bytes[2] = rng.pick([0, 2, 255])
    } else if (op === 'magic') {
      bytes[rng.int(0, Math.min(1, bytes.length - 1))] = rng.int(0, 255)
    } else if (op === 'truncate') {
      bytes = bytes.slice(0, rng.chance(0.5) ? rng.int(0, HEADER_BYTES) : rng.int(0, bytes.length - 1))
    } else if (op === 'extend') {
      bytes = concat(bytes, rng.bytes(rng.int(1, 64)))
    } else if (op === 'payloadLength' && whole) {
      view.setUint32(48, Math.max(0, view.getUint32(48, true) + rng.int(-8, 8)), true)
    } else if (op === 'hops' && whole) {
      // a next-hops section of random bytes, with counts that may or may not agree with it
      const hopBytes = rng.pick([4, 8, 12, 64, rng.int(1, 40)])
      view.setUint16(52, rng.int(0, 5), true)
      view.setUint16(54, hopBytes, true)
      bytes = concat(bytes.subarray(0, HEADER_BYTES), rng.bytes(hopBytes), bytes.subarray(HEADER_BYTES))
    } else if (op === 'reserved' && whole) {
      bytes.set(rng.bytes(8), 56)
    }
  }
  return bytes
}

const MUTATIONS = { flip: 4, byte: 3, u32: 4, u16: 2, dtype: 2, type: 2, version: 1, magic: 1, truncate: 2, extend: 2, payloadLength: 2, hops: 1, reserved: 1 }

export function concat (...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let off = 0
  for (const p of parts) {
    out.set(p, off)
    off += p.length
  }
  return out
}

export function tryDecode (bytes: Uint8Array): Frame | undefined {
  try {
    return decodeFrame(bytes, { maxPayloadBytes: 64 << 20 })
  } catch {
    return undefined
  }
}
