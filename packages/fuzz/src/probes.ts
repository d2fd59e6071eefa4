// One-off probes after the fuzz: each checks one limit or guarantee of the server directly.
import { DType, ErrorCode, FrameType, errorCodeName, frameTypeName, bytesOf, encodeFrame, newSessionId, type Channel, type MingaNode } from '@minga/p2p'
import { encode as varint } from 'uint8-varint'
import { codeOf, type Ctx, openFuzzChannel, openRaw, request } from './episodes.ts'

/** A full frame one byte over the limit: TOO_LARGE, and the same stream still works afterwards. */
export async function probeOversizeFrame (ctx: Ctx, node: MingaNode): Promise<string> {
  const raw = await openRaw(ctx, node)
  if (raw === undefined) return 'could not open a stream'
  const limit = 64 << 20
  const head = encodeFrame({ type: FrameType.CLOSE_SESSION, requestId: 4242, sessionId: newSessionId() })
  const body = new Uint8Array(limit + 1 - head.length)
  ctx.stats.sent(limit + 1)
  await raw.send(varint(limit + 1))
  await raw.send(head)
  for (let off = 0; off < body.length; off += 1 << 20) if (!await raw.send(body.subarray(off, Math.min(body.length, off + (1 << 20))))) break
  const follow = encodeFrame({ type: FrameType.CLOSE_SESSION, requestId: 4343, sessionId: newSessionId() })
  ctx.stats.sent(follow.length)
  await raw.sendMessage(follow)
  const end = await raw.finish()
  if (end === 'timeout') ctx.stats.timeouts++
  for (const r of raw.replies) ctx.stats.replyFrame(r)
  const [a, b] = raw.replies
  const ok = a?.requestId === 4242 && a.errorCode === ErrorCode.TOO_LARGE && b?.requestId === 4343 && b.type === FrameType.ACK
  if (!ok) ctx.stats.violation(`oversize frame probe: ${JSON.stringify(raw.replies.map(r => [r.requestId, frameTypeName(r.type), errorCodeName(r.errorCode)]))}, stream ${end}`)
  return ok ? 'TOO_LARGE, then the stream carried on (ACK)' : `unexpected: ${raw.replies.length} replies, stream ${end}`
}

/** Half a frame, then silence: does the server ever give up on the stream? */
export async function probePartialFrame (ctx: Ctx, node: MingaNode, holdMs: number): Promise<string> {
  const raw = await openRaw(ctx, node)
  if (raw === undefined) return 'could not open a stream'
  const frame = encodeFrame({ type: FrameType.CLOSE_SESSION, requestId: 1, sessionId: newSessionId() })
  ctx.stats.sent(frame.length)
  await raw.send(varint(frame.length))
  await raw.send(frame.subarray(0, 20))
  const started = Date.now()
  while (Date.now() - started < holdMs && raw.alive && !ctx.stopped()) await new Promise(resolve => setTimeout(resolve, 100))
  const held = Date.now() - started
  const alive = raw.alive
  raw.abort()
  return alive ? `server still waiting after ${held} ms (no read deadline: a stream slot is held until the peer goes away)` : `server dropped the stream after ${held} ms`
}

/** Can a different peer close a session it did not open, knowing its id? */
export async function probeCrossPeerClose (ctx: Ctx, owner: MingaNode, other: MingaNode): Promise<string> {
  const a = await openFuzzChannel(ctx, owner)
  const b = await openFuzzChannel(ctx, other)
  try {
    if (a === undefined || b === undefined) return 'could not open channels'
    const sid = newSessionId()
    const opened = await request(ctx, a, { type: FrameType.OPEN_SESSION, sessionId: sid, startBlock: 0, endBlock: ctx.m.numLayers, maxLength: 4 })
    if (opened instanceof Error) return `could not open a session: ${opened.message}`
    const closed = await request(ctx, b, { type: FrameType.CLOSE_SESSION, sessionId: sid })
    const after = await request(ctx, a, {
      type: FrameType.FORWARD, sessionId: sid, dtype: DType.F32, startBlock: 0, endBlock: ctx.m.numLayers, position: 0, tokens: 1, hiddenSize: ctx.m.hiddenSize, payload: bytesOf(new Float32Array(ctx.m.hiddenSize))
    })
    return codeOf(after) === 'UNKNOWN_SESSION'
      ? `another peer's CLOSE (${codeOf(closed)}) ended the session: ids are bearer tokens`
      : `another peer's CLOSE was answered ${codeOf(closed)} and the owner's FORWARD got ${codeOf(after)}`
  } finally {
    await a?.close({ timeoutMs: 2000 })
    await b?.close({ timeoutMs: 2000 })
  }
}

/**
 * After the fuzz: can `wanted` sessions of the full context be open at once (no leaked sessions or
 * cache)? Spread over several peers, since a server may also limit sessions per peer.
 */
export async function probeCapacity (ctx: Ctx, nodes: MingaNode[], wanted: number, waitMs: number): Promise<{ wanted: number, opened: number, waitedMs: number }> {
  const started = Date.now()
  let best = 0
  for (let attempt = 0; attempt < 100; attempt++) {
    const chs = (await Promise.all(nodes.map(async n => await openFuzzChannel(ctx, n)))).filter((c): c is Channel => c !== undefined)
    let opened = 0
    for (let i = 0; i < wanted; i++) {
      let ok = false
      for (let k = 0; k < chs.length && !ok; k++) {
        const r = await chs[(i + k) % chs.length].request({ type: FrameType.OPEN_SESSION, sessionId: newSessionId(), startBlock: 0, endBlock: ctx.m.numLayers, maxLength: ctx.m.maxPositions }).catch((err: Error) => err)
        ok = !(r instanceof Error)
      }
      if (!ok) break
      opened++
    }
    await Promise.all(chs.map(async c => { await c.close({ timeoutMs: 2000 }) }))
    best = Math.max(best, opened)
    if (opened === wanted || Date.now() - started > waitMs) break
    await new Promise(resolve => setTimeout(resolve, 250))
  }
  return { wanted, opened: best, waitedMs: Date.now() - started }
}

/** Can a few peers that open sessions and just hold them lock every newcomer out? */
export async function probeStarvation (ctx: Ctx, flooders: MingaNode[], newcomer: MingaNode, maxSessions: number): Promise<string> {
  const chs = (await Promise.all(flooders.map(async n => await openFuzzChannel(ctx, n)))).filter((c): c is Channel => c !== undefined)
  const fresh = await openFuzzChannel(ctx, newcomer)
  try {
    const held: number[] = []
    for (const ch of chs) {
      let n = 0
      for (let i = 0; i < maxSessions; i++) {
        const r = await ch.request({ type: FrameType.OPEN_SESSION, sessionId: newSessionId(), startBlock: 0, endBlock: ctx.m.numLayers, maxLength: ctx.m.maxPositions }).catch((err: Error) => err)
        if (r instanceof Error) break
        n++
      }
      held.push(n)
    }
    if (fresh === undefined) return 'could not open a channel for the newcomer'
    const r = await fresh.request({ type: FrameType.OPEN_SESSION, sessionId: newSessionId(), startBlock: 0, endBlock: ctx.m.numLayers, maxLength: 16 }).catch((err: Error) => err)
    const total = held.reduce((a, b) => a + b, 0)
    return `${chs.length} peers held ${total} full-length sessions (${held.join(' + ')}); a new peer's OPEN then got ${codeOf(r)}${r instanceof Error ? ` ("${r.message}")` : ''}`
  } finally {
    await Promise.all([...chs, ...(fresh !== undefined ? [fresh] : [])].map(async c => { await c.close({ timeoutMs: 2000 }) }))
  }
}
