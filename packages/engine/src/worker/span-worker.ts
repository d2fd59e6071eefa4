// Worker: hosts one span of decoder layers and the KV caches of its sessions. The layers come from the
// prepared cache (prepared/), built there first if needed; their weights stay out of JS entirely.
import * as ort from 'onnxruntime-node'
import { loadModelConfig, type ModelConfig } from '../config.ts'
import { ContextLengthError, InvalidArgumentError, PositionError, SessionLimitError, ShapeError, UnknownSessionError } from '../errors.ts'
import { SPAN_IO } from '../graph/span-graph.ts'
import { prepareSpan } from '../prepared/prepare-span.ts'
import type { Quantization } from '../quantize.ts'
import { KV_BLOCK_TOKENS, kvBytesPerToken } from '../span-executor.ts'
import { sessionOptions } from './ort-options.ts'
import { emitEvent, serveRequests, Transfer } from './rpc.ts'

export interface SpanLoadArgs {
  modelDir: string
  modelId?: string
  cacheDir?: string
  start: number
  end: number
  quant: Quantization
  threads?: number
  maxSessions: number
  /** KV cache budget, all sessions together. */
  cacheBytes: number
}

export interface SpanLoadResult { config: ModelConfig, bytesRead: number, maxPositions: number, preparedBytes: number, preparedDir: string, built: number[] }

/** Events the worker sends while it loads. */
export type SpanLoadEvent = { type: 'progress', layer: number, done: number, total: number } | { type: 'log', message: string }

export interface OpenArgs { sessionId: string, maxLength: number, start?: number, end?: number }

export interface ForwardArgs { sessionId: string, hidden: Float32Array, tokens: number, position?: number }

export interface SpanStats {
  sessions: number
  /** KV cache allocated now, in tokens of the whole span (a session over part of it counts for less). */
  cacheTokens: number
  freeSessions: number
  /** What the rest of the budget holds, in tokens of the whole span. */
  freeCacheTokens: number
  cacheBytes: number
  freeCacheBytes: number
}

interface LayerCache { key: ort.Tensor, value: ort.Tensor, keyData: Float32Array, valueData: Float32Array }

interface Session {
  /** The part of the span this session runs, fixed when it opens. */
  start: number
  end: number
  maxLength: number
  /** Tokens the caches hold room for now: a multiple of KV_BLOCK_TOKENS (or maxLength). */
  capacity: number
  length: number
  caches: Map<number, LayerCache>
}

let config: ModelConfig
let limits: { maxSessions: number, cacheBytes: number, maxPositions: number }
let span: { start: number, end: number }
/** Bytes of one token's keys and values in one layer. */
let tokenLayerBytes: number
let cacheBytesInUse = 0
const graphs = new Map<number, { session: ort.InferenceSession, fetches: string[] }>()
const sessions = new Map<string, Session>()

async function load (args: SpanLoadArgs): Promise<SpanLoadResult> {
  config = loadModelConfig(args.modelDir)
  const maxPositions = config.maxPositionEmbeddings
  span = { start: args.start, end: args.end }
  limits = { maxSessions: args.maxSessions, cacheBytes: args.cacheBytes, maxPositions }
  tokenLayerBytes = kvBytesPerToken(config, 1)
  const prepared = await prepareSpan({
    modelDir: args.modelDir,
    modelId: args.modelId,
    cacheDir: args.cacheDir,
    start: args.start,
    end: args.end,
    quant: args.quant,
    onProgress: progress => { emitEvent({ type: 'progress', ...progress } satisfies SpanLoadEvent) },
    log: message => { emitEvent({ type: 'log', message } satisfies SpanLoadEvent) }
  })
  // ORT reads each layer's graph and its external weights from the files itself.
  for (const [i, path] of prepared.graphs.entries()) {
    const index = args.start + i
    // No arena and no memory patterns: the caches are ours, and per-session arenas would each keep
    // their peak activations; prepacking stays on (MatMulNBits is far slower without it).
    const session = await ort.InferenceSession.create(path, { ...sessionOptions(args.threads), enableCpuMemArena: false, enableMemPattern: false })
    graphs.set(index, { session, fetches: [SPAN_IO.hiddenOut, SPAN_IO.newKey(index), SPAN_IO.newValue(index)] })
  }
  return { config, bytesRead: prepared.bytesRead, maxPositions, preparedBytes: prepared.bytes, preparedDir: prepared.dir, built: prepared.built }
}

function open ({ sessionId, maxLength, start = span.start, end = span.end }: OpenArgs): SpanStats {
  if (sessions.has(sessionId)) throw new InvalidArgumentError(`session ${sessionId} is already open`)
  if (!(Number.isInteger(start) && Number.isInteger(end) && span.start <= start && start < end && end <= span.end)) {
    throw new InvalidArgumentError(`layers [${start}, ${end}) are not within this span [${span.start}, ${span.end})`)
  }
  if (!Number.isInteger(maxLength) || maxLength < 1 || maxLength > limits.maxPositions) {
    throw new ContextLengthError(`session length ${maxLength} must be between 1 and the model's context of ${limits.maxPositions} tokens`)
  }
  if (sessions.size >= limits.maxSessions) throw new SessionLimitError(`busy: all ${limits.maxSessions} sessions are in use`)
  // Nothing is reserved: the cache grows as the session fills it. A first block must fit now, though.
  const firstBlock = Math.min(KV_BLOCK_TOKENS, maxLength) * (end - start) * tokenLayerBytes
  if (cacheBytesInUse + firstBlock > limits.cacheBytes) {
    throw new SessionLimitError(`busy: the KV cache is full (${mb(cacheBytesInUse)} of ${mb(limits.cacheBytes)} MB in use)`)
  }
  sessions.set(sessionId, { start, end, maxLength, capacity: 0, length: 0, caches: new Map() })
  return stats()
}

/** Makes room for `needed` tokens: the caches grow to the next block, copying what they hold. */
function grow (sessionId: string, session: Session, needed: number): void {
  const capacity = Math.min(session.maxLength, Math.ceil(needed / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS)
  const extra = (capacity - session.capacity) * (session.end - session.start) * tokenLayerBytes
  if (cacheBytesInUse + extra > limits.cacheBytes) {
    throw new SessionLimitError(`busy: the KV cache is full (${mb(cacheBytesInUse)} of ${mb(limits.cacheBytes)} MB in use): session ${sessionId} cannot grow to ${capacity} tokens`)
  }
  const { numKvHeads, headDim } = config
  const dims = [1, numKvHeads, capacity, headDim]
  for (let layer = session.start; layer < session.end; layer++) {
    const old = session.caches.get(layer)
    const keyData = new Float32Array(numKvHeads * capacity * headDim)
    const valueData = new Float32Array(numKvHeads * capacity * headDim)
    if (old != null) {
      for (let h = 0; h < numKvHeads; h++) {
        const from = h * session.capacity * headDim
        keyData.set(old.keyData.subarray(from, from + session.length * headDim), h * capacity * headDim)
        valueData.set(old.valueData.subarray(from, from + session.length * headDim), h * capacity * headDim)
      }
    }
    session.caches.set(layer, { keyData, valueData, key: new ort.Tensor('float32', keyData, dims), value: new ort.Tensor('float32', valueData, dims) })
  }
  session.capacity = capacity
  cacheBytesInUse += extra
}

async function forward ({ sessionId, hidden, tokens, position }: ForwardArgs): Promise<Transfer<Float32Array>> {
  const session = sessions.get(sessionId)
  if (session == null) throw new UnknownSessionError(`unknown session ${sessionId}`)
  const { hiddenSize } = config
  if (!Number.isInteger(tokens) || tokens < 1 || hidden.length !== tokens * hiddenSize) {
    throw new ShapeError(`hidden states of ${hidden.length} values do not match ${tokens} tokens × hidden size ${hiddenSize}`)
  }
  const past = session.length
  if (position != null && position !== past) {
    throw new PositionError(`position ${position} does not match the session's ${past} cached tokens`)
  }
  if (past + tokens > session.maxLength) {
    throw new ContextLengthError(`${past} cached + ${tokens} new tokens exceed the session's length of ${session.maxLength}`)
  }
  if (past + tokens > session.capacity) grow(sessionId, session, past + tokens)

  const positions = new BigInt64Array(tokens)
  for (let i = 0; i < tokens; i++) positions[i] = BigInt(past + i)
  const feeds: Record<string, ort.Tensor> = {
    [SPAN_IO.positions]: new ort.Tensor('int64', positions, [1, tokens]),
    [SPAN_IO.seqlensK]: new ort.Tensor('int32', Int32Array.of(past + tokens - 1), [1]),
    [SPAN_IO.totalLength]: new ort.Tensor('int32', Int32Array.of(past + tokens), [])
  }
  let current: ort.Tensor = new ort.Tensor('float32', hidden, [1, tokens, hiddenSize])
  for (let layer = session.start; layer < session.end; layer++) {
    const graph = graphs.get(layer)!
    const cache = session.caches.get(layer)!
    feeds[SPAN_IO.hidden] = current
    feeds[SPAN_IO.pastKey(layer)] = cache.key
    feeds[SPAN_IO.pastValue(layer)] = cache.value
    const out = await graph.session.run(feeds, graph.fetches)
    delete feeds[SPAN_IO.pastKey(layer)]
    delete feeds[SPAN_IO.pastValue(layer)]
    appendToCache(cache.keyData, out[SPAN_IO.newKey(layer)].data as Float32Array, session.capacity, past, tokens)
    appendToCache(cache.valueData, out[SPAN_IO.newValue(layer)].data as Float32Array, session.capacity, past, tokens)
    current = out[SPAN_IO.hiddenOut]
  }
  session.length += tokens
  const result = current.data as Float32Array
  return new Transfer(result, [result.buffer as ArrayBuffer])
}

/** Writes new rows [tokens, kvHeads * headDim] into a cache laid out [kvHeads, capacity, headDim]. */
function appendToCache (cache: Float32Array, rows: Float32Array, capacity: number, past: number, tokens: number): void {
  const { numKvHeads, headDim } = config
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < numKvHeads; h++) {
      const from = (t * numKvHeads + h) * headDim
      cache.set(rows.subarray(from, from + headDim), (h * capacity + past + t) * headDim)
    }
  }
}

function close ({ sessionId }: { sessionId: string }): SpanStats {
  const session = sessions.get(sessionId)
  if (session != null) {
    cacheBytesInUse -= session.capacity * (session.end - session.start) * tokenLayerBytes
    sessions.delete(sessionId)
  }
  return stats()
}

function stats (): SpanStats {
  const spanTokenBytes = (span.end - span.start) * tokenLayerBytes
  const freeCacheBytes = Math.max(0, limits.cacheBytes - cacheBytesInUse)
  return {
    sessions: sessions.size,
    cacheTokens: Math.ceil(cacheBytesInUse / spanTokenBytes),
    freeSessions: limits.maxSessions - sessions.size,
    freeCacheTokens: Math.floor(freeCacheBytes / spanTokenBytes),
    cacheBytes: cacheBytesInUse,
    freeCacheBytes
  }
}

function mb (bytes: number): string {
  return (bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 0)
}

serveRequests({ load, open, forward, close, stats })
