// What a fuzz run is asked to do and what it reports.

export interface FuzzOptions {
  /** Frames (length-prefixed messages or raw garbage writes) to send. */
  frames: number
  seed?: number
  /** Concurrent fuzzing loops. Default 8. */
  workers?: number
  /** The model the server runs (a Hugging Face directory). */
  modelDir: string
  prompts?: string[]
  maxNewTokens?: number
  /** A request or stream without an answer for this long counts as a timeout. Default 15 s. */
  replyTimeoutMs?: number
  /** --max-sessions of the server (the capacity probe fills it afterwards). Default 16. */
  maxSessions?: number
  /** Give up fuzzing after this long (the run then fails). Default 15 min. */
  deadlineMs?: number
  /** Only these episode kinds (default: all of them, weighted). */
  kinds?: string[]
  log?: (line: string) => void
}

export interface GenerationCheck { prompt: string, ids: number[], reference: number[], equal: boolean }

export interface FuzzReport {
  ok: boolean
  seed: number
  framesRequested: number
  framesSent: number
  bytesSent: number
  fuzzMs: number
  /** CPU time used during the fuzz by the server process and by this one (fuzzers and the normal client). */
  serverCpuMs: number
  fuzzerCpuMs: number
  totalMs: number
  framesPerSecond: number
  episodes: Record<string, { episodes: number, frames: number }>
  /** Replies by kind: ACK, RESULT, or the ERROR code name. */
  replies: Record<string, number>
  /** Requests (channel) or streams (raw) left without an answer for replyTimeoutMs. */
  timeouts: number
  /** Well-delimited frames on a cleanly ended stream that got no reply. */
  missingReplies: number
  /** Replies that break an invariant (wrong request id, BAD_FRAME expected, empty error message…). */
  violations: number
  violationSamples: string[]
  /** ERROR INTERNAL replies: a handler failed in a way nobody anticipated. */
  internalErrors: number
  channelFailures: { dialFailed: number, refusedStreams: number, resetByServer: number, closedDuringRequest: number }
  crashes: number
  server: {
    exit: { code: number | null, signal: string | null } | null
    stoppedCleanly: boolean
    rssStartMiB: number | null
    rssPeakMiB: number | null
    rssEndMiB: number | null
    /** [frames sent, RSS MiB] every 5 s of the fuzz. */
    rssTimeline: Array<[number, number]>
    stderrLines: number
    stderrTail: string[]
    suspiciousLogLines: string[]
  }
  heartbeat: { sent: number, failed: number, p50Ms: number, maxMs: number }
  probes: {
    oversizeFrame: string
    partialFrameHeld: string
    crossPeerClose: string
    starvation: string
    capacityAfter: { wanted: number, opened: number, waitedMs: number }
  }
  normal: {
    generations: number
    rounds: number
    overlappedFuzz: boolean
    busyRetries: number
    longestGenerationMs: number
    failures: string[]
    equal: boolean
    checks: GenerationCheck[]
  }
  final: { equal: boolean, checks: GenerationCheck[], error?: string }
  errorSamples: Record<string, string[]>
}
