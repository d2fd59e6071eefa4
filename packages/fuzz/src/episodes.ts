// The fuzzing loops' episodes: each opens streams or channels and sends one kind of abuse, checking
// every reply against the protocol's invariants.
import { DType, ErrorCode, FrameType, MAX_LENGTH, errorCodeName, HEADER_BYTES, INFERENCE_PROTOCOL, encodeFrame, frameTypeName, openChannel, peekRequestId, type Channel, type Frame, type FrameInit, type MingaNode } from '@minga/p2p'

import { encode as varint } from 'uint8-varint'
import { concat, mutate, randomFrame, randomSpan, tensor, tryDecode, type Model } from './frame-gen.ts'
import { RawStream } from './raw-stream.ts'
import { Rng } from './rng.ts'
import { Stats } from './stats.ts'

type PeerId = Channel['remotePeer']

export interface Ctx {
  m: Model
  stats: Stats
  server: PeerId
  timeoutMs: number
  stopped: () => boolean
}

export async function openRaw (ctx: Ctx, node: MingaNode, refusalExpected = false): Promise<RawStream | undefined> {
  try {
    const stream = await node.libp2p.dialProtocol(ctx.server, INFERENCE_PROTOCOL, { signal: AbortSignal.timeout(ctx.timeoutMs) })
    return new RawStream(stream, ctx.timeoutMs)
  } catch (err: any) {
    if (refusalExpected) {
      ctx.stats.refusedStreams++
    } else {
      ctx.stats.dialFailed++
      ctx.stats.violation(`could not open a stream: ${err?.name}: ${err?.message}`)
    }
    return undefined
  }
}

export async function openFuzzChannel (ctx: Ctx, node: MingaNode): Promise<Channel | undefined> {
  try {
    return await openChannel(node, ctx.server, INFERENCE_PROTOCOL, { timeoutMs: ctx.timeoutMs, signal: AbortSignal.timeout(ctx.timeoutMs) })
  } catch (err: any) {
    ctx.stats.dialFailed++
    ctx.stats.violation(`could not open a channel: ${err?.name}: ${err?.message}`)
    return undefined
  }
}

/** Sends one request on a channel and books the outcome; resolves to the reply or the error. */
export async function request (ctx: Ctx, ch: Channel, init: FrameInit): Promise<Frame | Error> {
  ctx.stats.sent(HEADER_BYTES + (init.payload?.length ?? 0))
  try {
    const reply = await ch.request(init)
    ctx.stats.reply(frameTypeName(reply.type))
    return reply
  } catch (err: any) {
    if (err?.name === 'RemoteError') {
      ctx.stats.reply(err.codeName, String(err.message).slice(err.codeName.length + 2))
      if (err.message === `${err.codeName}: `) ctx.stats.violation(`empty ${err.codeName} message`)
    } else if (err?.name === 'TimeoutError') {
      ctx.stats.timeouts++
    } else if (err?.name === 'ChannelClosedError') {
      ctx.stats.closedDuringRequest++
    } else {
      ctx.stats.violation(`request failed locally: ${err?.message ?? err}`)
    }
    return err
  }
}

export const codeOf = (r: Frame | Error): string => r instanceof Error ? ((r as any).codeName ?? r.name) : frameTypeName(r.type)

/** Checks the replies of a raw stream against what each well-delimited message deserves. */
function checkRawReplies (ctx: Ctx, raw: RawStream, sent: Array<{ requestId: number, decoded: Frame | undefined }>, strict: boolean, noExtra = true): void {
  for (const r of raw.replies) ctx.stats.replyFrame(r)
  if (raw.undecodable > 0) ctx.stats.violation(`${raw.undecodable} undecodable replies`)
  if (strict && raw.replies.length < sent.length) ctx.stats.missingReplies += sent.length - raw.replies.length
  if (noExtra && raw.replies.length > sent.length) ctx.stats.violation(`${raw.replies.length} replies to ${sent.length} messages`)
  const n = Math.min(raw.replies.length, sent.length)
  for (let i = 0; i < n; i++) {
    const r = raw.replies[i]
    const s = sent[i]
    if (r.requestId !== s.requestId) {
      ctx.stats.violation(`reply ${i} has request id ${r.requestId}, expected ${s.requestId}`)
      break
    }
    if (s.decoded === undefined && !(r.type === FrameType.ERROR && r.errorCode === ErrorCode.BAD_FRAME)) {
      ctx.stats.violation(`a malformed frame got ${frameTypeName(r.type)} ${errorCodeName(r.errorCode)}`)
    }
    if (r.type === FrameType.RESULT && s.decoded?.type !== FrameType.FORWARD) ctx.stats.violation('RESULT to a frame that is not a FORWARD')
    if (r.type === FrameType.ACK && s.decoded?.type !== FrameType.OPEN_SESSION && s.decoded?.type !== FrameType.CLOSE_SESSION) ctx.stats.violation('ACK to a frame that is neither OPEN nor CLOSE')
    if (r.type === FrameType.ERROR && r.text.length === 0) ctx.stats.violation(`empty ${errorCodeName(r.errorCode)} message`)
  }
}

type Episode = (ctx: Ctx, node: MingaNode, rng: Rng, budget: number) => Promise<number>

/** Valid-then-mutated frames on one raw stream; every message must get exactly one reply, in order. */
const rawMutated: Episode = async (ctx, node, rng, budget) => {
  const k = Math.min(budget, rng.int(1, 48))
  const raw = await openRaw(ctx, node)
  if (raw === undefined) return 0
  const known: Uint8Array[] = []
  const sent: Array<{ requestId: number, decoded: Frame | undefined }> = []
  const tail = rng.weighted({ close: 80, reset: 8, truncated: 6, garbage: 6 })
  let frames = 0
  for (let i = 0; i < k && !ctx.stopped(); i++) {
    const init = randomFrame(rng, ctx.m, known)
    if (init.type === FrameType.OPEN_SESSION && init.sessionId !== undefined) known.push(init.sessionId)
    const bytes = rng.chance(0.3) ? encodeFrame({ ...init, requestId: rng.u32() }) : mutate(rng, encodeFrame({ ...init, requestId: rng.u32() }))
    if (tail === 'truncated' && i === k - 1) {
      // the length prefix promises more than ever comes: the server must drop the stream at its end
      ctx.stats.sent(bytes.length)
      frames++
      const prefix = varint(bytes.length + rng.int(1, 4096))
      if (!await raw.send(prefix) || !await raw.send(bytes)) break
      continue
    }
    sent.push({ requestId: peekRequestId(bytes) ?? 0, decoded: tryDecode(bytes) })
    ctx.stats.sent(bytes.length)
    frames++
    if (!await raw.sendMessage(bytes)) break
  }
  if (tail === 'garbage' && raw.alive) {
    const g = rng.bytes(rng.int(1, 512))
    ctx.stats.sent(g.length, 0)
    await raw.send(g)
  }
  if (tail === 'reset') {
    raw.abort()
    return frames
  }
  const end = await raw.finish()
  if (end === 'timeout') ctx.stats.timeouts++
  if (end === 'reset' && tail === 'close') {
    // every message was well delimited: nothing here should make the server drop the stream
    ctx.stats.resetByServer++
    ctx.stats.violation(`stream reset after ${raw.replies.length} replies to ${sent.length} well-delimited messages (${raw.readError}; ${raw.closeReason})`)
  }
  checkRawReplies(ctx, raw, sent, end === 'clean' && tail === 'close', tail !== 'garbage')
  return frames
}

/** Bytes with no framing at all: random varints, random bodies, zero-length messages. */
const rawGarbage: Episode = async (ctx, node, rng, budget) => {
  const k = Math.min(budget, rng.int(1, 8))
  const raw = await openRaw(ctx, node)
  if (raw === undefined) return 0
  let frames = 0
  for (let i = 0; i < k; i++) {
    const style = rng.weighted({ random: 5, zeroLength: 2, shortMessages: 2, longVarint: 1 })
    const bytes = style === 'random'
      ? rng.bytes(rng.int(1, 2048))
      : style === 'zeroLength'
        ? new Uint8Array(rng.int(1, 16)) // a run of empty messages
        : style === 'shortMessages'
          ? Uint8Array.from([3, 1, 2, 3, 1, 0x4d, 2, 0x4d, 0x47])
          : Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
    ctx.stats.sent(bytes.length)
    frames++
    if (!await raw.send(bytes)) break
  }
  const end = await raw.finish()
  if (end === 'timeout') ctx.stats.timeouts++
  for (const r of raw.replies) ctx.stats.replyFrame(r)
  if (raw.undecodable > 0) ctx.stats.violation(`${raw.undecodable} undecodable replies`)
  return frames
}

/** Length prefixes beyond the frame limit: skippable (the body never comes), unskippable, or malformed. */
const rawOversize: Episode = async (ctx, node, rng, budget) => {
  if (budget < 1) return 0
  const raw = await openRaw(ctx, node)
  if (raw === undefined) return 0
  const limit = 64 << 20
  const length = rng.pick([limit + 1, rng.int(limit + 1, 4 * limit), 4 * limit + 1, 0xffffffff, 2 ** 34])
  const head = encodeFrame({ type: FrameType.CLOSE_SESSION, requestId: rng.u32(), sessionId: rng.sessionId() })
  const prefix = rng.chance(0.2) ? Uint8Array.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]) : varint(length)
  const body = rng.bytes(rng.int(0, 8192))
  ctx.stats.sent(prefix.length + head.length + body.length)
  if (await raw.send(prefix)) {
    await raw.send(head)
    if (body.length > 0) await raw.send(body)
  }
  const end = rng.chance(0.5) ? await raw.finish() : (raw.abort(), 'reset')
  if (end === 'timeout') ctx.stats.timeouts++
  for (const r of raw.replies) ctx.stats.replyFrame(r)
  return 1
}

/** Valid frames (OPEN included) then an abrupt reset, sometimes in the middle of a frame. */
const rawReset: Episode = async (ctx, node, rng, budget) => {
  const k = Math.min(budget, rng.int(1, 6))
  const raw = await openRaw(ctx, node)
  if (raw === undefined) return 0
  let frames = 0
  for (let i = 0; i < k; i++) {
    const init: FrameInit = rng.chance(0.6)
      ? { type: FrameType.OPEN_SESSION, sessionId: rng.sessionId(), startBlock: 0, endBlock: ctx.m.numLayers, maxLength: rng.int(1, ctx.m.maxPositions) }
      : randomFrame(rng, ctx.m, [])
    const bytes = encodeFrame({ ...init, requestId: rng.u32() })
    ctx.stats.sent(bytes.length)
    frames++
    if (i === k - 1 && rng.chance(0.4)) {
      const prefixed = concat(varint(bytes.length), bytes)
      await raw.send(prefixed.subarray(0, rng.int(1, prefixed.length - 1)))
      break
    }
    if (!await raw.sendMessage(bytes)) break
  }
  // sometimes wait for the server to act on the frames (an OPEN in flight), sometimes not at all
  if (rng.chance(0.5)) await new Promise(resolve => setTimeout(resolve, rng.int(0, 5)))
  for (const r of raw.replies) ctx.stats.replyFrame(r)
  raw.abort()
  return frames
}

/** Many streams at once on one connection, past the server's per-connection limit. */
const parallelStreams: Episode = async (ctx, node, rng, budget) => {
  const p = Math.min(budget, rng.int(8, 96))
  const frames = await Promise.all(Array.from({ length: p }, async (_, i) => {
    const local = new Rng(rng.u32(), i)
    const raw = await openRaw(ctx, node, true)
    if (raw === undefined) return 0
    const init = local.chance(0.5)
      ? { type: FrameType.CLOSE_SESSION, sessionId: local.sessionId() } as FrameInit
      : randomFrame(local, ctx.m, [])
    const bytes = encodeFrame({ ...init, requestId: local.u32() })
    ctx.stats.sent(bytes.length)
    const ok = await raw.sendMessage(bytes)
    const end = ok ? await raw.finish() : (raw.abort(), 'reset')
    if (end === 'timeout') ctx.stats.timeouts++
    // past the per-connection stream limit the server resets new streams before reading them
    if (end === 'reset') {
      if (raw.replies.length === 0) ctx.stats.refusedStreams++
      else ctx.stats.resetByServer++
    }
    checkRawReplies(ctx, raw, [{ requestId: peekRequestId(bytes) ?? 0, decoded: tryDecode(bytes) }], end === 'clean')
    return 1
  }))
  return frames.reduce<number>((a, b) => a + b, 0)
}

/** OPEN_SESSION floods: random ids, lengths up to MAX_LENGTH, odd spans; held briefly, then dropped. */
const openFlood: Episode = async (ctx, node, rng, budget) => {
  const k = Math.min(budget, rng.int(1, 24))
  const ch = await openFuzzChannel(ctx, node)
  if (ch === undefined) return 0
  const replies = await Promise.all(Array.from({ length: k }, async () => {
    const [startBlock, endBlock] = rng.chance(0.7) ? [0, ctx.m.numLayers] : randomSpan(rng, ctx.m)
    const maxLength = rng.pick([ctx.m.maxPositions, ctx.m.maxPositions, rng.int(1, ctx.m.maxPositions), 0x7fffff, MAX_LENGTH, rng.int(1, MAX_LENGTH)])
    return await request(ctx, ch, { type: FrameType.OPEN_SESSION, sessionId: rng.sessionId(), startBlock, endBlock, maxLength })
  }))
  for (const r of replies) if (!(r instanceof Error) && r.type !== FrameType.ACK) ctx.stats.violation(`OPEN answered ${codeOf(r)}`)
  const hold = rng.pick([0, 0, rng.int(1, 50), rng.int(50, 300)])
  if (hold > 0) await new Promise(resolve => setTimeout(resolve, hold))
  if (rng.chance(0.5)) ch.abort('fuzzer drops the flood')
  else await ch.close({ timeoutMs: ctx.timeoutMs })
  return k
}

/**
 * A real session abused from inside: correct steps interleaved with wrong positions, hidden sizes,
 * spans, overlong inputs, NaN/Inf payloads, unknown ids, random CLOSEs, double OPENs; each reply is
 * checked against the code that mistake deserves.
 */
const sessionAbuse: Episode = async (ctx, node, rng, budget) => {
  const k = Math.min(budget, rng.int(2, 40))
  const ch = await openFuzzChannel(ctx, node)
  if (ch === undefined) return 0
  const { m } = ctx
  const sid = rng.sessionId()
  const span: [number, number] = rng.chance(0.7) ? [0, m.numLayers] : [rng.int(0, m.numLayers - 1), m.numLayers]
  const capacity = rng.int(8, 256)
  let open = false
  let position = 0
  let frames = 0
  const expectCode = (r: Frame | Error, want: string, what: string): void => {
    const got = codeOf(r)
    if (got === want) return
    if (r instanceof Error && r.name !== 'RemoteError') return // timeouts and closed channels are counted apart
    ctx.stats.violation(`${what}: expected ${want}, got ${got}${r instanceof Error ? ` (${r.message})` : ''}`)
  }
  const forward = (over: Partial<FrameInit> & { tokens: number }, specials = false): FrameInit => {
    const dtype = over.dtype ?? (rng.chance(0.5) ? DType.F32 : DType.F16)
    const hiddenSize = over.hiddenSize ?? m.hiddenSize
    return {
      type: FrameType.FORWARD, sessionId: sid, dtype, startBlock: span[0], endBlock: span[1], position, hiddenSize,
      ...over,
      payload: tensor(rng, over.tokens, hiddenSize, dtype, specials)
    }
  }
  try {
    const r = await request(ctx, ch, { type: FrameType.OPEN_SESSION, sessionId: sid, startBlock: span[0], endBlock: span[1], maxLength: capacity })
    frames++
    open = !(r instanceof Error)
    if (r instanceof Error && codeOf(r) !== 'BUSY') expectCode(r, 'ACK', 'OPEN')
    while (frames < k && !ctx.stopped()) {
      const action = rng.weighted({
        step: 8, specials: 2, wrongPosition: 3, wrongHidden: 2, wrongSpan: 2, overlong: 1, unknownSession: 2, closeRandom: 2, reopen: 1, closeOwn: 1
      })
      frames++
      const room = capacity - position
      if (action === 'step' || action === 'specials') {
        const tokens = Math.max(1, Math.min(room, rng.int(1, 8)))
        const r = await request(ctx, ch, forward({ tokens }, action === 'specials'))
        if (!open) expectCode(r, 'UNKNOWN_SESSION', 'FORWARD on a session that is not open')
        else if (room < 1) expectCode(r, 'TOO_LARGE', 'FORWARD past the session length')
        else expectCode(r, 'RESULT', `FORWARD at ${position}`)
        if (!(r instanceof Error)) {
          if (r.position !== position || r.tokens !== tokens || r.hiddenSize !== m.hiddenSize) ctx.stats.violation('RESULT header does not match the request')
          position += tokens
        }
      } else if (action === 'wrongPosition') {
        const wrong = rng.pick([position + 1, Math.max(0, position - 1) === position ? position + 2 : position - 1, rng.int(position + 1, MAX_LENGTH), MAX_LENGTH])
        const r = await request(ctx, ch, forward({ tokens: 1, position: wrong }))
        expectCode(r, open ? 'WRONG_POSITION' : 'UNKNOWN_SESSION', `FORWARD at ${wrong} instead of ${position}`)
      } else if (action === 'wrongHidden') {
        const hiddenSize = rng.pick([1, m.hiddenSize - 1, m.hiddenSize + 1, 2 * m.hiddenSize, rng.int(1, 512)]) || 1
        const r = await request(ctx, ch, forward({ tokens: 1, hiddenSize }))
        expectCode(r, !open ? 'UNKNOWN_SESSION' : hiddenSize === m.hiddenSize ? 'RESULT' : 'WRONG_SHAPE', `FORWARD with hidden size ${hiddenSize}`)
        if (!(r instanceof Error)) position += 1
      } else if (action === 'wrongSpan') {
        const [a, b] = rng.pick<[number, number]>([[span[0], span[1] + 1], [span[0] + 1, span[1] + 1], [0, 1], [span[0], span[1] - 1]].filter(([x, y]) => x < y && (x !== span[0] || y !== span[1])) as Array<[number, number]>)
        const r = await request(ctx, ch, forward({ tokens: 1, startBlock: a, endBlock: b }))
        expectCode(r, open ? 'WRONG_SHAPE' : 'UNKNOWN_SESSION', `FORWARD for blocks [${a}, ${b}) in a [${span[0]}, ${span[1]}) session`)
      } else if (action === 'overlong') {
        const tokens = room + rng.int(1, 64)
        const r = await request(ctx, ch, forward({ tokens }))
        expectCode(r, open ? 'TOO_LARGE' : 'UNKNOWN_SESSION', `FORWARD of ${tokens} tokens with room for ${room}`)
      } else if (action === 'unknownSession') {
        const r = await request(ctx, ch, { ...forward({ tokens: 1 }), sessionId: rng.sessionId() })
        expectCode(r, 'UNKNOWN_SESSION', 'FORWARD on a random session id')
      } else if (action === 'closeRandom') {
        const r = await request(ctx, ch, { type: FrameType.CLOSE_SESSION, sessionId: rng.sessionId() })
        expectCode(r, 'ACK', 'CLOSE of a random id')
      } else if (action === 'reopen') {
        const r = await request(ctx, ch, { type: FrameType.OPEN_SESSION, sessionId: sid, startBlock: span[0], endBlock: span[1], maxLength: capacity })
        if (open && codeOf(r) !== 'BUSY') expectCode(r, 'BAD_FRAME', 'a second OPEN of an open session')
        else if (!(r instanceof Error)) {
          open = true
          position = 0
        }
      } else {
        const r = await request(ctx, ch, { type: FrameType.CLOSE_SESSION, sessionId: sid })
        expectCode(r, 'ACK', 'CLOSE of the own session')
        open = false
        position = 0
      }
    }
  } finally {
    const how = rng.weighted({ closeFrame: 2, closeStream: 2, reset: 1 })
    if (how === 'closeFrame' && frames < k) {
      frames++
      await request(ctx, ch, { type: FrameType.CLOSE_SESSION, sessionId: sid })
    }
    if (how === 'reset') ch.abort('fuzzer resets its session')
    else await ch.close({ timeoutMs: ctx.timeoutMs })
  }
  return frames
}

export const EPISODES: Record<string, { run: Episode, weight: number, node: 'worker' | 'parallel' }> = {
  rawMutated: { run: rawMutated, weight: 40, node: 'worker' },
  sessionAbuse: { run: sessionAbuse, weight: 22, node: 'worker' },
  openFlood: { run: openFlood, weight: 10, node: 'worker' },
  rawGarbage: { run: rawGarbage, weight: 8, node: 'worker' },
  rawReset: { run: rawReset, weight: 10, node: 'worker' },
  rawOversize: { run: rawOversize, weight: 3, node: 'worker' },
  parallelStreams: { run: parallelStreams, weight: 3, node: 'parallel' }
}
