import { lpStream } from '@libp2p/utils'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  DType, ErrorCode, FrameType, ProtocolError, bytesOf, createMingaNode, decodeFrame, encodeFrame, handleChannel,
  newSessionId, openChannel, payloadF32, type Channel, type ChannelServer, type Frame, type FrameInit, type MingaNode
} from '../src/index.ts'

const ECHO = '/minga/test-echo/1.0.0'
const SMALL = '/minga/test-small/1.0.0'
const SMALL_LIMIT = 1024 * 1024
const MEET = '/minga/test-meet/1.0.0'

function forward (values: Float32Array, tokens: number, position = 0): FrameInit {
  return {
    type: FrameType.FORWARD,
    dtype: DType.F32,
    sessionId: newSessionId(),
    startBlock: 0,
    endBlock: 4,
    position,
    tokens,
    hiddenSize: values.length / tokens,
    payload: bytesOf(values)
  }
}

// Echo server: FORWARD → RESULT with every value doubled; position 666 throws, 999 is slow.
async function echo (frame: Frame): Promise<FrameInit> {
  if (frame.type !== FrameType.FORWARD) return { type: FrameType.ACK }
  if (frame.position === 666) throw new ProtocolError(ErrorCode.WRONG_POSITION, 'position 666 is cursed')
  if (frame.position === 667) throw new Error('plain failure')
  if (frame.position === 999) await new Promise(resolve => setTimeout(resolve, 400))
  const x = payloadF32(frame)
  const y = new Float32Array(x.length)
  for (let i = 0; i < x.length; i++) y[i] = x[i] * 2
  return { type: FrameType.RESULT, dtype: DType.F32, tokens: frame.tokens, hiddenSize: frame.hiddenSize, position: frame.position, payload: bytesOf(y) }
}

// Meeting server: a FORWARD at position 0 waits for a step of another session to start, so two
// sessions' frames on one stream only get answers if the server runs them at once. It records when
// each session's steps start and end, to check that one session's steps never overlap.
const started: Array<() => void> = []
const events: string[] = []
async function meet (frame: Frame): Promise<FrameInit> {
  const id = Array.from(frame.sessionId.subarray(0, 2)).join('.')
  events.push(`start ${id}:${frame.position}`)
  for (const wake of started.splice(0)) wake()
  if (frame.position === 0) await new Promise<void>(resolve => { started.push(resolve) })
  await new Promise(resolve => setImmediate(resolve))
  events.push(`end ${id}:${frame.position}`)
  return { type: FrameType.ACK }
}

describe('rpc channel', () => {
  let server: MingaNode
  let client: MingaNode
  let servers: ChannelServer[] = []
  let channel: Channel
  const errors: unknown[] = []

  beforeAll(async () => {
    server = await createMingaNode()
    client = await createMingaNode()
    servers = [
      await handleChannel(server, ECHO, echo, { onError: err => errors.push(err) }),
      await handleChannel(server, SMALL, echo, { maxFrameBytes: SMALL_LIMIT }),
      await handleChannel(server, MEET, meet)
    ]
    channel = await openChannel(client, server.addrs()[0], ECHO)
  })

  afterAll(async () => {
    await channel?.close()
    for (const s of servers) await s.close()
    await client?.stop()
    await server?.stop()
  })

  it('answers pipelined requests in order', async () => {
    const n = 64
    const order: number[] = []
    const requests = Array.from({ length: n }, (_, i) => {
      const values = Float32Array.from({ length: 2 * 64 }, (_, k) => i * 1000 + k)
      return channel.request(forward(values, 2, i)).then(reply => { order.push(i); return { i, reply, values } })
    })
    for (const { i, reply, values } of await Promise.all(requests)) {
      expect(reply.type).toBe(FrameType.RESULT)
      expect(reply.position).toBe(i)
      expect(Array.from(payloadF32(reply))).toEqual(Array.from(values, v => v * 2))
    }
    expect(order).toEqual(Array.from({ length: n }, (_, i) => i))
    expect(channel.pending).toBe(0)
  })

  it('answers the frames of different sessions at once, and those of one session in order', async () => {
    const c = await openChannel(client, server.libp2p.peerId, MEET, { timeoutMs: 60_000 })
    try {
      const a = forward(Float32Array.of(1), 1, 0)
      const b = { ...forward(Float32Array.of(1), 1, 1), sessionId: newSessionId() }
      const order: string[] = []
      // a (position 0) waits for b to start: served one frame at a time, this would never end
      const replies = [c.request(a).then(() => order.push('a')), c.request(b).then(() => order.push('b'))]
      // three more steps of b's session, pipelined: they must not overlap
      for (const position of [2, 3, 4]) replies.push(c.request({ ...b, position }).then(() => order.push(`b${position}`)))
      await Promise.all(replies)
      // replies come back in request order even though b's first step ended before a's
      expect(order).toEqual(['a', 'b', 'b2', 'b3', 'b4'])
      const id = Array.from(b.sessionId.subarray(0, 2)).join('.')
      const own = events.filter(e => e.endsWith(`${id}:1`) || e.endsWith(`${id}:2`) || e.endsWith(`${id}:3`) || e.endsWith(`${id}:4`))
      expect(own).toEqual([1, 2, 3, 4].flatMap(p => [`start ${id}:${p}`, `end ${id}:${p}`]))
    } finally {
      await c.close()
    }
  })

  it('turns handler errors into ERROR frames and keeps the channel', async () => {
    const one = Float32Array.of(1, 2)
    await expect(channel.request(forward(one, 1, 666))).rejects.toMatchObject({ name: 'RemoteError', code: ErrorCode.WRONG_POSITION, codeName: 'WRONG_POSITION' })
    await expect(channel.request(forward(one, 1, 667))).rejects.toMatchObject({ name: 'RemoteError', code: ErrorCode.INTERNAL, message: 'INTERNAL: plain failure' })
    const ok = await channel.request(forward(one, 1, 1))
    expect(Array.from(payloadF32(ok))).toEqual([2, 4])
    expect(errors.length).toBe(2)
  })

  it('answers a malformed frame with BAD_FRAME and keeps the stream', async () => {
    // a raw stream, written with @libp2p/utils lpStream: the wire format is the same varint framing
    const stream = await client.libp2p.dialProtocol(server.libp2p.peerId, ECHO)
    const lp = lpStream(stream)
    const good = encodeFrame({ ...forward(Float32Array.of(3, 4), 1, 5), requestId: 77 })
    const broken = good.slice()
    broken[36] = 9 // tokens 9 × hidden 2 ≠ payload
    broken.set([0x39, 0x05, 0, 0], 8) // request id 1337
    await lp.write(broken)
    const err = decodeFrame((await lp.read()).subarray())
    expect(err.type).toBe(FrameType.ERROR)
    expect(err.errorCode).toBe(ErrorCode.BAD_FRAME)
    expect(err.requestId).toBe(1337)
    expect(new TextDecoder().decode(err.payload)).toMatch(/tokens 9 × hidden 2/)
    await lp.write(Uint8Array.of(1, 2, 3)) // garbage without magic: request id unknown → 0
    const err2 = decodeFrame((await lp.read()).subarray())
    expect(err2.errorCode).toBe(ErrorCode.BAD_FRAME)
    expect(err2.requestId).toBe(0)
    await lp.write(good)
    const reply = decodeFrame((await lp.read()).subarray())
    expect(reply.requestId).toBe(77)
    expect(Array.from(payloadF32(reply))).toEqual([6, 8])
    await stream.close()
  })

  it('answers an oversize frame with TOO_LARGE and keeps the channel', async () => {
    const small = await openChannel(client, server.libp2p.peerId, SMALL)
    try {
      const big = new Float32Array(512 * 1024) // 2 MiB > 1 MiB limit
      await expect(small.request(forward(big, 1024))).rejects.toMatchObject({ name: 'RemoteError', code: ErrorCode.TOO_LARGE })
      const ok = await small.request(forward(Float32Array.of(5), 1))
      expect(Array.from(payloadF32(ok))).toEqual([10])
      // the client refuses to send beyond its own limit
      const limited = await openChannel(client, server.libp2p.peerId, SMALL, { maxFrameBytes: 4096 })
      await expect(limited.request(forward(new Float32Array(2048), 2))).rejects.toMatchObject({ name: 'FrameTooLargeError' })
      await limited.close()
    } finally {
      await small.close()
    }
  })

  it('times out a slow request with TimeoutError, then carries on', async () => {
    await expect(channel.request(forward(Float32Array.of(1), 1, 999), { timeoutMs: 100 })).rejects.toMatchObject({ name: 'TimeoutError' })
    // the late reply is dropped; the next request gets its own answer
    const ok = await channel.request(forward(Float32Array.of(7), 1, 2))
    expect(Array.from(payloadF32(ok))).toEqual([14])
  })

  it('moves large frames with backpressure instead of resetting the stream', async () => {
    // 6 pipelined 6 MiB frames: far more than the muxer's 4 MiB default buffer
    const hidden = 3072
    const tokens = 512
    const requests = Array.from({ length: 6 }, async (_, i) => {
      const values = new Float32Array(tokens * hidden).fill(i + 0.5)
      const reply = await channel.request(forward(values, tokens, i))
      const y = payloadF32(reply)
      expect(y.length).toBe(values.length)
      expect(y[0]).toBe((i + 0.5) * 2)
      expect(y[y.length - 1]).toBe((i + 0.5) * 2)
    })
    await Promise.all(requests)
  })

  it('reports the small request round trip (a figure, not a check)', async () => {
    const values = new Float32Array(2048) // 8 KiB: one token of a 2048-wide f32 hidden state
    for (let i = 0; i < 200; i++) await channel.request(forward(values, 1, i))
    const n = 300
    const t0 = performance.now()
    for (let i = 0; i < n; i++) await channel.request(forward(values, 1, i))
    const ms = (performance.now() - t0) / n
    // reported, not asserted: speed is the benchmarks' business (packages/client/bench)
    console.log(`rpc: 8 KiB FORWARD→RESULT round trip ${ms.toFixed(3)} ms (sequential, loopback)`)
  })

  it('fails pending requests with ChannelClosedError when the channel closes', async () => {
    const c = await openChannel(client, server.libp2p.peerId, ECHO)
    const p = c.request(forward(Float32Array.of(1), 1, 999))
    c.abort('test abort')
    await expect(p).rejects.toMatchObject({ name: 'ChannelClosedError' })
    await expect(c.request(forward(Float32Array.of(1), 1))).rejects.toMatchObject({ name: 'ChannelClosedError' })
    // the server and other channels are unaffected
    const ok = await channel.request(forward(Float32Array.of(1), 1, 3))
    expect(Array.from(payloadF32(ok))).toEqual([2])
  })
})
