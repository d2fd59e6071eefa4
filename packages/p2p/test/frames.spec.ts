import { describe, expect, it } from 'vitest'
import {
  DType, ErrorCode, FrameType, HEADER_BYTES, Q8_BLOCK_BYTES, bytesOf, decodeFrame, encodeFrame, encodeFrameParts, encodeTensor,
  errorFrame, f16ToF32, f32ToF16, f32ToQ8, frameText, newSessionId, payloadF16, payloadF32, q8ToF32, tensorBytes, tensorF32,
  type Frame, type FrameInit
} from '../src/index.ts'

// Deterministic PRNG so a fuzz failure can be replayed.
function rng (seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function tensorInit (type: FrameInit['type'], dtype: DType, tokens: number, hidden: number, rand: () => number): FrameInit {
  const values = new Float32Array(tokens * hidden).map(() => rand() * 8 - 4)
  let payload: Uint8Array
  if (dtype === DType.F32) {
    payload = bytesOf(values)
  } else {
    const half = new Uint16Array(values.length)
    f32ToF16(values, half)
    payload = bytesOf(half)
  }
  return {
    type,
    dtype,
    requestId: Math.floor(rand() * 0xffffffff),
    sessionId: newSessionId(),
    startBlock: 3,
    endBlock: 9,
    position: 17,
    tokens,
    hiddenSize: hidden,
    maxLength: type === FrameType.OPEN_SESSION ? 2048 : 0,
    payload
  }
}

function expectSame (a: Frame, b: FrameInit): void {
  expect(a.type).toBe(b.type)
  expect(a.dtype).toBe(b.dtype ?? DType.NONE)
  expect(a.requestId).toBe(b.requestId ?? 0)
  expect(Array.from(a.sessionId)).toEqual(Array.from(b.sessionId ?? new Uint8Array(16)))
  expect(a.startBlock).toBe(b.startBlock ?? 0)
  expect(a.endBlock).toBe(b.endBlock ?? 0)
  expect(a.position).toBe(b.position ?? 0)
  expect(a.tokens).toBe(b.tokens ?? 0)
  expect(a.hiddenSize).toBe(b.hiddenSize ?? 0)
  expect(a.maxLength).toBe(b.maxLength ?? 0)
  expect(a.errorCode).toBe(b.errorCode ?? 0)
  expect(a.stack).toBe(b.stack ?? 1)
  expect(a.nextHops).toEqual((b.nextHops ?? []).map(h => ({ ...h, sessionId: h.sessionId ?? new Uint8Array(16) })))
  expect(Buffer.from(a.payload).equals(Buffer.from(b.payload ?? new Uint8Array(0)))).toBe(true)
}

describe('frames', () => {
  it('round-trips every frame type and dtype', () => {
    const rand = rng(1)
    const inits: FrameInit[] = [
      tensorInit(FrameType.OPEN_SESSION, DType.F32, 2, 8, rand),
      tensorInit(FrameType.OPEN_SESSION, DType.F16, 2, 8, rand),
      { type: FrameType.OPEN_SESSION, sessionId: newSessionId(), startBlock: 0, endBlock: 4, maxLength: 512, hiddenSize: 64, payload: new TextEncoder().encode('{"opts":1}') },
      tensorInit(FrameType.FORWARD, DType.F32, 5, 16, rand),
      tensorInit(FrameType.FORWARD, DType.F16, 5, 16, rand),
      tensorInit(FrameType.RESULT, DType.F32, 1, 4096, rand),
      tensorInit(FrameType.RESULT, DType.F16, 7, 3, rand),
      { type: FrameType.CLOSE_SESSION, requestId: 7, sessionId: newSessionId() },
      tensorInit(FrameType.CLOSE_SESSION, DType.F16, 1, 2, rand),
      { type: FrameType.ACK, requestId: 8, sessionId: newSessionId() },
      errorFrame(9, ErrorCode.WRONG_POSITION, 'position 3 ≠ cache length 5'),
      {
        ...tensorInit(FrameType.FORWARD, DType.F16, 3, 8, rand),
        flags: 1,
        nextHops: [
          { peer: '12D3KooWGzBhRBdJ9ZcXvHvk6NgbLPxHrPUJ4EcBrybTFgu3xRQm', startBlock: 9, endBlock: 20, sessionId: newSessionId() },
          { peer: '/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWGzBhRBdJ9ZcXvHvk6NgbLPxHrPUJ4EcBrybTFgu3xRQm', startBlock: 20, endBlock: 32 }
        ]
      },
      // a chain's stacked outputs, and the 8-bit block format
      { ...tensorInit(FrameType.RESULT, DType.F32, 2, 8, rand), stack: 3, payload: bytesOf(new Float32Array(48).map(() => rand())) },
      { type: FrameType.FORWARD, dtype: DType.Q8, startBlock: 0, endBlock: 1, tokens: 2, hiddenSize: 40, payload: encodeTensor(new Float32Array(80).map(() => rand() - 0.5), DType.Q8) }
    ]
    for (const init of inits) {
      const bytes = encodeFrame(init)
      const frame = decodeFrame(bytes)
      expectSame(frame, init)
      // the payload is a view into the received bytes, and stays aligned for typed-array views
      if (frame.payload.length > 0) expect(frame.payload.buffer).toBe(bytes.buffer)
      expect((frame.payload.byteOffset - bytes.byteOffset) % 4).toBe(0)
      // the two-part encoding carries the same bytes without copying the payload
      const [head, payload] = encodeFrameParts(init)
      expect(payload).toBe(init.payload ?? payload)
      expect(Buffer.concat([head, payload]).equals(Buffer.from(bytes))).toBe(true)
    }
    expect(frameText(decodeFrame(encodeFrame(inits[10])))).toBe('position 3 ≠ cache length 5')
  })

  it('gives tensor views and conversions', () => {
    const values = Float32Array.from([1, -2.5, 0.333, 65504, 1e-7, 0])
    const f32 = decodeFrame(encodeFrame({ type: FrameType.RESULT, dtype: DType.F32, tokens: 2, hiddenSize: 3, payload: bytesOf(values) }))
    expect(Array.from(payloadF32(f32))).toEqual(Array.from(values))
    const half = new Uint16Array(6)
    f32ToF16(values, half)
    const f16 = decodeFrame(encodeFrame({ type: FrameType.RESULT, dtype: DType.F16, tokens: 2, hiddenSize: 3, payload: bytesOf(half) }))
    expect(Array.from(payloadF16(f16))).toEqual(Array.from(half))
    const back = tensorF32(f16)
    expect(back[0]).toBe(1)
    expect(back[1]).toBe(-2.5)
    expect(back[3]).toBe(65504)
    expect(Math.abs(back[2] - 0.333)).toBeLessThan(0.333 * 2 ** -11)
    // an unaligned payload is copied rather than viewed
    const bytes = encodeFrame({ type: FrameType.RESULT, dtype: DType.F32, tokens: 2, hiddenSize: 3, payload: bytesOf(values) })
    const shifted = new Uint8Array(bytes.length + 1).subarray(1)
    shifted.set(bytes)
    expect(Array.from(payloadF32(decodeFrame(shifted)))).toEqual(Array.from(values))
  })

  it('encodes 8-bit blocks: 34 bytes per 32 values, error within half a step of the block scale', () => {
    expect(tensorBytes(DType.Q8, 64)).toBe(2 * Q8_BLOCK_BYTES)
    expect(tensorBytes(DType.Q8, 65)).toBe(3 * Q8_BLOCK_BYTES)
    const rand = rng(5)
    const xs = new Float32Array(1000).map((_, i) => (rand() * 2 - 1) * (i < 32 ? 1e-3 : i < 64 ? 0 : 50))
    xs[100] = -300 // one outlier only coarsens its own block
    const bytes = new Uint8Array(tensorBytes(DType.Q8, xs.length))
    f32ToQ8(xs, bytes)
    const ys = new Float32Array(xs.length)
    q8ToF32(bytes, ys)
    for (let b = 0; b < Math.ceil(xs.length / 32); b++) {
      const block = xs.subarray(b * 32, (b + 1) * 32)
      const max = block.reduce((m, x) => Math.max(m, Math.abs(x)), 0)
      for (let i = 0; i < block.length; i++) {
        // the scale is max/127 rounded to f16 (relative error ≤ 2^-11), so allow a little over half a step
        expect(Math.abs(ys[b * 32 + i] - block[i]), `block ${b} value ${i}`).toBeLessThanOrEqual(max / 127 * 0.51 + 1e-12)
      }
    }
    expect(Array.from(ys.subarray(32, 64))).toEqual(new Array(32).fill(0))
    expect(Math.abs(ys[100] + 300)).toBeLessThanOrEqual(300 * 2 ** -11) // the max is off by the f16 scale rounding only
    // through a frame: the stack of tensors decodes to one float32 array
    const frame = decodeFrame(encodeFrame({ type: FrameType.RESULT, dtype: DType.Q8, tokens: 1, hiddenSize: 40, stack: 2, payload: new Uint8Array([...encodeTensor(xs.subarray(0, 40), DType.Q8), ...encodeTensor(xs.subarray(40, 80), DType.Q8)]) }))
    const both = tensorF32(frame)
    expect(both.length).toBe(80)
    const alone = new Float32Array(40)
    q8ToF32(encodeTensor(xs.subarray(40, 80), DType.Q8), alone)
    expect(Array.from(both.subarray(40))).toEqual(Array.from(alone))
    // NaN is not hidden by the scale
    const nan = new Float32Array(32).fill(1)
    nan[3] = NaN
    const back = new Float32Array(32)
    q8ToF32(encodeTensor(nan, DType.Q8), back)
    expect(back.some(Number.isNaN)).toBe(true)
  })

  it('converts f16 accurately', () => {
    // every finite half converts to f32 and back to the same bits
    const allHalves = new Uint16Array(65536).map((_, i) => i)
    const asF32 = new Float32Array(65536)
    f16ToF32(allHalves, asF32)
    const again = new Uint16Array(65536)
    f32ToF16(asF32, again)
    const wrong: number[] = []
    for (let h = 0; h < 65536; h++) {
      const exp = (h >>> 10) & 0x1f
      const ok = exp === 0x1f && (h & 0x3ff) !== 0
        ? Number.isNaN(asF32[h]) && (again[h] & 0x7c00) === 0x7c00 && (again[h] & 0x3ff) !== 0
        : again[h] === h
      if (!ok) wrong.push(h)
    }
    expect(wrong).toEqual([])
    // known values
    const cases: Array<[number, number]> = [
      [0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00],
      [Infinity, 0x7c00], [-Infinity, 0xfc00], [2 ** -14, 0x0400], [2 ** -24, 0x0001], [2 ** -25, 0x0000],
      [2 ** -25 * 1.0001, 0x0001], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [0.1, 0x2e66]
    ]
    const src = Float32Array.from(cases.map(c => c[0]))
    const dst = new Uint16Array(src.length)
    f32ToF16(src, dst)
    cases.forEach(([, bits], i) => expect(dst[i], `case ${cases[i][0]}`).toBe(bits))
    // random values: relative error within half an ulp (2^-11) in the normal range
    const rand = rng(2)
    const xs = new Float32Array(100_000).map(() => (rand() * 2 - 1) * 2 ** Math.floor(rand() * 30 - 14))
    const hs = new Uint16Array(xs.length)
    const ys = new Float32Array(xs.length)
    f32ToF16(xs, hs)
    f16ToF32(hs, ys)
    let worstNormal = 0
    let worstSubnormal = 0
    for (let i = 0; i < xs.length; i++) {
      const x = Math.abs(xs[i])
      const err = Math.abs(ys[i] - xs[i])
      if (x >= 2 ** -14 && x <= 65504) worstNormal = Math.max(worstNormal, err / x)
      else if (x < 2 ** -14) worstSubnormal = Math.max(worstSubnormal, err)
    }
    expect(worstNormal).toBeLessThanOrEqual(2 ** -11)
    expect(worstSubnormal).toBeLessThanOrEqual(2 ** -25)
    expect(Number.isNaN(f16ToF32Single(NaN))).toBe(true)
  })

  it('rejects malformed frames with clear FrameErrors', () => {
    const good = encodeFrame(tensorInit(FrameType.FORWARD, DType.F16, 2, 4, rng(3)))
    const mutate = (f: (b: Uint8Array, v: DataView) => void): Uint8Array => {
      const b = good.slice()
      f(b, new DataView(b.buffer))
      return b
    }
    const bad: Array<[string, Uint8Array, RegExp]> = [
      ['empty', new Uint8Array(0), /shorter than/],
      ['short', good.subarray(0, HEADER_BYTES - 1), /shorter than/],
      ['magic', mutate(b => { b[0] = 0 }), /bad magic/],
      ['version', mutate(b => { b[2] = 9 }), /version 9/],
      ['type', mutate(b => { b[3] = 77 }), /unknown frame type 77/],
      ['dtype', mutate(b => { b[4] = 9 }), /unknown dtype 9/],
      ['stack', mutate((_, v) => { v.setUint16(56, 2, true) }), /2 × tokens 2/],
      ['truncated payload', good.subarray(0, good.length - 1), /header says/],
      ['trailing bytes', Uint8Array.from([...good, 0]), /header says/],
      ['shape', mutate((_, v) => { v.setUint32(36, 3, true) }), /tokens 3 × hidden 4/],
      ['absurd hidden', mutate((_, v) => { v.setUint32(40, 0xffffffff, true) }), /hidden size/],
      ['absurd payload', mutate((_, v) => { v.setUint32(48, 0xfffffff0, true) }), /header says|exceeds/],
      ['empty span', mutate((_, v) => { v.setUint16(30, 3, true) }), /empty span/],
      ['reversed span', mutate((_, v) => { v.setUint16(30, 1, true) }), /start block 3 > end block 1/],
      ['error code on FORWARD', mutate((_, v) => { v.setUint16(6, 5, true) }), /error code 5/],
      ['hops', mutate((_, v) => { v.setUint16(52, 1, true) }), /next hops/]
    ]
    for (const [name, bytes, message] of bad) {
      expect(() => decodeFrame(bytes), name).toThrowError(message)
      try { decodeFrame(bytes) } catch (err) { expect((err as Error).name, name).toBe('FrameError') }
    }
    const errBytes = encodeFrame(errorFrame(1, ErrorCode.BUSY, 'x'))
    errBytes[errBytes.length - 1] = 0xff // not UTF-8
    expect(() => decodeFrame(errBytes)).toThrowError(/UTF-8/)
    // encoding refuses what decoding would refuse
    expect(() => encodeFrame({ type: FrameType.FORWARD, dtype: DType.F32, tokens: 2, hiddenSize: 4, startBlock: 0, endBlock: 1, payload: new Uint8Array(31) })).toThrowError(/tokens 2/)
    expect(() => encodeFrame({ type: FrameType.FORWARD, startBlock: 0, endBlock: 1, tokens: 1 })).toThrowError(/needs a tensor dtype/)
    expect(() => encodeFrame({ type: 42 as FrameInit['type'] })).toThrowError(/unknown frame type/)
    // long error messages are cut to the limit on a character boundary
    const long = decodeFrame(encodeFrame(errorFrame(1, ErrorCode.INTERNAL, 'é'.repeat(5000))))
    expect(frameText(long)).toBe('é'.repeat(2048))
  })

  it('fuzz: 10k random and mutated frames either decode or throw FrameError', () => {
    const rand = rng(42)
    const seeds = [
      encodeFrame(tensorInit(FrameType.FORWARD, DType.F16, 3, 8, rand)),
      encodeFrame(tensorInit(FrameType.RESULT, DType.F32, 2, 4, rand)),
      encodeFrame(tensorInit(FrameType.OPEN_SESSION, DType.F16, 1, 4, rand)),
      encodeFrame({ type: FrameType.CLOSE_SESSION, sessionId: newSessionId() }),
      encodeFrame(errorFrame(5, ErrorCode.UNKNOWN_SESSION, 'no such session')),
      encodeFrame({ ...tensorInit(FrameType.FORWARD, DType.F32, 1, 4, rand), nextHops: [{ peer: 'peer-a', startBlock: 4, endBlock: 8 }, { peer: 'b', startBlock: 8, endBlock: 9 }] })
    ]
    let decoded = 0
    let rejected = 0
    for (let i = 0; i < 10_000; i++) {
      let bytes: Uint8Array
      const mode = i % 4
      if (mode === 0) {
        // pure noise, sometimes with a valid magic/version so the deeper checks run
        bytes = new Uint8Array(Math.floor(rand() * 200)).map(() => Math.floor(rand() * 256))
        if (bytes.length >= 3 && rand() < 0.7) { bytes[0] = 0x4d; bytes[1] = 0x47; bytes[2] = 1 }
      } else {
        const seed = seeds[Math.floor(rand() * seeds.length)]
        bytes = seed.slice()
        const flips = 1 + Math.floor(rand() * 4)
        for (let k = 0; k < flips; k++) {
          // mostly hit the header and hops, sometimes the payload
          const at = rand() < 0.85 ? Math.floor(rand() * Math.min(bytes.length, HEADER_BYTES + 32)) : Math.floor(rand() * bytes.length)
          bytes[at] = mode === 1 ? bytes[at] ^ (1 << Math.floor(rand() * 8)) : Math.floor(rand() * 256)
        }
        if (mode === 3) {
          // truncate or extend
          bytes = rand() < 0.5 ? bytes.subarray(0, Math.floor(rand() * bytes.length)) : Uint8Array.from([...bytes, ...new Uint8Array(Math.floor(rand() * 8))])
        }
      }
      try {
        const f = decodeFrame(bytes)
        // anything accepted must re-encode to the same bytes (modulo ignored reserved fields)
        const again = encodeFrame(f)
        expect(again.length).toBe(bytes.length)
        decoded++
      } catch (err) {
        if (!(err instanceof Error) || err.name !== 'FrameError') throw new Error(`fuzz case ${i} threw ${String(err)} for ${Buffer.from(bytes).toString('hex')}`)
        rejected++
      }
    }
    expect(decoded + rejected).toBe(10_000)
    expect(decoded).toBeGreaterThan(100) // payload-only mutations decode fine
    expect(rejected).toBeGreaterThan(5000)
  })
})

function f16ToF32Single (x: number): number {
  const h = new Uint16Array(1)
  f32ToF16(Float32Array.of(x), h)
  const out = new Float32Array(1)
  f16ToF32(h, out)
  return out[0]
}
