// The wire handlers: inference frames in, span executor calls, frames out. Sessions belong to the
// stream that opened them and are freed when it closes or when they sit idle too long.
import type { PeerId } from '@libp2p/interface'
import type { SpanExecutor } from '@minga/engine'
import {
  DType, ErrorCode, FrameType, ProtocolError, f16ToF32, f32ToF16, frameTypeName, sessionIdToHex,
  type Frame, type FrameContext, type FrameInit
} from '@minga/p2p'

export interface SessionHandlerInit {
  executor: SpanExecutor
  /** Sessions idle for longer are closed ("expired"). */
  idleTimeoutMs: number
  log: (message: string) => void
}

interface OpenSession { start: number, end: number, lastUsed: number, streamId: string }

export class SessionHandler {
  private readonly sessions = new Map<string, OpenSession>()
  private readonly expired = new Set<string>()
  private readonly watchedStreams = new Set<string>()
  private readonly sweeper: ReturnType<typeof setInterval>
  /** Refuses new sessions while the server drains. */
  accepting = true

  constructor (private readonly init: SessionHandlerInit) {
    this.sweeper = setInterval(() => { void this.closeIdle() }, Math.max(250, Math.min(init.idleTimeoutMs / 4, 30_000)))
    this.sweeper.unref()
  }

  get openSessions (): number {
    return this.sessions.size
  }

  readonly onFrame = async (frame: Frame, peer: PeerId, ctx: FrameContext): Promise<FrameInit> => {
    switch (frame.type) {
      case FrameType.OPEN_SESSION: return await this.open(frame, ctx)
      case FrameType.FORWARD: return await this.forward(frame)
      case FrameType.CLOSE_SESSION: return await this.close(frame)
      default: throw new ProtocolError(ErrorCode.BAD_FRAME, `a server does not accept ${frameTypeName(frame.type)} frames`)
    }
  }

  async stop (): Promise<void> {
    clearInterval(this.sweeper)
    await Promise.all([...this.sessions.keys()].map(async id => { await this.release(id) }))
  }

  private async open (frame: Frame, ctx: FrameContext): Promise<FrameInit> {
    if (!this.accepting) throw new ProtocolError(ErrorCode.BUSY, 'busy: this server is shutting down')
    const id = sessionIdToHex(frame.sessionId)
    const { executor } = this.init
    await executor.openSession(id, frame.maxLength, { start: frame.startBlock, end: frame.endBlock })
    this.sessions.set(id, { start: frame.startBlock, end: frame.endBlock, lastUsed: Date.now(), streamId: ctx.stream.id })
    this.watchStream(ctx)
    return { type: FrameType.ACK, sessionId: frame.sessionId }
  }

  private async forward (frame: Frame): Promise<FrameInit> {
    const id = sessionIdToHex(frame.sessionId)
    const session = this.sessions.get(id)
    if (session == null) {
      if (this.expired.has(id)) throw new ProtocolError(ErrorCode.EXPIRED, `expired: session ${id} was idle for over ${this.init.idleTimeoutMs} ms and was closed`)
      throw new ProtocolError(ErrorCode.UNKNOWN_SESSION, `unknown session ${id}`)
    }
    if (frame.startBlock !== session.start || frame.endBlock !== session.end) {
      throw new ProtocolError(ErrorCode.WRONG_SHAPE, `session ${id} runs blocks [${session.start}, ${session.end}), not [${frame.startBlock}, ${frame.endBlock})`)
    }
    const { hiddenSize } = this.init.executor.config
    if (frame.hiddenSize !== hiddenSize) throw new ProtocolError(ErrorCode.WRONG_SHAPE, `hidden size ${frame.hiddenSize} does not match the model's ${hiddenSize}`)
    session.lastUsed = Date.now()
    const hidden = toFloat32(frame)
    const out = await this.init.executor.forward(id, hidden, { tokens: frame.tokens, position: frame.position })
    session.lastUsed = Date.now()
    return {
      type: FrameType.RESULT,
      sessionId: frame.sessionId,
      dtype: frame.dtype,
      startBlock: session.start,
      endBlock: session.end,
      position: frame.position,
      tokens: frame.tokens,
      hiddenSize,
      payload: fromFloat32(out, frame.dtype)
    }
  }

  private async close (frame: Frame): Promise<FrameInit> {
    await this.release(sessionIdToHex(frame.sessionId))
    return { type: FrameType.ACK, sessionId: frame.sessionId }
  }

  private async release (id: string): Promise<void> {
    if (!this.sessions.delete(id)) return
    await this.init.executor.closeSession(id).catch(err => { this.init.log(`closing session ${id}: ${err.message}`) })
  }

  private watchStream ({ stream }: FrameContext): void {
    if (this.watchedStreams.has(stream.id)) return
    this.watchedStreams.add(stream.id)
    stream.addEventListener('close', () => {
      this.watchedStreams.delete(stream.id)
      for (const [id, session] of this.sessions) if (session.streamId === stream.id) void this.release(id)
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

/** The frame's tensor as an owned f32 array, ready to hand to the worker (one copy or conversion). */
function toFloat32 (frame: Frame): Float32Array {
  const count = frame.tokens * frame.hiddenSize
  if (frame.dtype === DType.F16) {
    const halves = new Uint16Array(count)
    new Uint8Array(halves.buffer).set(frame.payload)
    const out = new Float32Array(count)
    f16ToF32(halves, out)
    return out
  }
  if (frame.dtype !== DType.F32) throw new ProtocolError(ErrorCode.BAD_FRAME, 'FORWARD needs an f32 or f16 tensor')
  const out = new Float32Array(count)
  new Uint8Array(out.buffer).set(frame.payload)
  return out
}

function fromFloat32 (values: Float32Array, dtype: number): Uint8Array {
  if (dtype !== DType.F16) return new Uint8Array(values.buffer, values.byteOffset, values.byteLength)
  const halves = new Uint16Array(values.length)
  f32ToF16(values, halves)
  return new Uint8Array(halves.buffer)
}
