// Worker: hosts one span of decoder layers and the KV caches of its sessions.
import * as ort from 'onnxruntime-node'
import { loadModelConfig, type ModelConfig } from '../config.ts'
import { ContextLengthError, InvalidArgumentError, PositionError, SessionLimitError, ShapeError, UnknownSessionError } from '../errors.ts'
import { buildSpanGraph, SPAN_IO } from '../graph/span-graph.ts'
import { readLayerWeights } from '../layer-weights.ts'
import type { Quantization } from '../quantize.ts'
import { rotaryTables } from '../rope.ts'
import { SafetensorsCheckpoint } from '../safetensors.ts'
import { sessionOptions } from './ort-options.ts'
import { serveRequests, Transfer } from './rpc.ts'

export interface SpanLoadArgs {
  modelDir: string
  start: number
  end: number
  quant: Quantization
  threads?: number
  maxSessions: number
  /** Default: 16 sessions of the model's full context. */
  maxCacheTokens?: number
}

export interface SpanLoadResult { config: ModelConfig, bytesRead: number, maxPositions: number }

export interface OpenArgs { sessionId: string, maxLength: number, start?: number, end?: number }

export interface ForwardArgs { sessionId: string, hidden: Float32Array, tokens: number, position?: number }

export interface SpanStats { sessions: number, cacheTokens: number, freeSessions: number, freeCacheTokens: number }

interface LayerCache { key: ort.Tensor, value: ort.Tensor, keyData: Float32Array, valueData: Float32Array }

interface Session {
  /** The part of the span this session runs, fixed when it opens. */
  start: number
  end: number
  capacity: number
  length: number
  caches: Map<number, LayerCache>
}

let config: ModelConfig
let limits: { maxSessions: number, maxCacheTokens: number, maxPositions: number }
let span: { start: number, end: number }
const graphs = new Map<number, { session: ort.InferenceSession, fetches: string[] }>()
const sessions = new Map<string, Session>()

async function load (args: SpanLoadArgs): Promise<SpanLoadResult> {
  config = loadModelConfig(args.modelDir)
  if (!(Number.isInteger(args.start) && Number.isInteger(args.end) && args.start >= 0 && args.start < args.end && args.end <= config.numLayers)) {
    throw new InvalidArgumentError(`span [${args.start}, ${args.end}) is not within the model's ${config.numLayers} layers`)
  }
  const maxPositions = config.maxPositionEmbeddings
  span = { start: args.start, end: args.end }
  limits = { maxSessions: args.maxSessions, maxCacheTokens: args.maxCacheTokens ?? 16 * maxPositions, maxPositions }
  const rotary = { ...rotaryTables(config, maxPositions), positions: maxPositions }
  const checkpoint = new SafetensorsCheckpoint(args.modelDir)
  try {
    // One graph per layer, so that a client can use any part of the span (routes over overlapping
    // spans need that); the per-run overhead is small next to a layer's work.
    for (const index of range(args.start, args.end)) {
      const bytes = buildSpanGraph({ config, quant: args.quant, rotary, layers: [{ index, weights: readLayerWeights(checkpoint, config, index) }] })
      const session = await ort.InferenceSession.create(bytes, sessionOptions(args.threads))
      graphs.set(index, { session, fetches: [SPAN_IO.hiddenOut, SPAN_IO.newKey(index), SPAN_IO.newValue(index)] })
    }
    return { config, bytesRead: checkpoint.bytesRead, maxPositions }
  } finally {
    checkpoint.close()
  }
}

function open ({ sessionId, maxLength, start = span.start, end = span.end }: OpenArgs): SpanStats {
  if (sessions.has(sessionId)) throw new InvalidArgumentError(`session ${sessionId} is already open`)
  if (!(Number.isInteger(start) && Number.isInteger(end) && span.start <= start && start < end && end <= span.end)) {
    throw new InvalidArgumentError(`layers [${start}, ${end}) are not within this span [${span.start}, ${span.end})`)
  }
  if (!Number.isInteger(maxLength) || maxLength < 1 || maxLength > limits.maxPositions) {
    throw new ContextLengthError(`session length ${maxLength} must be between 1 and the model's context of ${limits.maxPositions} tokens`)
  }
  const { cacheTokens } = stats()
  if (sessions.size >= limits.maxSessions) throw new SessionLimitError(`busy: all ${limits.maxSessions} sessions are in use`)
  if (cacheTokens + maxLength > limits.maxCacheTokens) {
    throw new SessionLimitError(`busy: a cache of ${maxLength} tokens does not fit (${limits.maxCacheTokens - cacheTokens} of ${limits.maxCacheTokens} free)`)
  }
  const { numKvHeads, headDim } = config
  const dims = [1, numKvHeads, maxLength, headDim]
  const caches = new Map<number, LayerCache>()
  for (let layer = start; layer < end; layer++) {
    const keyData = new Float32Array(numKvHeads * maxLength * headDim)
    const valueData = new Float32Array(numKvHeads * maxLength * headDim)
    caches.set(layer, { keyData, valueData, key: new ort.Tensor('float32', keyData, dims), value: new ort.Tensor('float32', valueData, dims) })
  }
  sessions.set(sessionId, { start, end, capacity: maxLength, length: 0, caches })
  return stats()
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
  if (past + tokens > session.capacity) {
    throw new ContextLengthError(`${past} cached + ${tokens} new tokens exceed the session's length of ${session.capacity}`)
  }

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
  sessions.delete(sessionId)
  return stats()
}

function stats (): SpanStats {
  let cacheTokens = 0
  // Budgeted in tokens of the whole span, so that a session of a few layers counts for less.
  for (const s of sessions.values()) cacheTokens += Math.ceil(s.capacity * (s.end - s.start) / (span.end - span.start))
  return {
    sessions: sessions.size,
    cacheTokens,
    freeSessions: limits.maxSessions - sessions.size,
    freeCacheTokens: limits.maxCacheTokens - cacheTokens
  }
}

function range (start: number, end: number): number[] {
  return Array.from({ length: end - start }, (_, i) => start + i)
}

serveRequests({ load, open, forward, close, stats })
