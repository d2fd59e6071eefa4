// Worker: hosts one span of decoder layers and the KV caches of its sessions. The layers come from the
// prepared cache (prepared/), built there first if needed; their weights stay out of JS entirely.
// Concurrent sessions' steps run as one batch (see forwardBatch): each layer's `pre` and `post`
// graphs see all their rows at once, so its weights are read once per batch, while attention runs
// per session over that session's own cache.
import * as ort from 'onnxruntime-node'
import { loadModelConfig, type ModelConfig } from '../config.ts'
import { ContextLengthError, InvalidArgumentError, PositionError, SessionLimitError, ShapeError, UnknownSessionError } from '../errors.ts'
import { buildAttentionGraph, SPAN_IO } from '../graph/span-graph.ts'
import { prepareSpan, type PreparedSpan } from '../prepared/prepare-span.ts'
import type { QuantFormat, Quantization } from '../quantize.ts'
import { KV_BLOCK_TOKENS, kvBytesPerToken } from '../span-executor.ts'
import { beforeOutputs } from './garbage.ts'
import { sessionOptions } from './ort-options.ts'
import { BatchPacer } from './batch-wait.ts'
import { emitEvent, serveRequests, type BatchedMethod, type Transfer } from './rpc.ts'
import { splitRows, stackRows } from './rows.ts'

/** Which layers, of which checkpoint, in which quantization. */
export interface SpanPrepareArgs {
  modelDir: string
  modelId?: string
  cacheDir?: string
  start: number
  end: number
  quant: Quantization
  format?: QuantFormat
}

export interface SpanPrepareResult { bytesRead: number, preparedBytes: number, preparedDir: string, built: number[] }

export interface SpanLoadArgs extends SpanPrepareArgs {
  threads?: number
  maxSessions: number
  /** KV cache budget, all sessions together. */
  cacheBytes: number
  /** Longest wait of a step for other sessions' steps to batch with (ms, 0 = none; see batch-wait.ts). */
  batchWaitMs: number
}

export interface SpanLoadResult extends SpanPrepareResult { config: ModelConfig, maxPositions: number }

/** Events the worker sends while it loads. */
export type SpanLoadEvent = { type: 'progress', layer: number, done: number, total: number } | { type: 'log', message: string }

export interface OpenArgs { sessionId: string, maxLength: number, start?: number, end?: number }

export interface ForwardArgs {
  sessionId: string
  hidden: Float32Array
  tokens: number
  position?: number
  /** When the caller sent it (sentNow()): the session's pacing, for the batch wait. */
  sentAt?: number
}

export interface SpanStats {
  sessions: number
  /** KV cache allocated now, in tokens of the whole span (a session over part of it counts for less). */
  cacheTokens: number
  freeSessions: number
  /** What the rest of the budget holds, in tokens of the whole span. */
  freeCacheTokens: number
  cacheBytes: number
  freeCacheBytes: number
  /** Steps run since the span loaded, the batches they ran in, and the most steps one batch held. */
  steps: number
  batches: number
  largestBatch: number
}

/** One layer's cache of a session: its arrays, and tensors over them that feed attention without a copy. */
interface LayerCache { keyData: Float32Array, valueData: Float32Array, key: ort.Tensor, value: ort.Tensor }

interface Session {
  /** The part of the span this session runs, fixed when it opens. */
  start: number
  end: number
  maxLength: number
  /** Tokens the caches hold room for now: a multiple of KV_BLOCK_TOKENS (or maxLength). */
  capacity: number
  length: number
  caches: Map<number, LayerCache>
  /** Its last one-token attention mask, moved on by a position each decode step (see attentionMask). */
  decodeMask?: { tensor: ort.Tensor, past: number }
}

let config: ModelConfig
let limits: { maxSessions: number, cacheBytes: number, maxPositions: number }
let span: { start: number, end: number }
/** Bytes of one token's keys and values in one layer. */
let tokenLayerBytes: number
let cacheBytesInUse = 0
/** When each session's next step is due, and the last batch's run time: how long a batch waits. */
let pacer = new BatchPacer<string>(0)
const batching = { steps: 0, batches: 0, largestBatch: 0 }
const layers = new Map<number, { pre: ort.InferenceSession, post: ort.InferenceSession }>()
/** Attention over one session's cache: no weights, so one session serves every layer. */
let attention: ort.InferenceSession
/**
 * The same graph on one thread, for steps of at most SMALL_ATTENTION query rows × cached positions:
 * there a second thread's handoff costs more than it saves (a decode step at 192 positions of the
 * TinyLlama shape: 46 µs on one thread, 80 µs on two; a 128-token prefill: 2.7 ms against 1.8 ms).
 */
let smallAttention: ort.InferenceSession
const SMALL_ATTENTION = 1024
const sessions = new Map<string, Session>()
/** Reused between batches: the rows of all sessions' attention outputs, fed to `post`. */
let attendedRows = new Float32Array(0)

/** Prepares the layers [args.start, args.end) that are not prepared yet, with progress events. */
async function prepareLayers (args: SpanPrepareArgs): Promise<PreparedSpan> {
  return await prepareSpan({
    modelDir: args.modelDir,
    modelId: args.modelId,
    cacheDir: args.cacheDir,
    start: args.start,
    end: args.end,
    quant: args.quant,
    format: args.format,
    onProgress: progress => { emitEvent({ type: 'progress', ...progress } satisfies SpanLoadEvent) },
    log: message => { emitEvent({ type: 'log', message } satisfies SpanLoadEvent) }
  })
}

/** Only prepares, in a worker that then ends: what preparing leaves in its heap goes with it (see createSpanExecutor). */
async function prepare (args: SpanPrepareArgs): Promise<SpanPrepareResult> {
  const prepared = await prepareLayers(args)
  return { bytesRead: prepared.bytesRead, preparedBytes: prepared.bytes, preparedDir: prepared.dir, built: prepared.built }
}

async function load (args: SpanLoadArgs): Promise<SpanLoadResult> {
  config = loadModelConfig(args.modelDir)
  const maxPositions = config.maxPositionEmbeddings
  span = { start: args.start, end: args.end }
  limits = { maxSessions: args.maxSessions, cacheBytes: args.cacheBytes, maxPositions }
  pacer = new BatchPacer(args.batchWaitMs)
  tokenLayerBytes = kvBytesPerToken(config, 1)
  const prepared = await prepareLayers(args)
  // ORT reads each layer's graph and its external weights from the files itself.
  // No arena and no memory patterns: the caches are ours, and per-session arenas would each keep
  // their peak activations; prepacking stays on (MatMulNBits is far slower without it).
  const options = { ...sessionOptions(args.threads), enableCpuMemArena: false, enableMemPattern: false }
  for (const [i, paths] of prepared.graphs.entries()) {
    layers.set(args.start + i, { pre: await ort.InferenceSession.create(paths.pre, options), post: await ort.InferenceSession.create(paths.post, options) })
  }
  const attentionGraph = buildAttentionGraph(config)
  attention = await ort.InferenceSession.create(attentionGraph, options)
  smallAttention = await ort.InferenceSession.create(attentionGraph, { ...options, intraOpNumThreads: 1 })
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

/** A step of one session, checked and with room in its cache. */
interface Step { session: Session, hidden: Float32Array, tokens: number, past: number }

/** Checks a step against its session and makes room for it; throws what is wrong with it. */
function prepareStep ({ sessionId, hidden, tokens, position }: ForwardArgs): Step {
  const session = sessions.get(sessionId)
  if (session == null) throw new UnknownSessionError(`unknown session ${sessionId}`)
  const { hiddenSize } = config
  if (!Number.isInteger(tokens) || tokens < 1 || !(hidden instanceof Float32Array) || hidden.length !== tokens * hiddenSize) {
    throw new ShapeError(`hidden states of ${hidden?.length} values do not match ${tokens} tokens × hidden size ${hiddenSize}`)
  }
  const past = session.length
  if (position != null && position !== past) {
    throw new PositionError(`position ${position} does not match the session's ${past} cached tokens`)
  }
  if (past + tokens > session.maxLength) {
    throw new ContextLengthError(`${past} cached + ${tokens} new tokens exceed the session's length of ${session.maxLength}`)
  }
  if (past + tokens > session.capacity) grow(sessionId, session, past + tokens)
  return { session, hidden, tokens, past }
}

/**
 * Runs the steps of several sessions (at most one each) as batches: steps over the same layers
 * share one, whose rows go through each layer's `pre` and `post` graphs together. A step that is
 * wrong (unknown session, bad shape or position, no room) fails alone.
 */
async function forwardBatch (batch: ForwardArgs[]): Promise<unknown[]> {
  const started = performance.now()
  for (const { sessionId, sentAt } of batch) pacer.arrived(sessionId, sentAt)
  const results: unknown[] = new Array(batch.length)
  const groups = new Map<string, Array<{ index: number, step: Step }>>()
  for (const [index, args] of batch.entries()) {
    try {
      const step = prepareStep(args)
      const key = layersOf(step.session)
      const group = groups.get(key) ?? []
      group.push({ index, step })
      groups.set(key, group)
    } catch (err) {
      results[index] = err
    }
  }
  for (const group of groups.values()) {
    try {
      const outputs = await runSteps(group.map(g => g.step))
      for (const [i, { index }] of group.entries()) results[index] = outputs[i]
    } catch (err) {
      // (onnxruntime failing on checked inputs: only this group's steps are lost)
      for (const { index } of group) results[index] = err
    }
    batching.steps += group.length
    batching.batches++
    batching.largestBatch = Math.max(batching.largestBatch, group.length)
  }
  pacer.answered(batch.map(args => args.sessionId).filter(id => sessions.has(id)), started)
  return results
}

/** Steps of sessions over the same layers, through those layers; each session's output rows. */
async function runSteps (steps: Step[]): Promise<Array<Transfer<Float32Array> | null>> {
  const { hiddenSize, numHeads, numKvHeads, headDim } = config
  const qDim = numHeads * headDim
  const kvDim = numKvHeads * headDim
  const rows = steps.reduce((n, s) => n + s.tokens, 0)
  const { start, end } = steps[0].session
  // per layer: pre's query, key and value, attention's output, post's hidden states
  beforeOutputs(rows * (end - start) * (2 * qDim + 2 * kvDim + hiddenSize) * 4)
  // several steps are concatenated once, and stay so through every layer
  const hidden = stackRows(steps, hiddenSize)
  const positions = new BigInt64Array(rows)
  let first = 0
  const attentionFeeds = steps.map(step => {
    for (let i = 0; i < step.tokens; i++) positions[first + i] = BigInt(step.past + i)
    first += step.tokens
    return { [SPAN_IO.mask]: attentionMask(step.session, step.past, step.tokens) } as Record<string, ort.Tensor>
  })
  const positionIds = new ort.Tensor('int64', positions, [1, rows])
  if (steps.length > 1 && attendedRows.length < rows * qDim) attendedRows = new Float32Array(rows * qDim)
  let current: ort.Tensor = new ort.Tensor('float32', hidden, [1, rows, hiddenSize])
  for (let layer = start; layer < end; layer++) {
    const graphs = layers.get(layer)!
    const pre = await graphs.pre.run({ [SPAN_IO.hidden]: current, [SPAN_IO.positions]: positionIds })
    const query = pre[SPAN_IO.query].data as Float32Array
    const newKey = pre[SPAN_IO.newKey].data as Float32Array
    const newValue = pre[SPAN_IO.newValue].data as Float32Array
    let attended: ort.Tensor | undefined
    let row = 0
    for (const [i, step] of steps.entries()) {
      const { session, tokens, past } = step
      const cache = session.caches.get(layer)!
      // the cache has room (prepareStep grew it); attention reads the new rows from it with the rest
      appendToCache(cache.keyData, newKey.subarray(row * kvDim, (row + tokens) * kvDim), session.capacity, past, tokens)
      appendToCache(cache.valueData, newValue.subarray(row * kvDim, (row + tokens) * kvDim), session.capacity, past, tokens)
      const feeds = attentionFeeds[i]
      feeds[SPAN_IO.query] = new ort.Tensor('float32', query.subarray(row * qDim, (row + tokens) * qDim), [1, tokens, qDim])
      feeds[SPAN_IO.pastKey] = cache.key
      feeds[SPAN_IO.pastValue] = cache.value
      const out = (await (tokens * session.capacity <= SMALL_ATTENTION ? smallAttention : attention).run(feeds))[SPAN_IO.attended]
      if (steps.length === 1) attended = out
      else attendedRows.set(out.data as Float32Array, row * qDim)
      row += tokens
    }
    attended ??= new ort.Tensor('float32', attendedRows.subarray(0, rows * qDim), [1, rows, qDim])
    current = (await graphs.post.run({ [SPAN_IO.hidden]: current, [SPAN_IO.attended]: attended }))[SPAN_IO.hiddenOut]
  }
  for (const step of steps) step.session.length += step.tokens
  return splitRows(current.data as Float32Array, steps, hiddenSize)
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

/**
 * Attention's mask for `tokens` new rows after `past` cached ones, in the session's cache of
 * `capacity`: its row (g, t), for each of a KV head's query heads g, is 0 up to position past + t and
 * −∞ after it. A decode step's mask is the last one's with one more position open, so a session keeps
 * it (group × capacity values: 64 KB at 2048 tokens for TinyLlama) instead of building it anew.
 */
function attentionMask (session: Session, past: number, tokens: number): ort.Tensor {
  const group = config.numHeads / config.numKvHeads
  const { capacity, decodeMask: kept } = session
  if (tokens === 1 && kept != null && kept.tensor.dims[1] === capacity && kept.past === past - 1) {
    const data = kept.tensor.data as Float32Array
    for (let row = 0; row < group; row++) data[row * capacity + past] = 0
    kept.past = past
    return kept.tensor
  }
  const mask = new Float32Array(group * tokens * capacity)
  for (let row = 0; row < group * tokens; row++) {
    const seen = past + (row % tokens) + 1
    mask.fill(-Infinity, row * capacity + seen, (row + 1) * capacity)
  }
  const tensor = new ort.Tensor('float32', mask, [group * tokens, capacity])
  if (tokens === 1) session.decodeMask = { tensor, past }
  return tensor
}

function close ({ sessionId }: { sessionId: string }): SpanStats {
  const session = sessions.get(sessionId)
  if (session != null) {
    cacheBytesInUse -= session.capacity * (session.end - session.start) * tokenLayerBytes
    sessions.delete(sessionId)
    pacer.forget(sessionId)
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
    freeCacheBytes,
    ...batching
  }
}

function mb (bytes: number): string {
  return (bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 0)
}

/** A batch waits for the sessions over the same layers as its own steps that are due soon (batch-wait.ts). */
function batchWaitUntil (batch: ForwardArgs[], since: number): number {
  const ranges = new Set(batch.map(args => layersOf(sessions.get(args.sessionId))))
  return pacer.waitUntil(new Set(batch.map(args => args.sessionId)), since, id => ranges.has(layersOf(sessions.get(id))))
}

/** Which layers a session runs, as a key: steps over the same ones share a batch. */
function layersOf (session: Session | undefined): string {
  return session != null ? `${session.start}:${session.end}` : ''
}

const forward: BatchedMethod<ForwardArgs> = { key: args => args.sessionId, run: forwardBatch, waitUntil: batchWaitUntil }

serveRequests({ prepare, load, open, close, stats }, { forward })
