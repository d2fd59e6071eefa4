// Wire fuzzer: a real `minga serve` process takes random and mutated inference frames over libp2p
// while a normal client keeps generating through it. The server must not crash or hang, must answer
// every well-delimited frame (with a clear ERROR when it is wrong), and the normal client's output
// must equal the local engine's.
//
//   node --import tsx scripts/fuzz.ts [--frames N] [--seed S] [--workers W] [--kinds K,…] [--json]
//
//   --workers W   concurrent fuzzing loops (default 8); --kinds a,b  only these episode kinds
//   --model DIR   default ../shared/models/stories260k; --json  the whole report as one JSON line
//
// Exit status 0 when the server survived (no crash, clean shutdown), the normal session and a fresh
// one after the fuzz equal the local engine, and no invariant broke (no timeout, no missing reply, no
// violation, no INTERNAL error, every session slot free again afterwards); 1 otherwise.
// Inputs are seeded (each worker draws its episodes from its own generator), so a run sends the
// same frames again for the same seed; replies that depend on timing (BUSY) may differ.
import '../packages/p2p/src/polyfill.ts'
import { readFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { createClient, type MingaClient } from '@minga/client'
import { createLocalModel, loadModelConfig } from '@minga/engine'
import {
  DType, ErrorCode, FrameType, HEADER_BYTES, INFERENCE_PROTOCOL, LpReader, MAX_LENGTH, bytesOf, createMingaNode, decodeFrame,
  encodeFrame, errorCodeName, f32ToF16, frameTypeName, newSessionId, openChannel, peekRequestId, writeMessage,
  type Channel, type Frame, type FrameInit, type MingaNode
} from '@minga/p2p'
import { STORIES } from '../packages/engine/test/helpers.ts'
import { startNode, type NodeProcess } from './swarm-processes.ts'
import { encode as varint } from 'uint8-varint'

type Stream = Channel['stream']
type PeerId = Channel['remotePeer']

// ---- seeded randomness ------------------------------------------------------------------------

/** sfc32, seeded through splitmix32: small, fast, and the same sequence on every platform. */
export class Rng {
  private a: number
  private b: number
  private c: number
  private d: number

  constructor (seed: number, stream = 0) {
    let s = (seed ^ Math.imul(stream + 1, 0x9e3779b9)) >>> 0
    const next = (): number => {
      s = (s + 0x9e3779b9) >>> 0
      let z = s
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
      return (z ^ (z >>> 16)) >>> 0
    }
    this.a = next()
    this.b = next()
    this.c = next()
    this.d = next()
    for (let i = 0; i < 12; i++) this.u32()
  }

  u32 (): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0
    this.d = (this.d + 1) >>> 0
    this.a = this.b ^ (this.b >>> 9)
    this.b = (this.c + (this.c << 3)) >>> 0
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0
    this.c = (this.c + t) >>> 0
    return t
  }

  float (): number { return this.u32() / 4294967296 }
  /** Integer in [lo, hi], both inclusive. */
  int (lo: number, hi: number): number { return lo + Math.floor(this.float() * (hi - lo + 1)) }
  chance (p: number): boolean { return this.float() < p }
  pick<T> (xs: readonly T[]): T { return xs[Math.floor(this.float() * xs.length)] }
  normal (): number { return Math.sqrt(-2 * Math.log(1 - this.float())) * Math.cos(2 * Math.PI * this.float()) }
  weighted<K extends string> (weights: Record<K, number>): K {
    const entries = Object.entries(weights) as Array<[K, number]>
    let r = this.float() * entries.reduce((s, [, w]) => s + w, 0)
    for (const [k, w] of entries) if ((r -= w) < 0) return k
    return entries[entries.length - 1][0]
  }

  bytes (n: number): Uint8Array {
    const out = new Uint8Array(n)
    for (let i = 0; i < n; i += 4) {
      const v = this.u32()
      for (let k = 0; k < 4 && i + k < n; k++) out[i + k] = v >>> (8 * k)
    }
    return out
  }

  sessionId (): Uint8Array { return this.bytes(16) }
}

// ---- report -----------------------------------------------------------------------------------

export interface FuzzOptions {
  /** Frames (length-prefixed messages or raw garbage writes) to send. */
  frames: number
  seed?: number
  /** Concurrent fuzzing loops. Default 8. */
  workers?: number
  modelDir?: string
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

class Stats {
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

// ---- frame generation -------------------------------------------------------------------------

const U32_EDGES = [0, 1, 2, 63, 64, 65, 255, 256, 511, 512, 513, 0x7fff, 0x8000, 0xffff, 0x10000, 1 << 20, (1 << 20) + 1, 1 << 24, (1 << 24) + 1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff]
const U16_EDGES = [0, 1, 2, 4, 5, 6, 63, 64, 65, 0xff, 0x100, 0x7fff, 0x8000, 0xfffe, 0xffff]
const SPECIALS = [Number.NaN, Infinity, -Infinity, 3.4e38, -3.4e38, 1e-45, -0, 65504, 65520]

interface Model { hiddenSize: number, numLayers: number, maxPositions: number }

function tensor (rng: Rng, tokens: number, hidden: number, dtype: number, specials: boolean): Uint8Array {
  const values = new Float32Array(tokens * hidden)
  for (let i = 0; i < values.length; i++) values[i] = rng.normal()
  if (specials) {
    const n = rng.int(1, Math.max(1, values.length >> 2))
    for (let i = 0; i < n; i++) values[rng.int(0, values.length - 1)] = rng.pick(SPECIALS)
  }
  if (dtype === DType.F32) return bytesOf(values)
  const halves = new Uint16Array(values.length)
  if (specials && rng.chance(0.3)) {
    for (let i = 0; i < halves.length; i++) halves[i] = rng.u32() & 0xffff // any bit pattern, NaNs included
  } else {
    f32ToF16(values, halves)
  }
  return bytesOf(halves)
}

function randomSpan (rng: Rng, m: Model): [number, number] {
  const n = m.numLayers
  return rng.weighted({
    full: 6, sub: 2, beyond: 1, wild: 1
  }) === 'full'
    ? [0, n]
    : rng.pick<[number, number]>([[0, 1], [1, Math.max(2, n - 1)], [n - 1, n], [0, n + 1], [n, n + 2], [rng.int(0, 0xfffe), 0xffff], [2, 1000]])
}

/** A frame the encoder accepts (so correct on the wire), with random, often wrong, semantics. */
function randomFrame (rng: Rng, m: Model, known: Uint8Array[]): FrameInit {
  const kind = rng.weighted({ open: 22, forward: 45, close: 18, other: 15 })
  const sessionId = known.length > 0 && rng.chance(0.6) ? rng.pick(known) : rng.sessionId()
  const flags = rng.chance(0.1) ? rng.int(0, 255) : 0
  const nextHops = rng.chance(0.05)
    ? Array.from({ length: rng.int(1, 3) }, () => ({ peer: `12D3KooW${rng.int(0, 1e9)}`, startBlock: rng.int(0, 4), endBlock: rng.int(5, 9) }))
    : undefined
  if (kind === 'open') {
    const [startBlock, endBlock] = randomSpan(rng, m)
    const maxLength = rng.pick([1, rng.int(1, m.maxPositions), m.maxPositions, m.maxPositions + 1, 4096, MAX_LENGTH, rng.int(1, MAX_LENGTH)])
    return { type: FrameType.OPEN_SESSION, sessionId, startBlock, endBlock, maxLength, flags, nextHops }
  }
  if (kind === 'forward') {
    const dtype = rng.chance(0.5) ? DType.F32 : DType.F16
    const hiddenSize = rng.chance(0.8) ? m.hiddenSize : rng.pick([1, 32, m.hiddenSize - 1, m.hiddenSize + 1, 2 * m.hiddenSize, rng.int(1, 300)])
    const tokens = rng.chance(0.85) ? rng.int(1, 8) : rng.pick([rng.int(9, 64), m.maxPositions, m.maxPositions + 1, rng.int(1, 2048)])
    const [startBlock, endBlock] = rng.chance(0.8) ? [0, m.numLayers] : randomSpan(rng, m)
    const position = rng.chance(0.5) ? 0 : rng.pick([1, rng.int(0, 64), m.maxPositions, MAX_LENGTH, rng.int(0, MAX_LENGTH)])
    return { type: FrameType.FORWARD, sessionId, dtype, startBlock, endBlock, position, tokens, hiddenSize, payload: tensor(rng, tokens, hiddenSize, dtype, rng.chance(0.2)), flags, nextHops }
  }
  if (kind === 'close') return { type: FrameType.CLOSE_SESSION, sessionId, flags }
  const other = rng.pick([FrameType.RESULT, FrameType.ERROR, FrameType.ACK])
  if (other === FrameType.RESULT) return { type: other, sessionId, dtype: DType.F32, tokens: 1, hiddenSize: m.hiddenSize, payload: tensor(rng, 1, m.hiddenSize, DType.F32, false) }
  if (other === FrameType.ERROR) return { type: other, sessionId, errorCode: rng.int(1, 0xffff), payload: new TextEncoder().encode('not from a client') }
  return { type: other, sessionId }
}

/** Byte-level damage to an encoded frame (the result is still sent with a correct length prefix). */
function mutate (rng: Rng, frame: Uint8Array): Uint8Array {
  let bytes: Uint8Array = frame.slice()
  const n = rng.weighted({ zero: 3, one: 4, two: 2, many: 1 })
  const count = n === 'zero' ? 0 : n === 'one' ? 1 : n === 'two' ? 2 : rng.int(3, 8)
  for (let i = 0; i < count; i++) {
    const op = rng.weighted(MUTATIONS)
    const whole = bytes.length >= HEADER_BYTES
    if (bytes.length === 0 && op !== 'extend') continue
    // positions favour the header, where the decoder makes its decisions
    const at = (): number => rng.chance(0.7) ? rng.int(0, Math.min(HEADER_BYTES, bytes.length) - 1) : rng.int(0, bytes.length - 1)
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    if (op === 'flip') {
      bytes[at()] ^= 1 << rng.int(0, 7)
    } else if (op === 'byte') {
      bytes[at()] = rng.int(0, 255)
    } else if (op === 'u32' && whole) {
      view.setUint32(rng.pick([8, 32, 36, 40, 44, 48]), rng.chance(0.7) ? rng.pick(U32_EDGES) : rng.u32(), true)
    } else if (op === 'u16' && whole) {
      view.setUint16(rng.pick([6, 28, 30, 52, 54]), rng.chance(0.7) ? rng.pick(U16_EDGES) : rng.int(0, 0xffff), true)
    } else if (op === 'dtype' && bytes.length > 4) {
      bytes[4] = rng.pick([0, 1, 2, 3, 4, 127, 255])
    } else if (op === 'type' && bytes.length > 3) {
      bytes[3] = rng.pick([0, 1, 2, 3, 4, 5, 6, 7, 8, 255])
    } else if (op === 'version' && bytes.length > 2) {
      bytes[2] = rng.pick([0, 2, 255])
    } else if (op === 'magic') {
      bytes[rng.int(0, Math.min(1, bytes.length - 1))] = rng.int(0, 255)
    } else if (op === 'truncate') {
      bytes = bytes.slice(0, rng.chance(0.5) ? rng.int(0, HEADER_BYTES) : rng.int(0, bytes.length - 1))
    } else if (op === 'extend') {
      bytes = concat(bytes, rng.bytes(rng.int(1, 64)))
    } else if (op === 'payloadLength' && whole) {
      view.setUint32(48, Math.max(0, view.getUint32(48, true) + rng.int(-8, 8)), true)
    } else if (op === 'hops' && whole) {
      // a next-hops section of random bytes, with counts that may or may not agree with it
      const hopBytes = rng.pick([4, 8, 12, 64, rng.int(1, 40)])
      view.setUint16(52, rng.int(0, 5), true)
      view.setUint16(54, hopBytes, true)
      bytes = concat(bytes.subarray(0, HEADER_BYTES), rng.bytes(hopBytes), bytes.subarray(HEADER_BYTES))
    } else if (op === 'reserved' && whole) {
      bytes.set(rng.bytes(8), 56)
    }
  }
  return bytes
}

const MUTATIONS = { flip: 4, byte: 3, u32: 4, u16: 2, dtype: 2, type: 2, version: 1, magic: 1, truncate: 2, extend: 2, payloadLength: 2, hops: 1, reserved: 1 }

function concat (...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let off = 0
  for (const p of parts) {
    out.set(p, off)
    off += p.length
  }
  return out
}

function tryDecode (bytes: Uint8Array): Frame | undefined {
  try {
    return decodeFrame(bytes, { maxPayloadBytes: 64 << 20 })
  } catch {
    return undefined
  }
}


// ---- raw streams ------------------------------------------------------------------------------

interface ReplySummary { type: number, errorCode: number, requestId: number, text: string }

/** A libp2p stream on the inference protocol written byte by byte, with every reply collected. */
class RawStream {
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

// ---- the fuzzer -------------------------------------------------------------------------------

interface Ctx {
  m: Model
  stats: Stats
  server: PeerId
  timeoutMs: number
  stopped: () => boolean
}

async function openRaw (ctx: Ctx, node: MingaNode, refusalExpected = false): Promise<RawStream | undefined> {
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

async function openFuzzChannel (ctx: Ctx, node: MingaNode): Promise<Channel | undefined> {
  try {
    return await openChannel(node, ctx.server, INFERENCE_PROTOCOL, { timeoutMs: ctx.timeoutMs, signal: AbortSignal.timeout(ctx.timeoutMs) })
  } catch (err: any) {
    ctx.stats.dialFailed++
    ctx.stats.violation(`could not open a channel: ${err?.name}: ${err?.message}`)
    return undefined
  }
}

/** Sends one request on a channel and books the outcome; resolves to the reply or the error. */
async function request (ctx: Ctx, ch: Channel, init: FrameInit): Promise<Frame | Error> {
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

const codeOf = (r: Frame | Error): string => r instanceof Error ? ((r as any).codeName ?? r.name) : frameTypeName(r.type)

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

const EPISODES: Record<string, { run: Episode, weight: number, node: 'worker' | 'parallel' }> = {
  rawMutated: { run: rawMutated, weight: 40, node: 'worker' },
  sessionAbuse: { run: sessionAbuse, weight: 22, node: 'worker' },
  openFlood: { run: openFlood, weight: 10, node: 'worker' },
  rawGarbage: { run: rawGarbage, weight: 8, node: 'worker' },
  rawReset: { run: rawReset, weight: 10, node: 'worker' },
  rawOversize: { run: rawOversize, weight: 3, node: 'worker' },
  parallelStreams: { run: parallelStreams, weight: 3, node: 'parallel' }
}

// ---- one-off probes ---------------------------------------------------------------------------

/** A full frame one byte over the limit: TOO_LARGE, and the same stream still works afterwards. */
async function probeOversizeFrame (ctx: Ctx, node: MingaNode): Promise<string> {
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
async function probePartialFrame (ctx: Ctx, node: MingaNode, holdMs: number): Promise<string> {
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
async function probeCrossPeerClose (ctx: Ctx, owner: MingaNode, other: MingaNode): Promise<string> {
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
async function probeCapacity (ctx: Ctx, nodes: MingaNode[], wanted: number, waitMs: number): Promise<{ wanted: number, opened: number, waitedMs: number }> {
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
async function probeStarvation (ctx: Ctx, flooders: MingaNode[], newcomer: MingaNode, maxSessions: number): Promise<string> {
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

// ---- normal sessions --------------------------------------------------------------------------

async function collect<T, R> (gen: AsyncGenerator<T, R>): Promise<R> {
  while (true) {
    const r = await gen.next()
    if (r.done === true) return r.value
  }
}

interface NormalState {
  generations: number
  rounds: number
  busyRetries: number
  longestGenerationMs: number
  failures: string[]
  checks: GenerationCheck[]
}

async function generateChecked (client: MingaClient, prompt: string, reference: number[], maxNewTokens: number, state: NormalState, retryMs: number): Promise<GenerationCheck | undefined> {
  const started = Date.now()
  for (let attempt = 0; ; attempt++) {
    try {
      const result = await collect(client.generate(prompt, { maxNewTokens, temperature: 0 }))
      state.longestGenerationMs = Math.max(state.longestGenerationMs, Date.now() - started)
      state.generations++
      const check = { prompt, ids: result.ids, reference, equal: sameIds(result.ids, reference) }
      return check
    } catch (err: any) {
      // the server refuses sessions while a flood holds every slot (BUSY; a client may also step
      // back from a server that refused it, NoRouteError): retry, but count it
      const busy = (err?.name === 'RemoteError' && err.code === ErrorCode.BUSY) || /\bbusy\b/i.test(String(err?.message)) || err?.name === 'NoRouteError'
      if (busy && Date.now() - started < retryMs) {
        state.busyRetries++
        await new Promise(resolve => setTimeout(resolve, 20 + Math.min(200, attempt * 10)))
        continue
      }
      state.failures.push(`"${prompt}": ${err?.name ?? 'Error'}: ${err?.message ?? err}`)
      return undefined
    }
  }
}

function sameIds (a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

// ---- the run ----------------------------------------------------------------------------------

const DEFAULT_PROMPTS = ['Once upon a time', 'The little dog was', 'Lily and Ben went to the park']

export async function runFuzz (opts: FuzzOptions): Promise<FuzzReport> {
  const t0 = Date.now()
  const log = opts.log ?? (() => {})
  const seed = (opts.seed ?? 1) >>> 0
  const workers = Math.max(1, opts.workers ?? 8)
  const modelDir = opts.modelDir ?? STORIES
  const prompts = opts.prompts ?? DEFAULT_PROMPTS
  const maxNewTokens = opts.maxNewTokens ?? 40
  const timeoutMs = opts.replyTimeoutMs ?? 15_000
  const maxSessions = opts.maxSessions ?? 16
  const config = loadModelConfig(modelDir)
  const m: Model = { hiddenSize: config.hiddenSize, numLayers: config.numLayers, maxPositions: config.maxPositionEmbeddings }
  const stats = new Stats()

  // the reference: the same prompts, greedy, through the local engine
  log('local reference…')
  const local = await createLocalModel({ modelDir, quant: 'none', threads: 1 })
  const reference: number[][] = []
  try {
    for (const p of prompts) reference.push((await collect(local.generate(p, { maxNewTokens, temperature: 0 }))).ids)
  } finally {
    await local.close()
  }

  const suspicious: string[] = []
  let logLines = 0
  log('starting `minga serve`…')
  const server: NodeProcess = await startNode(
    ['serve', '--model', modelDir, '--quant', 'none', '--blocks', `0:${m.numLayers}`, '--listen', '/ip4/127.0.0.1/tcp/0', '--throughput', '1000', '--threads', '1', '--max-sessions', String(maxSessions)],
    {
      label: 'minga serve',
      onLog: line => {
        logLines++
        if (/unhandled|uncaught|fatal|TypeError|RangeError|ReferenceError|heap|INTERNAL|worker (failed|exited)|SIGINT|SIGTERM|stopped/i.test(line) && suspicious.length < 20) suspicious.push(line.slice(0, 300))
      }
    })
  const serverAddr = server.ready.addrs[0]
  log(`server ${server.ready.peerId} at ${serverAddr}`)
  let crashed = false
  let stopping = false
  let exit: { code: number | null, signal: string | null } | null = null
  server.child.once('exit', (code, signal) => {
    exit = { code, signal }
    if (!stopping) {
      crashed = true
      log(`SERVER EXITED: code ${code} signal ${signal}`)
    }
  })
  const cpuMsOf = (): number => {
    try {
      // utime and stime, in clock ticks (100 Hz on Linux), fields 14 and 15 of /proc/<pid>/stat
      const fields = readFileSync(`/proc/${server.child.pid}/stat`, 'utf8').split(') ')[1].split(' ')
      return (Number(fields[11]) + Number(fields[12])) * 10
    } catch {
      return 0
    }
  }
  const rssOf = (): number | undefined => {
    try {
      const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${server.child.pid}/status`, 'utf8'))?.[1]
      return kb == null ? undefined : Number(kb) * 1024
    } catch {
      return undefined
    }
  }

  const nodes: MingaNode[] = []
  let client: MingaClient | undefined
  const normal: NormalState = { generations: 0, rounds: 0, busyRetries: 0, longestGenerationMs: 0, failures: [], checks: [] }
  const heartbeat = { sent: 0, failed: 0, latencies: [] as number[] }
  const probes: FuzzReport['probes'] = { oversizeFrame: 'not run', partialFrameHeld: 'not run', crossPeerClose: 'not run', starvation: 'not run', capacityAfter: { wanted: maxSessions, opened: 0, waitedMs: 0 } }
  const final: FuzzReport['final'] = { equal: false, checks: [] }
  let rssStart: number | undefined
  let rssPeak = 0
  let fuzzMs = 0
  let serverCpuMs = 0
  const rssTimeline: Array<[number, number]> = []
  let fuzzerCpuMs = 0
  let overlapped = false
  try {
    for (let i = 0; i < 4; i++) nodes.push(await createMingaNode({ listen: [] }))
    const [nodeA, nodeB, nodeP, nodeN] = nodes
    const anchor = await openChannel(nodeA, serverAddr, INFERENCE_PROTOCOL, { timeoutMs })
    const serverPeer = anchor.remotePeer
    // connect the other nodes by address; later streams and channels dial the peer id
    for (const n of [nodeB, nodeP, nodeN]) await openChannel(n, serverAddr, INFERENCE_PROTOCOL, { timeoutMs }).then(async c => { await c.close() })

    client = await createClient({ modelDir, bootstrap: [serverAddr], requestTimeoutMs: 60_000, threads: 1 })
    rssStart = rssOf()

    let fuzzing = true
    const ctx: Ctx = { m, stats, server: serverPeer, timeoutMs, stopped: () => crashed || Date.now() - t0 > (opts.deadlineMs ?? 15 * 60_000) }

    // the normal session: rounds of the prompts for as long as the fuzz runs (at least one)
    const normalRun = (async () => {
      for (let round = 0; round < 10_000; round++) {
        for (const [i, prompt] of prompts.entries()) {
          if (crashed) return
          if (fuzzing) overlapped = true
          const check = await generateChecked(client!, prompt, reference[i], maxNewTokens, normal, 60_000)
          if (check !== undefined && (normal.checks.length < prompts.length || !check.equal)) normal.checks.push(check)
          if (check === undefined || !check.equal) return // a failure ends the normal run: it is reported
          if (!fuzzing && round > 0) return
        }
        normal.rounds++
        if (!fuzzing) return
      }
    })()

    const sampler = setInterval(() => { rssPeak = Math.max(rssPeak, rssOf() ?? 0) }, 250)
    const beat = setInterval(() => {
      if (anchor.closed || crashed) return
      const sentAt = Date.now()
      heartbeat.sent++
      anchor.request({ type: FrameType.CLOSE_SESSION, sessionId: newSessionId() }, { timeoutMs }).then(
        () => { heartbeat.latencies.push(Date.now() - sentAt) },
        () => { heartbeat.failed++ }
      )
    }, 200)

    const fuzzStart = Date.now()
    const serverCpuStart = cpuMsOf()
    const ownCpuStart = process.cpuUsage()
    let progress = 0
    const ticker = setInterval(() => {
      const rss = rssOf()
      if (rss !== undefined) rssTimeline.push([stats.framesSent, Math.round(rss / 1048576)])
      if (stats.framesSent - progress >= 1) log(`  ${stats.framesSent} frames, ${((stats.framesSent * 1000) / (Date.now() - fuzzStart)).toFixed(0)}/s, ${normal.generations} normal generations, ${stats.timeouts} timeouts`)
      progress = stats.framesSent
    }, 5000)
    probes.crossPeerClose = await probeCrossPeerClose(ctx, nodeA, nodeB)
    const probeRun = Promise.all([
      probeOversizeFrame(ctx, nodeB).then(s => { probes.oversizeFrame = s }),
      probePartialFrame(ctx, nodeB, 3000).then(s => { probes.partialFrameHeld = s })
    ])
    const weights = Object.fromEntries(Object.entries(EPISODES).filter(([k]) => opts.kinds?.includes(k) ?? true).map(([k, e]) => [k, e.weight])) as Record<string, number>
    if (Object.keys(weights).length === 0) throw new Error(`no episode kinds among ${opts.kinds?.join(', ')}: choose from ${Object.keys(EPISODES).join(', ')}`)
    const share = Math.floor(opts.frames / workers)
    await Promise.all(Array.from({ length: workers }, async (_, w) => {
      const rng = new Rng(seed, w + 1)
      let left = share + (w < opts.frames - share * workers ? 1 : 0)
      const node = w % 2 === 0 ? nodeA : nodeB
      let idle = 0
      while (left > 0 && !ctx.stopped() && idle < 50) {
        const kind = rng.weighted(weights)
        const e = EPISODES[kind]
        const sent = await e.run(ctx, e.node === 'parallel' ? nodeP : node, new Rng(rng.u32(), rng.u32()), left)
        stats.episode(kind, sent)
        left -= sent
        idle = sent === 0 ? idle + 1 : 0
      }
    }))
    await probeRun
    fuzzMs = Date.now() - fuzzStart
    serverCpuMs = cpuMsOf() - serverCpuStart
    const own = process.cpuUsage(ownCpuStart)
    fuzzerCpuMs = Math.round((own.user + own.system) / 1000)
    fuzzing = false
    clearInterval(ticker)
    clearInterval(beat)
    log(`fuzz done: ${stats.framesSent} frames in ${fuzzMs} ms; waiting for the normal session…`)
    await normalRun
    clearInterval(sampler)
    await anchor.close({ timeoutMs: 2000 })

    if (!crashed) {
      // the server must still serve: a fresh generation, then every session slot at full length
      const after = { ...normal, failures: [] }
      const check = await generateChecked(client, prompts[0], reference[0], maxNewTokens, after, 30_000)
      if (check === undefined) final.error = after.failures.join('; ')
      else final.checks.push(check)
      final.equal = check?.equal === true
      await client.close()
      client = undefined
      probes.starvation = await probeStarvation(ctx, [nodeA, nodeB], nodeN, maxSessions)
      await new Promise(resolve => setTimeout(resolve, 300))
      probes.capacityAfter = await probeCapacity(ctx, nodes, maxSessions, 15_000)
    }
  } catch (err) {
    stopping = true
    await server.stop(5000)
    throw err
  } finally {
    await client?.close().catch(() => {})
    for (const n of nodes) await n.stop().catch(() => {})
  }
  const rssEnd = rssOf()
  stopping = true
  const crashedBeforeStop = crashed || exit !== null
  const started = Date.now()
  const stopped = await server.stop(15_000)
  const stopKilled = stopped === 'SIGKILL' || Date.now() - started >= 15_000
  const lat = [...heartbeat.latencies].sort((a, b) => a - b)
  const mib = (b: number | undefined): number | null => b === undefined || b === 0 ? null : Math.round(b / 1048576)
  const normalEqual = normal.failures.length === 0 && normal.generations >= prompts.length && normal.checks.every(c => c.equal)
  const report: FuzzReport = {
    ok: false,
    seed,
    framesRequested: opts.frames,
    framesSent: stats.framesSent,
    bytesSent: stats.bytesSent,
    fuzzMs,
    serverCpuMs,
    fuzzerCpuMs,
    totalMs: Date.now() - t0,
    framesPerSecond: fuzzMs > 0 ? Math.round(stats.framesSent * 1000 / fuzzMs) : 0,
    episodes: stats.episodes,
    replies: Object.fromEntries(Object.entries(stats.replies).sort((a, b) => b[1] - a[1])),
    timeouts: stats.timeouts,
    missingReplies: stats.missingReplies,
    violations: stats.violations,
    violationSamples: stats.violationSamples,
    internalErrors: stats.internalErrors,
    channelFailures: { dialFailed: stats.dialFailed, refusedStreams: stats.refusedStreams, resetByServer: stats.resetByServer, closedDuringRequest: stats.closedDuringRequest },
    crashes: crashedBeforeStop ? 1 : 0,
    server: {
      exit,
      stoppedCleanly: !crashedBeforeStop && !stopKilled && stopped === 0,
      rssStartMiB: mib(rssStart),
      rssPeakMiB: mib(rssPeak),
      rssEndMiB: mib(rssEnd),
      rssTimeline,
      stderrLines: logLines,
      stderrTail: server.log().trimEnd().split('\n').slice(-5),
      suspiciousLogLines: suspicious
    },
    heartbeat: { sent: heartbeat.sent, failed: heartbeat.failed, p50Ms: lat[Math.floor(lat.length / 2)] ?? 0, maxMs: lat[lat.length - 1] ?? 0 },
    probes,
    normal: {
      generations: normal.generations,
      rounds: normal.rounds,
      overlappedFuzz: overlapped,
      busyRetries: normal.busyRetries,
      longestGenerationMs: normal.longestGenerationMs,
      failures: normal.failures,
      equal: normalEqual,
      checks: normal.checks
    },
    final,
    errorSamples: stats.errorSamples
  }
  report.ok = report.crashes === 0 && report.server.stoppedCleanly && normalEqual && final.equal &&
    report.timeouts === 0 && report.missingReplies === 0 && report.violations === 0 && report.internalErrors === 0 &&
    probes.capacityAfter.opened === probes.capacityAfter.wanted
  return report
}

// ---- command line -----------------------------------------------------------------------------

export function summary (r: FuzzReport): string {
  const lines = [
    `minga wire fuzz, seed ${r.seed}: ${r.ok ? 'OK' : 'FAILED'}`,
    `  frames      ${r.framesSent} sent (${(r.bytesSent / 1048576).toFixed(1)} MiB) in ${(r.fuzzMs / 1000).toFixed(1)} s: ${r.framesPerSecond} frames/s; whole run ${(r.totalMs / 1000).toFixed(1)} s`,
    `  cpu         server ${(r.serverCpuMs / 1000).toFixed(1)} s, fuzzer+client ${(r.fuzzerCpuMs / 1000).toFixed(1)} s during the fuzz`,
    `  episodes    ${Object.entries(r.episodes).map(([k, e]) => `${k} ${e.episodes}×/${e.frames}`).join(', ')}`,
    `  replies     ${Object.entries(r.replies).map(([k, n]) => `${k} ${n}`).join(', ')}`,
    `  crashes ${r.crashes}, timeouts ${r.timeouts}, missing replies ${r.missingReplies}, violations ${r.violations}, INTERNAL ${r.internalErrors}`,
    `  channels    dial failed ${r.channelFailures.dialFailed}, refused (stream limit) ${r.channelFailures.refusedStreams}, reset by server ${r.channelFailures.resetByServer}, closed during a request ${r.channelFailures.closedDuringRequest}`,
    `  server      stopped cleanly ${r.server.stoppedCleanly}, RSS ${r.server.rssStartMiB} → peak ${r.server.rssPeakMiB} → ${r.server.rssEndMiB} MiB, ${r.server.stderrLines} log lines`,
    `  heartbeat   ${r.heartbeat.sent} sent, ${r.heartbeat.failed} failed, p50 ${r.heartbeat.p50Ms} ms, max ${r.heartbeat.maxMs} ms`,
    `  normal      ${r.normal.generations} generations in ${r.normal.rounds} rounds during the fuzz (overlap ${r.normal.overlappedFuzz}), equal to local: ${r.normal.equal}, BUSY retries ${r.normal.busyRetries}, slowest generation ${r.normal.longestGenerationMs} ms`,
    ...r.normal.checks.map(c => `              "${c.prompt}": ${c.ids.length} ids ${c.equal ? '= local' : `≠ local ${JSON.stringify(c.reference)}`} ${JSON.stringify(c.ids)}`),
    ...r.normal.failures.map(f => `              failure: ${f}`),
    `  after fuzz  generation equal to local: ${r.final.equal}${r.final.error != null ? ` (${r.final.error})` : ''}; ${r.probes.capacityAfter.opened}/${r.probes.capacityAfter.wanted} full-length sessions open at once (${r.probes.capacityAfter.waitedMs} ms)`,
    `  probes      oversize: ${r.probes.oversizeFrame}`,
    `              partial frame: ${r.probes.partialFrameHeld}`,
    `              cross-peer CLOSE: ${r.probes.crossPeerClose}`,
    `              starvation: ${r.probes.starvation}`,
    ...r.violationSamples.slice(0, 10).map(v => `  violation   ${v}`),
    ...r.server.suspiciousLogLines.slice(0, 10).map(l => `  server log  ${l}`),
    '  error messages (samples):',
    ...Object.entries(r.errorSamples).flatMap(([k, v]) => v.slice(0, 3).map(s => `    ${k}: ${s}`))
  ]
  return lines.join('\n')
}

async function main (): Promise<number> {
  const { values } = parseArgs({
    options: {
      frames: { type: 'string', default: '100000' },
      seed: { type: 'string', default: '1' },
      workers: { type: 'string', default: '8' },
      model: { type: 'string' },
      kinds: { type: 'string' },
      json: { type: 'boolean', default: false }
    }
  })
  const frames = Number(values.frames)
  const seed = Number(values.seed)
  const workers = Number(values.workers)
  if (!Number.isInteger(frames) || frames < 1) throw new Error(`--frames must be a positive integer, got ${values.frames}`)
  if (!Number.isInteger(seed)) throw new Error(`--seed must be an integer, got ${values.seed}`)
  if (!Number.isInteger(workers) || workers < 1) throw new Error(`--workers must be a positive integer, got ${values.workers}`)
  const report = await runFuzz({ frames, seed, workers, modelDir: values.model, kinds: values.kinds?.split(','), log: line => { process.stderr.write(`fuzz: ${line}\n`) } })
  if (values.json) {
    process.stderr.write(summary(report) + '\n')
    process.stdout.write(JSON.stringify(report) + '\n')
  } else {
    process.stdout.write(summary(report) + '\n')
  }
  return report.ok ? 0 : 1
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().then(code => { process.exit(code) }, err => {
    process.stderr.write(`fuzz: ${err?.stack ?? err}\n`)
    process.exit(2)
  })
}
