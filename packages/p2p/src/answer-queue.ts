// The frames of one server-side stream being answered. Frames of different sessions are answered at
// once (so one client's sessions, sharing a stream, reach the executor together and can run as one
// batch); frames of one session one after another, in arrival order; and replies leave in request
// order, each after the one before it. Adding waits while the queue holds too many frames or bytes:
// that is the backpressure a fast client meets.
import type { Stream } from '@libp2p/interface'
import type { FrameInit } from './frames.ts'

type WriteReply = (stream: Stream, init: FrameInit, bytesIn: number) => Promise<void>

export class AnswerQueue {
  private frames = 0
  private bytes = 0
  private lastWrite: Promise<void> = Promise.resolve()
  private readonly sessionTails = new Map<string, Promise<void>>()
  private failure: Error | undefined
  private wake: (() => void) | undefined

  constructor (
    private readonly stream: Stream,
    private readonly writeReply: WriteReply,
    private readonly maxFrames: number,
    private readonly maxBytes: number
  ) {}

  /**
   * Queues a frame of `bytes` bytes, answered by `answer` (which must not throw) once the earlier
   * frames of `session` are answered. Waits for room first; throws once a reply could not be written.
   */
  async add (bytes: number, session: string | undefined, answer: () => FrameInit | Promise<FrameInit>): Promise<void> {
    // (a frame always gets in when nothing else is queued, however large)
    while (this.failure === undefined && this.frames > 0 && (this.frames >= this.maxFrames || this.bytes + bytes > this.maxBytes)) {
      await new Promise<void>(resolve => { this.wake = resolve })
    }
    if (this.failure !== undefined) throw this.failure
    this.frames++
    this.bytes += bytes
    const after = session === undefined ? undefined : this.sessionTails.get(session)
    const result = after === undefined ? Promise.resolve().then(answer) : after.then(answer)
    if (session !== undefined) {
      const tail = result.then(() => {}, () => {})
      this.sessionTails.set(session, tail)
      void tail.then(() => { if (this.sessionTails.get(session) === tail) this.sessionTails.delete(session) })
    }
    const previous = this.lastWrite
    this.lastWrite = (async () => {
      try {
        const out = await result
        await previous
        if (this.failure === undefined) await this.writeReply(this.stream, out, bytes)
      } catch (err) {
        this.fail(err)
      } finally {
        this.frames--
        this.bytes -= bytes
        const wake = this.wake
        this.wake = undefined
        wake?.()
      }
    })()
  }

  /** Resolves once every queued frame is answered; throws if a reply could not be written. */
  async drained (): Promise<void> {
    await this.lastWrite
    if (this.failure !== undefined) throw this.failure
  }

  private fail (err: unknown): void {
    if (this.failure !== undefined) return
    this.failure = err instanceof Error ? err : new Error(String(err))
    // the reader may be waiting for frames that no longer matter: end the stream
    this.stream.abort(this.failure)
  }
}
