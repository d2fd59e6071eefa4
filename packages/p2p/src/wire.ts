// Length-prefixed message I/O on one libp2p 3 stream, with backpressure.
//
// The bytes on the wire are exactly lpStream's (@libp2p/utils): an unsigned varint length, then the
// message, so either end may use lpStream instead. We do not use lpStream for reading because:
//  - it buffers whatever arrives with no backpressure (yamux grants window on receipt, not on
//    consumption) and resets the stream once its buffer overflows, so a client that pipelines a few
//    large frames would get its stream killed; this reader pauses the stream instead (yamux then
//    stops granting window and the sender's `send()` waits for 'drain');
//  - on an oversize message it throws before reading the body, leaving the stream unusable; this
//    reader reports the size and the first bytes (to recover a request id) and skips the body, so the
//    server can answer TOO_LARGE and keep the channel;
//  - a message that arrives in one chunk is returned as a view of it, not copied.
// Writing sends [varint + header] and the payload as two chunks so a large payload is not copied
// here (small messages are coalesced into one buffer: a copy of a few KiB is cheaper than an extra
// muxer frame).

import type { Stream } from '@libp2p/interface'
import { ChannelClosedError, FrameError, FrameTooLargeError, TimeoutError } from './errors.ts'
import { encode as varintEncode } from 'uint8-varint'

/** A message that exceeded maxLength: its announced size and its first bytes (≤ headBytes). */
export interface OversizeMessage {
  tooLarge: number
  head: Uint8Array
}

export interface LpReaderOptions {
  /** Largest message accepted; bigger ones are skipped and reported as OversizeMessage. */
  maxLength: number
  /** Messages larger than this are not skipped: read() throws FrameTooLargeError (abort the stream). Default 4 × maxLength. */
  maxSkipBytes?: number
  /** How many bytes of an oversize message to keep for the caller. Default 64. */
  headBytes?: number
  /** Bytes buffered beyond the message being read before the stream is paused. Default 1 MiB. */
  highWaterMark?: number
  /**
   * A message must arrive whole within this long of its first byte, or read() throws TimeoutError
   * (the caller aborts the stream): a half-sent frame must not hold a stream forever. Default: none.
   */
  messageTimeoutMs?: number
}

const MAX_VARINT_BYTES = 5 // lengths up to 2^35; we only accept < 2^32 anyway

type Chunks = Iterable<Uint8Array>

export class LpReader {
  readonly #stream: Stream
  readonly #maxLength: number
  readonly #maxSkip: number
  readonly #headBytes: number
  readonly #hwm: number
  readonly #messageTimeoutMs: number | undefined
  readonly #chunks: Uint8Array[] = []
  #offset = 0 // read offset into #chunks[0]
  #buffered = 0
  #need = 0 // bytes the pending read is waiting for
  #ended = false
  #error: Error | undefined
  #wake: (() => void) | undefined
  #reading = false

  constructor (stream: Stream, opts: LpReaderOptions) {
    this.#stream = stream
    this.#maxLength = opts.maxLength
    this.#maxSkip = opts.maxSkipBytes ?? opts.maxLength * 4
    this.#headBytes = opts.headBytes ?? 64
    this.#hwm = opts.highWaterMark ?? 1024 * 1024
    this.#messageTimeoutMs = opts.messageTimeoutMs
    stream.addEventListener('message', this.#onMessage)
    stream.addEventListener('remoteCloseWrite', this.#onEnd)
    stream.addEventListener('close', this.#onClose)
    if (stream.readStatus === 'closed' || stream.remoteWriteStatus === 'closed') this.#ended = true
  }

  /** Bytes received but not yet read. */
  get buffered (): number {
    return this.#buffered
  }

  /** Detach from the stream (the stream itself is left alone). */
  release (): void {
    this.#stream.removeEventListener('message', this.#onMessage)
    this.#stream.removeEventListener('remoteCloseWrite', this.#onEnd)
    this.#stream.removeEventListener('close', this.#onClose)
    this.#ended = true
    this.#error ??= new ChannelClosedError('reader released')
    this.#notify()
  }

  readonly #onMessage = (evt: { data: Uint8Array | Chunks }): void => {
    const data = evt.data
    if (data instanceof Uint8Array) {
      this.#append(data)
    } else {
      for (const chunk of data) this.#append(chunk)
    }
    this.#flow()
    this.#notify()
  }

  readonly #onEnd = (): void => {
    this.#ended = true
    this.#notify()
  }

  readonly #onClose = (evt: { error?: Error }): void => {
    this.#ended = true
    if (evt.error != null) this.#error = evt.error
    this.#notify()
  }

  #append (chunk: Uint8Array): void {
    if (chunk.length === 0) return
    this.#chunks.push(chunk)
    this.#buffered += chunk.length
  }

  #notify (): void {
    const wake = this.#wake
    this.#wake = undefined
    wake?.()
  }

  /** Pause the stream when far more than needed is buffered; resume when it drains. */
  #flow (): void {
    const limit = this.#need + this.#hwm
    const s = this.#stream
    try {
      if (this.#buffered > limit && s.readStatus === 'readable') s.pause()
      else if (this.#buffered <= limit && s.readStatus === 'paused') s.resume()
    } catch {
      // the stream is closing: nothing to regulate any more
    }
  }

  /** Waits until n bytes are buffered or the stream has ended; throws only when `deadline` passes. */
  async #fill (n: number, deadline?: number): Promise<void> {
    while (this.#buffered < n && !this.#ended) {
      this.#need = n
      // resuming a paused stream may deliver the bytes synchronously: re-check before sleeping
      this.#flow()
      if (this.#buffered >= n || this.#ended) continue
      if (deadline != null && Date.now() >= deadline) {
        throw new TimeoutError(`a message was not completed within ${this.#messageTimeoutMs} ms of its first byte (${this.#buffered} of ${n} bytes)`)
      }
      let timer: ReturnType<typeof setTimeout> | undefined
      await new Promise<void>(resolve => {
        this.#wake = resolve
        if (deadline != null) timer = setTimeout(resolve, deadline - Date.now())
      })
      clearTimeout(timer)
    }
  }

  async #waitFor (n: number, deadline?: number): Promise<void> {
    await this.#fill(n, deadline)
    if (this.#buffered < n) {
      if (this.#error != null) throw new ChannelClosedError(`stream closed: ${this.#error.message}`)
      throw new ChannelClosedError(`stream ended with ${this.#buffered} of ${n} bytes of a message`)
    }
  }

  #consume (n: number): void {
    this.#buffered -= n
    while (n > 0) {
      const head = this.#chunks[0]
      const avail = head.length - this.#offset
      if (avail > n) {
        this.#offset += n
        return
      }
      n -= avail
      this.#chunks.shift()
      this.#offset = 0
    }
  }

  /** The next n buffered bytes: a view when they lie in one chunk, else one copy. */
  #take (n: number): Uint8Array {
    const head = this.#chunks[0]
    let out: Uint8Array
    if (n === 0) {
      out = new Uint8Array(0)
    } else if (head.length - this.#offset >= n) {
      out = head.subarray(this.#offset, this.#offset + n)
    } else {
      out = new Uint8Array(n)
      let off = 0
      let i = 0
      let start = this.#offset
      while (off < n) {
        const c = this.#chunks[i++]
        const piece = Math.min(c.length - start, n - off)
        out.set(c.subarray(start, start + piece), off)
        off += piece
        start = 0
      }
    }
    this.#consume(n)
    return out
  }

  /** Decodes the varint at the read position: [value, bytes] or undefined if incomplete. */
  #peekVarint (): [number, number] | undefined {
    let value = 0
    let scale = 1
    let i = 0
    for (let c = 0, start = this.#offset; c < this.#chunks.length; c++, start = 0) {
      const chunk = this.#chunks[c]
      for (let j = start; j < chunk.length; j++) {
        const b = chunk[j]
        value += (b & 0x7f) * scale
        scale *= 128
        i++
        if ((b & 0x80) === 0) return [value, i]
        if (i >= MAX_VARINT_BYTES) throw new FrameError(`message length prefix longer than ${MAX_VARINT_BYTES} bytes`)
      }
    }
    return undefined
  }

  /**
   * Reads the next message: its bytes, an OversizeMessage (body skipped), or null on a clean end of
   * stream. Throws ChannelClosedError if the stream dies mid-message, FrameError on a garbage length
   * prefix, FrameTooLargeError on a message too big to skip. Not re-entrant: one reader loop per stream.
   */
  async read (): Promise<Uint8Array | OversizeMessage | null> {
    if (this.#reading) throw new Error('LpReader.read() is not re-entrant')
    this.#reading = true
    try {
      let prefix: [number, number] | undefined
      // The clock starts at the message's first byte: waiting between messages is not timed.
      let deadline: number | undefined
      const startClock = (): void => { if (this.#messageTimeoutMs != null) deadline ??= Date.now() + this.#messageTimeoutMs }
      while ((prefix = this.#peekVarint()) === undefined) {
        if (this.#ended) {
          if (this.#buffered === 0 && this.#error == null) return null
          if (this.#buffered === 0) throw new ChannelClosedError(`stream closed: ${this.#error?.message ?? 'unknown'}`)
          throw new ChannelClosedError('stream ended inside a length prefix')
        }
        if (this.#buffered > 0) startClock()
        // an end here, between messages, is the clean end of the stream: the checks above sort it out
        await this.#fill(this.#buffered + 1, deadline)
      }
      startClock()
      const [length, prefixBytes] = prefix
      this.#consume(prefixBytes)
      if (length > this.#maxLength) {
        if (length > this.#maxSkip) throw new FrameTooLargeError(`message of ${length} bytes exceeds ${this.#maxLength} (and is too large to skip)`)
        const keep = Math.min(length, this.#headBytes)
        await this.#waitFor(keep, deadline)
        const head = new Uint8Array(this.#take(keep)) // a copy: the chunk may be a pooled Buffer
        let left = length - keep
        while (left > 0) {
          if (this.#buffered === 0) await this.#waitFor(1, deadline)
          const n = Math.min(left, this.#buffered)
          this.#consume(n)
          left -= n
        }
        return { tooLarge: length, head }
      }
      await this.#waitFor(length, deadline)
      const msg = this.#take(length)
      return msg
    } finally {
      this.#need = 0
      this.#reading = false
      this.#flow()
    }
  }
}

export function isOversize (m: Uint8Array | OversizeMessage): m is OversizeMessage {
  return !(m instanceof Uint8Array)
}

/** Messages up to this size are copied into one buffer before sending; larger ones are sent as chunks. */
const COALESCE_BYTES = 64 * 1024


/**
 * Writes one length-prefixed message given as chunks (e.g. [header, payload]); the chunks are
 * queued by reference, not copied, so do not modify them until the returned promise resolves.
 * Concurrent calls are safe: each message's chunks are queued synchronously, in order.
 */
export async function writeMessage (stream: Stream, chunks: Uint8Array[], signal?: AbortSignal): Promise<void> {
  let total = 0
  for (const c of chunks) total += c.length
  const prefix = varintEncode(total)
  let ok: boolean
  if (total <= COALESCE_BYTES) {
    // small message (a decode step): one buffer, so one muxer frame, one noise message, one syscall
    const all = new Uint8Array(prefix.length + total)
    all.set(prefix, 0)
    let off = prefix.length
    for (const c of chunks) { all.set(c, off); off += c.length }
    ok = stream.send(all)
  } else {
    // large message (a prefill): queue the payload by reference instead of copying it
    const first = chunks[0] ?? new Uint8Array(0)
    const head = new Uint8Array(prefix.length + first.length)
    head.set(prefix, 0)
    head.set(first, prefix.length)
    ok = stream.send(head)
    for (let i = 1; i < chunks.length; i++) {
      if (chunks[i].length > 0) ok = stream.send(chunks[i])
    }
  }
  if (!ok) await stream.onDrain({ signal })
}
