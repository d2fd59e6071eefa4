// The wire handlers: inference frames in, span executor calls, frames out. Sessions belong to the
// stream that opened them and are freed when it closes or when they sit idle too long. Who may open
// sessions (an allow list) and how many one peer may hold are checked here too, and so is the
// shutdown: first no new sessions, then ("moving") none of the old ones either. A step may come from
// the session's owner or, in a chain, from a peer the owner named at OPEN_SESSION; what happens next
// in the chain is forwarding.ts's job.
import type { PeerId, Stream } from '@libp2p/interface'
import type { SpanExecutor } from '@minga/engine'
import {
  DType, ErrorCode, FrameFlag, FrameType, ProtocolError, encodeTensor, f16ToF32, frameTypeName, q8ToF32, sessionIdToHex, tensorBytes,
  type Frame, type FrameContext, type FrameInit
} from '@minga/p2p'
import { hopPeerId, type ChainForwarder } from './forwarding.ts'

export interface SessionHandlerInit {
  executor: SpanExecutor
  /** Sessions idle for longer are closed ("expired"). */
  idleTimeoutMs: number
  /** Sessions one peer may hold at once. Default: no limit besides the executor's. */
  maxSessionsPerPeer?: number
  /** Only these peers (peer id strings) may open sessions. Default: anyone. */
  allow?: ReadonlySet<string>
  /** Times each FORWARD step (span "start:end", tokens, seconds). */
  onForward?: (span: string, tokens: number, seconds: number) => void
  /** Sends chained steps on; without it, next hops are ignored (the client relays). */
  chain?: ChainForwarder
  log: (message: string) => void
}

/** The message FORWARD gets once a stopping server's drain is over; clients move to another server. */
export const MOVING_MESSAGE = 'moving: this server is shutting down, continue elsewhere'

// Keyed by the Stream object: stream ids are only unique within one connection.
interface OpenSession {
  start: number
  end: number
  lastUsed: number
  stream: Stream
  /** The owner: the peer that opened the session. */
  peer: string
  /** Peers the owner allows to forward steps into the session (a chain's previous hop). */
  upstream: ReadonlySet<string>
  /** "start:end", for metrics */
  span: string
}

export class SessionHandler {
  private readonly sessions = new Map<string, OpenSession>()
  private readonly expired = new Set<string>()
  private readonly watchedStreams = new WeakSet<Stream>()
  private readonly perPeer = new Map<string, number>()
  private readonly sweeper: ReturnType<typeof setInterval>
  private emptyWaiters: Array<() => void> = []
  /** Refuses new sessions while the server drains. */
  accepting = true
  /** After the drain: FORWARD on the remaining sessions answers BUSY "moving: …" and closes them. */
  moving = false

  constructor (private readonly init: SessionHandlerInit) {
    this.sweeper = setInterval(() => { void this.closeIdle() }, Math.max(250, Math.min(init.idleTimeoutMs / 4, 30_000)))
    this.sweeper.unref()
  }

  get openSessions (): number {
    return this.sessions.size
  }

  /** Resolves once no session is open (at once if none is). */
  async whenEmpty (): Promise<void> {
    if (this.sessions.size === 0) return
    await new Promise<void>(resolve => { this.emptyWaiters.push(resolve) })
  }

  readonly onFrame = async (frame: Frame, peer: PeerId, ctx: FrameContext): Promise<FrameInit> => {
    switch (frame.type) {
      case FrameType.OPEN_SESSION: return await this.open(frame, peer.toString(), ctx)
      case FrameType.FORWARD: return await this.forward(frame, peer.toString())
      case FrameType.CLOSE_SESSION: return await this.close(frame, peer.toString())
      default: throw new ProtocolError(ErrorCode.BAD_FRAME, `a server does not accept ${frameTypeName(frame.type)} frames`)
    }
  }

  async stop (): Promise<void> {
    clearInterval(this.sweeper)
    await Promise.all([...this.sessions.keys()].map(async id => { await this.release(id) }))
  }

  private async open (frame: Frame, peer: string, ctx: FrameContext): Promise<FrameInit> {
    const { executor, allow, maxSessionsPerPeer } = this.init
    if (allow != null && !allow.has(peer)) throw new ProtocolError(ErrorCode.NOT_ALLOWED, `not allowed: peer ${peer} is not on this server's allow list`)
    if (!this.accepting) throw new ProtocolError(ErrorCode.BUSY, 'busy: this server is shutting down')
    const id = sessionIdToHex(frame.sessionId)
    const held = this.perPeer.get(peer) ?? 0
    if (maxSessionsPerPeer != null && held >= maxSessionsPerPeer) {
      throw new ProtocolError(ErrorCode.BUSY, `busy: peer ${peer} already has ${held} session${held === 1 ? '' : 's'} open (at most ${maxSessionsPerPeer} per peer)`)
    }
    // counted before the (async) executor call, so concurrent opens cannot overshoot the limit
    this.perPeer.set(peer, held + 1)
    try {
      await executor.openSession(id, frame.maxLength, { start: frame.startBlock, end: frame.endBlock })
    } catch (err) {
      this.uncount(peer)
      throw err
    }
    if (isClosed(ctx.stream)) {
      // the stream died while the session opened: its 'close' event has passed, nobody would free it
      this.uncount(peer)
      await executor.closeSession(id).catch(err => { this.init.log(`closing session ${id}: ${err.message}`) })
      throw new ProtocolError(ErrorCode.NOT_ALLOWED, `the stream that opened session ${id} has closed`)
    }
    const upstream = new Set(frame.nextHops.map(h => hopPeerId(h.peer)))
    this.sessions.set(id, { start: frame.startBlock, end: frame.endBlock, lastUsed: Date.now(), stream: ctx.stream, peer, upstream, span: `${frame.startBlock}:${frame.endBlock}` })
    this.watchStream(ctx)
    return { type: FrameType.ACK, sessionId: frame.sessionId }
  }

  private async forward (frame: Frame, peer: string): Promise<FrameInit> {
    const id = sessionIdToHex(frame.sessionId)
    const session = this.usableBy(id, peer)
    if (session == null) {
      if (this.expired.has(id)) throw new ProtocolError(ErrorCode.EXPIRED, `expired: session ${id} was idle for over ${this.init.idleTimeoutMs} ms and was closed`)
      throw new ProtocolError(ErrorCode.UNKNOWN_SESSION, `unknown session ${id}`)
    }
    if (this.moving) {
      await this.release(id)
      throw new ProtocolError(ErrorCode.BUSY, `${MOVING_MESSAGE} (session ${id} is closed)`)
    }
    if (frame.startBlock !== session.start || frame.endBlock !== session.end) {
      throw new ProtocolError(ErrorCode.WRONG_SHAPE, `session ${id} runs blocks [${session.start}, ${session.end}), not [${frame.startBlock}, ${frame.endBlock})`)
    }
    const { hiddenSize } = this.init.executor.config
    if (frame.hiddenSize !== hiddenSize) throw new ProtocolError(ErrorCode.WRONG_SHAPE, `hidden size ${frame.hiddenSize} does not match the model's ${hiddenSize}`)
    const fromOwner = session.peer === peer
    if (fromOwner && frame.stack !== 1) throw new ProtocolError(ErrorCode.WRONG_SHAPE, `a client's FORWARD carries one tensor, not ${frame.stack}`)
    session.lastUsed = Date.now()
    const started = performance.now()
    const out = await this.init.executor.forward(id, inputOf(frame), { tokens: frame.tokens, position: frame.position })
    this.init.onForward?.(session.span, frame.tokens, (performance.now() - started) / 1000)
    session.lastUsed = Date.now()
    const payload = encodeTensor(out, frame.dtype)
    const { chain } = this.init
    const chained = chain != null && (frame.nextHops.length > 0 || !fromOwner)
    if (chained) {
      // (from upstream: the outputs so far, this one appended; a copy, small for decode steps)
      const outputs = fromOwner ? payload : concat(frame.payload, payload)
      chain.continue({ frame, owner: session.peer, payload: outputs, stack: fromOwner ? 1 : frame.stack + 1, fromOwner })
    }
    // the previous hop of a chain only needs to know that the step was taken
    if (!fromOwner) return { type: FrameType.ACK, sessionId: frame.sessionId }
    return {
      type: FrameType.RESULT,
      // tells the client the step went on down the chain (a server that does not forward leaves it unset)
      flags: chained ? FrameFlag.FORWARDED : 0,
      sessionId: frame.sessionId,
      dtype: frame.dtype,
      startBlock: session.start,
      endBlock: session.end,
      position: frame.position,
      tokens: frame.tokens,
      hiddenSize,
      payload
    }
  }

  private async close (frame: Frame, peer: string): Promise<FrameInit> {
    const id = sessionIdToHex(frame.sessionId)
    if (this.ownedBy(id, peer) != null) await this.release(id)
    return { type: FrameType.ACK, sessionId: frame.sessionId }
  }

  /** A session as seen by `peer`: another peer's session is as good as unknown (its id stays secret). */
  private ownedBy (id: string, peer: string): OpenSession | undefined {
    const session = this.sessions.get(id)
    return session?.peer === peer ? session : undefined
  }

  /**
   * A session `peer` may send steps to: its own, or one whose owner named it as the upstream hop
   * (and, on a server with an allow list, only if that list has it too).
   */
  private usableBy (id: string, peer: string): OpenSession | undefined {
    const session = this.sessions.get(id)
    if (session == null) return undefined
    if (session.peer === peer) return session
    const { allow } = this.init
    return session.upstream.has(peer) && (allow == null || allow.has(peer)) ? session : undefined
  }

  private async release (id: string): Promise<void> {
    const session = this.sessions.get(id)
    if (session == null) return
    this.sessions.delete(id)
    this.uncount(session.peer)
    try {
      await this.init.executor.closeSession(id).catch(err => { this.init.log(`closing session ${id}: ${err.message}`) })
    } finally {
      if (this.sessions.size === 0) {
        const waiters = this.emptyWaiters
        this.emptyWaiters = []
        for (const resolve of waiters) resolve()
      }
    }
  }

  private uncount (peer: string): void {
    const held = (this.perPeer.get(peer) ?? 0) - 1
    if (held > 0) this.perPeer.set(peer, held)
    else this.perPeer.delete(peer)
  }

  private watchStream ({ stream }: FrameContext): void {
    if (this.watchedStreams.has(stream)) return
    this.watchedStreams.add(stream)
    stream.addEventListener('close', () => {
      for (const [id, session] of this.sessions) if (session.stream === stream) void this.release(id)
    })
  }

  private async closeIdle (): Promise<void> {
    const cutoff = Date.now() - this.init.idleTimeoutMs
    for (const [id, session] of this.sessions) {
      if (session.lastUsed >= cutoff) continue
      this.expired.add(id)
      if (this.expired.size > 10_000) this.expired.delete(this.expired.values().next().value!)
      this.init.log(`session ${id} expired after ${this.init.idleTimeoutMs} ms idle`)
      await this.release(id)
    }
  }
}

function isClosed (stream: Stream): boolean {
  return stream.status === 'closed' || stream.status === 'aborted' || stream.status === 'reset'
}

/**
 * The step's input (the frame's last stacked tensor) as an owned f32 array, ready to hand to the
 * worker (one copy or conversion).
 */
function inputOf (frame: Frame): Float32Array {
  const count = frame.tokens * frame.hiddenSize
  const bytes = frame.payload.subarray(frame.payload.length - tensorBytes(frame.dtype, count))
  const out = new Float32Array(count)
  if (frame.dtype === DType.F16) {
    const halves = new Uint16Array(count)
    new Uint8Array(halves.buffer).set(bytes)
    f16ToF32(halves, out)
  } else if (frame.dtype === DType.Q8) {
    q8ToF32(bytes, out)
  } else if (frame.dtype === DType.F32) {
    new Uint8Array(out.buffer).set(bytes)
  } else {
    throw new ProtocolError(ErrorCode.BAD_FRAME, 'FORWARD needs an f32, f16 or q8 tensor')
  }
  return out
}

function concat (a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length)
  out.set(a, 0)
  out.set(b, a.length)
  return out
}
