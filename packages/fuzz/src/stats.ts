// Counters that the fuzzing loops share while a run goes on; the report is made from them.
import { FrameType, errorCodeName, frameTypeName } from '@minga/p2p'

export class Stats {
  framesSent = 0
  bytesSent = 0
  episodes: Record<string, { episodes: number, frames: number }> = {}
  replies: Record<string, number> = {}
  timeouts = 0
  missingReplies = 0
  violations = 0
  violationSamples: string[] = []
  internalErrors = 0
  dialFailed = 0
  refusedStreams = 0
  resetByServer = 0
  closedDuringRequest = 0
  errorSamples: Record<string, string[]> = {}

  sent (bytes: number, frames = 1): void {
    this.framesSent += frames
    this.bytesSent += bytes
  }

  episode (kind: string, frames: number): void {
    const e = (this.episodes[kind] ??= { episodes: 0, frames: 0 })
    e.episodes++
    e.frames += frames
  }

  reply (kind: string, message?: string): void {
    this.replies[kind] = (this.replies[kind] ?? 0) + 1
    if (kind === 'INTERNAL') this.internalErrors++
    if (message !== undefined) {
      const samples = (this.errorSamples[kind] ??= [])
      // one sample per message shape (ids and numbers blanked)
      const shape = message.replace(/[0-9a-f]{32}/g, '<id>').replace(/\d+/g, 'N')
      if (samples.length < 6 && !samples.some(s => s.replace(/[0-9a-f]{32}/g, '<id>').replace(/\d+/g, 'N') === shape)) samples.push(message.slice(0, 200))
    }
  }

  replyFrame (f: { type: number, errorCode: number, text: string }): void {
    if (f.type === FrameType.ERROR) this.reply(errorCodeName(f.errorCode), f.text)
    else this.reply(frameTypeName(f.type))
  }

  violation (what: string): void {
    this.violations++
    if (this.violationSamples.length < 20) this.violationSamples.push(what)
  }
}
