// Request/response channel over one libp2p stream: the client pipelines frames tagged with request
// ids and matches the replies. The server answers the frames of different sessions concurrently (so
// one client's sessions sharing a stream reach the executor together and can run as one batch),
// those of one session one after another, and writes the replies in request order. It stops reading
// while too many frames or bytes are in hand, so a fast client meets backpressure instead of
// unbounded buffering.

import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { Connection, Libp2p, PeerId, ServiceMap, Stream } from '@libp2p/interface'
import {
  ChannelClosedError, FrameError, FrameTooLargeError, InvalidArgumentError, RemoteError, TimeoutError
} from './errors.ts'
import {
  DEFAULT_MAX_FRAME_BYTES, ErrorCode, FrameType, HEADER_BYTES, decodeFrame, encodeFrameParts, errorCodeName,
  errorFrame, frameText, frameTypeName, peekRequestId, sessionIdToHex, type Frame, type FrameInit
} from './frames.ts'
import { AnswerQueue } from './answer-queue.ts'
import type { MingaNode } from './node.ts'
import { LpReader, isOversize, writeMessage } from './wire.ts'

/** Protocol id of minga's inference channel. */
export const INFERENCE_PROTOCOL = '/minga/inference/1.0.0'
/** Protocol id on which a chain's last hop (or a hop whose next link broke) reports to the client. */
export const CHAIN_PROTOCOL = '/minga/chain/1.0.0'

/** Streams stay open while idle for this long (a decode session may pause between steps). */
export const DEFAULT_IDLE_TIMEOUT_MS = 30 * 60 * 1000
export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000
/** How long a server waits for a frame to finish arriving once it has started: a slow link sends 64 MiB in it. */
export const DEFAULT_MESSAGE_TIMEOUT_MS = 60_000
/** Frames of one stream a server answers at once: room for every session of one client to batch. */
export const DEFAULT_MAX_FRAMES_IN_FLIGHT = 64

type AnyNode = MingaNode | Libp2p<ServiceMap>

function libp2pOf (node: AnyNode): Libp2p<ServiceMap> {
  return 'libp2p' in node ? node.libp2p as unknown as Libp2p<ServiceMap> : node
}

/** Error names (from this package and @minga/engine) mapped to wire error codes. */
const CODE_BY_ERROR_NAME: Record<string, number> = {
  FrameError: ErrorCode.BAD_FRAME,
  FrameTooLargeError: ErrorCode.TOO_LARGE,
  TimeoutError: ErrorCode.TIMEOUT,
  UnknownSessionError: ErrorCode.UNKNOWN_SESSION,
  ShapeError: ErrorCode.WRONG_SHAPE,
  PositionError: ErrorCode.WRONG_POSITION,
  SessionLimitError: ErrorCode.BUSY,
  ContextLengthError: ErrorCode.TOO_LARGE,
  InvalidArgumentError: ErrorCode.BAD_FRAME
}

/** The wire error code for an error thrown by a handler. */
export function errorCodeFor (err: unknown): number {
  const e = err as { errorCode?: unknown, name?: unknown } | null
  if (typeof e?.errorCode === 'number' && Number.isInteger(e.errorCode) && e.errorCode > 0 && e.errorCode <= 0xffff) return e.errorCode
  if (typeof e?.name === 'string' && CODE_BY_ERROR_NAME[e.name] !== undefined) return CODE_BY_ERROR_NAME[e.name]
  return ErrorCode.INTERNAL
}

function messageOf (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** Frame sizes must also fit the muxer: streams buffer up to this before pausing/resetting. */
function tuneStream (stream: Stream, maxFrameBytes: number, idleTimeoutMs: number): void {
  // Data already in flight when we pause (up to yamux's stream window) lands in this buffer.
  stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, maxFrameBytes + 32 * 1024 * 1024)
  stream.inactivityTimeout = idleTimeoutMs
}

// ---- client ---------------------------------------------------------------------------------

export interface ChannelOptions {
  /** Largest frame sent or accepted (header + hops + payload). Default 64 MiB. */
  maxFrameBytes?: number
  /** Default per-request timeout. Default 60 s. */
  timeoutMs?: number
  /** Stream inactivity timeout. Default 30 min. */
  idleTimeoutMs?: number
  /** Aborts dialing/protocol negotiation. */
  signal?: AbortSignal
}

export interface RequestOptions {
  timeoutMs?: number
  signal?: AbortSignal
}

export interface Channel {
  readonly remotePeer: PeerId
  readonly protocol: string
  readonly stream: Stream
  readonly closed: boolean
  /** Requests waiting for a reply. */
  readonly pending: number
  /**
   * Sends a frame (its requestId is assigned by the channel) and resolves with the reply. Rejects
   * with RemoteError (`.code`) when the server answers ERROR, TimeoutError after the timeout,
   * FrameTooLargeError/FrameError before sending a bad frame, ChannelClosedError if the stream dies.
   */
  request(frame: FrameInit, opts?: RequestOptions): Promise<Frame>
  /** Waits (up to timeoutMs) for replies still pending, fails the rest, then closes the stream gracefully. */
  close(opts?: { timeoutMs?: number }): Promise<void>
  /** Resets the stream at once; pending requests fail with ChannelClosedError. */
  abort(reason?: string): void
}

interface Pending {
  resolve: (f: Frame) => void
  reject: (e: Error) => void
  timer: ReturnType<typeof setTimeout>
  type: number
  onAbort?: () => void
  signal?: AbortSignal
}

function toDialTarget (peer: PeerId | Multiaddr | string): PeerId | Multiaddr {
  if (typeof peer !== 'string') return peer
  try {
    return peer.startsWith('/') ? multiaddr(peer) : peerIdFromString(peer)
  } catch (err) {
    throw new InvalidArgumentError(`cannot dial "${peer}": not a multiaddr or peer id (${messageOf(err)})`)
  }
}

/** Opens a stream to `peer` on `protocol` and returns a pipelining request/response channel over it. */
export async function openChannel (node: AnyNode, peer: PeerId | Multiaddr | string, protocol: string = INFERENCE_PROTOCOL, opts: ChannelOptions = {}): Promise<Channel> {
  const libp2p = libp2pOf(node)
  const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
  const defaultTimeout = opts.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
  const connection = await libp2p.dial(toDialTarget(peer), { signal: opts.signal })
  const stream = await connection.newStream(protocol, { signal: opts.signal, runOnLimitedConnection: true })
  tuneStream(stream, maxFrameBytes, opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS)
  const remotePeer = connection.remotePeer
  const reader = new LpReader(stream, { maxLength: maxFrameBytes })
  const pending = new Map<number, Pending>()
  let nextId = 1
  let closed = false
  let closeError: Error | undefined
  let drained: (() => void) | undefined
  let closingLocally = false

  const settle = (id: number): Pending | undefined => {
    const p = pending.get(id)
    if (p === undefined) return undefined
    pending.delete(id)
    clearTimeout(p.timer)
    if (p.onAbort !== undefined) p.signal?.removeEventListener('abort', p.onAbort)
    if (pending.size === 0) drained?.()
    return p
  }

  const failAll = (err: Error): void => {
    closed = true
    closeError ??= err
    for (const id of [...pending.keys()]) settle(id)?.reject(err)
    drained?.()
  }

  stream.addEventListener('close', (evt) => {
    failAll(new ChannelClosedError(`channel to ${remotePeer.toString()} closed${evt.error != null ? `: ${evt.error.message}` : ''}`))
  })

  void (async () => {
    try {
      while (true) {
        const msg = await reader.read()
        if (msg === null) {
          failAll(new ChannelClosedError(`channel to ${remotePeer.toString()} was closed by the remote`))
          return
        }
        if (isOversize(msg)) {
          const id = peekRequestId(msg.head)
          if (id !== undefined) settle(id)?.reject(new FrameTooLargeError(`reply of ${msg.tooLarge} bytes exceeds the limit of ${maxFrameBytes}`))
          continue
        }
        let frame: Frame
        try {
          frame = decodeFrame(msg, { maxPayloadBytes: maxFrameBytes })
        } catch (err) {
          const id = peekRequestId(msg)
          if (id !== undefined) settle(id)?.reject(err as Error)
          continue
        }
        const p = settle(frame.requestId)
        if (p === undefined) continue // a late reply to a request that timed out
        if (frame.type === FrameType.ERROR) p.reject(new RemoteError(frame.errorCode, errorCodeName(frame.errorCode), frameText(frame)))
        else p.resolve(frame)
      }
    } catch (err) {
      if (closingLocally) return // close()/abort() released the reader: nothing went wrong
      failAll(err instanceof Error && err.name === 'ChannelClosedError' ? err : new ChannelClosedError(`channel to ${remotePeer.toString()} failed: ${messageOf(err)}`))
      stream.abort(err as Error)
    }
  })()

  const allocId = (): number => {
    for (let i = 0; i < 0x100000; i++) {
      const id = nextId
      nextId = nextId >= 0xffffffff ? 1 : nextId + 1
      if (!pending.has(id)) return id
    }
    throw new Error('no free request id')
  }

  const channel: Channel = {
    remotePeer,
    protocol,
    stream,
    get closed () { return closed },
    get pending () { return pending.size },

    async request (init: FrameInit, ropts: RequestOptions = {}): Promise<Frame> {
      if (closed) throw closeError ?? new ChannelClosedError('channel is closed')
      ropts.signal?.throwIfAborted()
      const id = allocId()
      const [head, payload] = encodeFrameParts({ ...init, requestId: id })
      const size = head.length + payload.length
      if (size > maxFrameBytes) throw new FrameTooLargeError(`frame of ${size} bytes exceeds the limit of ${maxFrameBytes}`)
      const timeoutMs = ropts.timeoutMs ?? defaultTimeout
      const reply = new Promise<Frame>((resolve, reject) => {
        const timer = setTimeout(() => {
          settle(id)?.reject(new TimeoutError(`${frameTypeName(init.type)} request ${id} to ${remotePeer.toString()} got no reply within ${timeoutMs} ms`))
        }, timeoutMs)
        const p: Pending = { resolve, reject, timer, type: init.type }
        if (ropts.signal !== undefined) {
          p.signal = ropts.signal
          p.onAbort = () => { settle(id)?.reject(ropts.signal?.reason instanceof Error ? ropts.signal.reason : new Error('aborted')) }
          ropts.signal.addEventListener('abort', p.onAbort, { once: true })
        }
        pending.set(id, p)
      })
      // the reply may be rejected (channel closed) while we are still writing: mark it handled now
      reply.catch(() => {})
      try {
        await writeMessage(stream, [head, payload], ropts.signal)
      } catch (err) {
        settle(id)?.reject(closed ? (closeError ?? new ChannelClosedError('channel closed')) : new ChannelClosedError(`could not send to ${remotePeer.toString()}: ${messageOf(err)}`))
      }
      return await reply
    },

    async close (copts: { timeoutMs?: number } = {}): Promise<void> {
      if (pending.size > 0 && !closed) {
        await Promise.race([
          new Promise<void>(resolve => { drained = resolve }),
          new Promise<void>(resolve => setTimeout(resolve, copts.timeoutMs ?? defaultTimeout).unref())
        ])
      }
      closingLocally = true
      failAll(new ChannelClosedError('channel closed locally'))
      reader.release()
      try {
        await stream.close({ signal: AbortSignal.timeout(5000) })
      } catch {
        stream.abort(new Error('close timed out'))
      }
    },

    abort (reason = 'channel aborted locally'): void {
      closingLocally = true
      failAll(new ChannelClosedError(reason))
      reader.release()
      stream.abort(new ChannelClosedError(reason))
    }
  }
  return channel
}

// ---- server ---------------------------------------------------------------------------------

export interface FrameContext {
  connection: Connection
  stream: Stream
}

/** Answers one frame: return the reply (requestId and, by default, sessionId are filled in) or throw. */
export type FrameHandler = (frame: Frame, peer: PeerId, ctx: FrameContext) => FrameInit | Promise<FrameInit>

export interface HandleChannelOptions {
  /** Largest frame accepted; bigger ones are skipped and answered TOO_LARGE. Default 64 MiB. */
  maxFrameBytes?: number
  /** Concurrent channels (streams) per connection. Default 64. */
  maxInboundStreams?: number
  /** Stream inactivity timeout. Default 30 min. */
  idleTimeoutMs?: number
  /** A frame must arrive whole within this long of its first byte, or its stream is aborted. Default 60 s. */
  messageTimeoutMs?: number
  /** Frames of one stream being answered at once (each session's in order). Default 64. */
  maxFramesInFlight?: number
  /** Called for errors a handler threw (after they were turned into ERROR frames) and for dead streams. */
  onError?: (err: unknown, peer: PeerId) => void
  /** Called once per frame answered, for metrics: bytes read and written, and the error code if it was refused. */
  onAnswered?: (answer: { bytesIn: number, bytesOut: number, errorCode?: number }) => void
}

export interface ChannelServer {
  readonly protocol: string
  /** Open server-side streams. */
  readonly streams: number
  /** Unregisters the protocol and resets open streams. */
  close(): Promise<void>
}

/** Registers `protocol` on the node and serves request/response channels with `onFrame`. */
export async function handleChannel (node: AnyNode, protocol: string, onFrame: FrameHandler, opts: HandleChannelOptions = {}): Promise<ChannelServer> {
  const libp2p = libp2pOf(node)
  const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
  const idleTimeoutMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS
  const maxFramesInFlight = opts.maxFramesInFlight ?? DEFAULT_MAX_FRAMES_IN_FLIGHT
  const open = new Set<Stream>()

  const reply = async (stream: Stream, init: FrameInit, bytesIn: number): Promise<void> => {
    let parts: [Uint8Array, Uint8Array]
    let errorCode = init.type === FrameType.ERROR ? init.errorCode : undefined
    try {
      parts = encodeFrameParts(init)
      if (parts[0].length + parts[1].length > maxFrameBytes) {
        throw new FrameTooLargeError(`reply of ${parts[0].length + parts[1].length} bytes exceeds the limit of ${maxFrameBytes}`)
      }
    } catch (err) {
      // the handler produced something we cannot send: tell the client instead of dying
      errorCode = errorCodeFor(err)
      parts = encodeFrameParts(errorFrame(init.requestId ?? 0, errorCode, `bad reply from handler: ${messageOf(err)}`))
    }
    await writeMessage(stream, parts)
    opts.onAnswered?.({ bytesIn, bytesOut: parts[0].length + parts[1].length, errorCode })
  }

  const serve = async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer
    tuneStream(stream, maxFrameBytes, idleTimeoutMs)
    open.add(stream)
    const reader = new LpReader(stream, { maxLength: maxFrameBytes, headBytes: HEADER_BYTES, messageTimeoutMs: opts.messageTimeoutMs ?? DEFAULT_MESSAGE_TIMEOUT_MS })
    const answers = new AnswerQueue(stream, reply, maxFramesInFlight, maxFrameBytes)
    const handle = async (frame: Frame): Promise<FrameInit> => {
      try {
        const out = await onFrame(frame, peer, { connection, stream })
        return { ...out, requestId: frame.requestId, sessionId: out.sessionId ?? frame.sessionId }
      } catch (err) {
        opts.onError?.(err, peer)
        return errorFrame(frame.requestId, errorCodeFor(err), messageOf(err), frame.sessionId)
      }
    }
    try {
      while (true) {
        const msg = await reader.read()
        if (msg === null) break
        if (isOversize(msg)) {
          await answers.add(msg.tooLarge, undefined, () => errorFrame(peekRequestId(msg.head) ?? 0, ErrorCode.TOO_LARGE, `frame of ${msg.tooLarge} bytes exceeds the limit of ${maxFrameBytes}`))
          continue
        }
        let frame: Frame
        try {
          frame = decodeFrame(msg, { maxPayloadBytes: maxFrameBytes })
        } catch (err) {
          await answers.add(msg.length, undefined, () => errorFrame(peekRequestId(msg) ?? 0, ErrorCode.BAD_FRAME, messageOf(err)))
          continue
        }
        await answers.add(msg.length, sessionIdToHex(frame.sessionId), async () => await handle(frame))
      }
      await answers.drained()
      await stream.close({ signal: AbortSignal.timeout(5000) })
    } catch (err) {
      // a dead or abusive stream: drop it, the node and other streams carry on
      if (!(err instanceof FrameError) && !(err instanceof Error && err.name === 'ChannelClosedError')) opts.onError?.(err, peer)
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    } finally {
      reader.release()
      open.delete(stream)
    }
  }

  await libp2p.handle(protocol, (stream, connection) => { void serve(stream, connection) }, {
    maxInboundStreams: opts.maxInboundStreams ?? 64,
    maxOutboundStreams: opts.maxInboundStreams ?? 64,
    // relayed connections are limited (bytes, duration) by the relay; sessions may run over them
    runOnLimitedConnection: true
  })

  return {
    protocol,
    get streams () { return open.size },
    async close () {
      await libp2p.unhandle(protocol)
      for (const s of open) s.abort(new ChannelClosedError('server closed'))
      open.clear()
    }
  }
}
