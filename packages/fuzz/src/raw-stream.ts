// A stream spoken to byte by byte (not through a Channel), so malformed and partial frames can be sent
// and every reply matched to what was sent.
import { FrameType, LpReader, decodeFrame, writeMessage, type Channel } from '@minga/p2p'

type Stream = Channel['stream']

interface ReplySummary { type: number, errorCode: number, requestId: number, text: string }

/** A libp2p stream on the inference protocol written byte by byte, with every reply collected. */
export class RawStream {
  readonly replies: ReplySummary[] = []
  undecodable = 0
  end: 'clean' | 'reset' | undefined
  private readonly reader: LpReader
  private readonly done: Promise<void>

  closeReason = ''

  constructor (readonly stream: Stream, private readonly timeoutMs: number) {
    stream.addEventListener('close', (evt: any) => { this.closeReason = evt.error != null ? `${evt.local === true ? 'local' : 'remote'} ${evt.error.name}: ${evt.error.message}` : 'clean' })
    this.reader = new LpReader(stream, { maxLength: 64 << 20 })
    this.done = this.loop()
  }

  private async loop (): Promise<void> {
    try {
      while (true) {
        const msg = await this.reader.read()
        if (msg === null) {
          this.end = 'clean'
          return
        }
        if (!(msg instanceof Uint8Array)) {
          this.undecodable++ // an oversize reply
          continue
        }
        try {
          const f = decodeFrame(msg, { maxPayloadBytes: 64 << 20 })
          this.replies.push({ type: f.type, errorCode: f.errorCode, requestId: f.requestId, text: f.type === FrameType.ERROR ? new TextDecoder().decode(f.payload) : '' })
        } catch {
          this.undecodable++
        }
      }
    } catch (err: any) {
      this.end ??= 'reset'
      this.readError = String(err?.message ?? err)
    }
  }

  readError = ''

  get alive (): boolean { return this.end === undefined && this.stream.status === 'open' }

  /** Raw bytes, no length prefix. False if the stream is gone. */
  async send (bytes: Uint8Array): Promise<boolean> {
    try {
      if (!this.stream.send(bytes)) await this.stream.onDrain({ signal: AbortSignal.timeout(this.timeoutMs) })
      return true
    } catch {
      return false
    }
  }

  /** One length-prefixed message. */
  async sendMessage (body: Uint8Array): Promise<boolean> {
    try {
      await writeMessage(this.stream, [body], AbortSignal.timeout(this.timeoutMs))
      return true
    } catch {
      return false
    }
  }

  /** Closes our writable end and waits for the server to finish: 'clean', 'reset' or 'timeout'. */
  async finish (): Promise<'clean' | 'reset' | 'timeout'> {
    try {
      await this.stream.close({ signal: AbortSignal.timeout(this.timeoutMs) })
    } catch {}
    let timer: ReturnType<typeof setTimeout> | undefined
    const timedOut = await Promise.race([
      this.done.then(() => false),
      new Promise<boolean>(resolve => { timer = setTimeout(() => { resolve(true) }, this.timeoutMs) })
    ])
    clearTimeout(timer)
    if (timedOut) {
      this.abort()
      return 'timeout'
    }
    return this.end ?? 'reset'
  }

  abort (): void {
    this.end ??= 'reset'
    try { this.stream.abort(new Error('fuzzer reset')) } catch {}
    this.reader.release()
  }
}
