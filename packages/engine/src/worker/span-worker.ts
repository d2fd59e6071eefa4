// Worker: hosts one span of decoder layers and the KV caches of its sessions.
import * as ort from 'onnxruntime-node'
import { loadModelConfig, type ModelConfig } from '../config.ts'
import { ContextLengthError, InvalidArgumentError, PositionError, SessionLimitError, ShapeError, UnknownSessionError } from '../errors.ts'
import { buildSpanGraph, SPAN_IO } from '../graph/span-graph.ts'
import { layerBytes, readLayerWeights } from '../layer-weights.ts'
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

export interface SpanLoadResult { config: ModelConfig, bytesRead: number, graphs: number, maxPositions: number }

export interface ForwardArgs { sessionId: string, hidden: Float32Array, tokens: number, position?: number }

export interface SpanStats { sessions: number, cacheTokens: number, freeSessions: number, freeCacheTokens: number }

// protobuf caps a ModelProto at 2 GiB: larger spans become several graphs run one after another.
const GRAPH_BYTES = 1.5 * 2 ** 30

interface LayerCache { key: ort.Tensor, value: ort.Tensor, keyData: Float32Array, valueData: Float32Array }

interface Session {
  capacity: number
  length: number
  caches: Map<number, LayerCache>
}

let config: ModelConfig
let limits: { maxSessions: number, maxCacheTokens: number, maxPositions: number }
let graphs: Array<{ session: ort.InferenceSession, layers: number[], fetches: string[] }> = []
let layers: number[] = []
const sessions = new Map<string, Session>()

async function load (args: SpanLoadArgs): Promise<SpanLoadResult> {
  config = loadModelConfig(args.modelDir)
  if (!(Number.isInteger(args.start) && Number.isInteger(args.end) && args.start >= 0 && args.start < args.end && args.end <= config.numLayers)) {
    throw new InvalidArgumentError(`span [${args.start}, ${args.end}) is not within the model's ${config.numLayers} layers`)
  }
  const maxPositions = config.maxPositionEmbeddings
  limits = { maxSessions: args.maxSessions, maxCacheTokens: args.maxCacheTokens ?? 16 * maxPositions, maxPositions }
  const rotary = { ...rotaryTables(config, maxPositions), positions: maxPositions }
  const checkpoint = new SafetensorsCheckpoint(args.modelDir)
  try {
    layers = range(args.start, args.end)
    const perGraph = Math.max(1, Math.floor(GRAPH_BYTES / layerBytes(config)))
    for (let i = 0; i < layers.length; i += perGraph) {
      const group = layers.slice(i, i + perGraph)
      const bytes = buildSpanGraph({
        config,
        quant: args.quant,
        rotary,
        layers: group.map(index => ({ index, weights: readLayerWeights(checkpoint, config, index) }))
      })
      const session = await ort.InferenceSession.create(bytes, sessionOptions(args.threads))
      const fetches = [SPAN_IO.hiddenOut, ...group.flatMap(l => [SPAN_IO.newKey(l), SPAN_IO.newValue(l)])]
      graphs.push({ session, layers: group, fetches })
    }
    return { config, bytesRead: checkpoint.bytesRead, graphs: graphs.length, maxPositions }
  } finally {
    checkpoint.close()
  }
}

function open ({ sessionId, maxLength }: { sessionId: string, maxLength: number }): SpanStats {
  if (sessions.has(sessionId)) throw new InvalidArgumentError(`session ${sessionId} is already open`)
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
  for (const layer of layers) {
    const keyData = new Float32Array(numKvHeads * maxLength * headDim)
    const valueData = new Float32Array(numKvHeads * maxLength * headDim)
    caches.set(layer, { keyData, valueData, key: new ort.Tensor('float32', keyData, dims), value: new ort.Tensor('float32', valueData, dims) })
  }
  sessions.set(sessionId, { capacity: maxLength, length: 0, caches })
  return stats()
}

async function forward ({ sessionId, hidden, tokens, position }: ForwardArgs): Promise<Transfer<Float32Array>> {
  const session = sessions.get(sessionId)
  if (session == null) throw new UnknownSessionError(`unknown session ${sessionId}`)
  const { hiddenSize } = config
  if (!Number.isInteger(tokens) || tokens < 1 || hidden.length !== tokens * hiddenSize) {
    throw new ShapeError(`hidden states of ${hidden.length} values do not match ${tokens} tokens × hidden size ${hiddenSize}`)
  }
  if (position != null && position !== session.length) {
    throw new PositionError(`position ${position} does not match the session's ${session.length} cached tokens`)
  }
  const past = session.length
  if (past + tokens > session.capacity) {
    throw new ContextLengthError(`${past} cached + ${tokens} new tokens exceed the session's length of ${session.capacity}`)
  }

  const positions = new BigInt64Array(tokens)
  for (let i = 0; i < tokens; i++) positions[i] = BigInt(past + i)
  const shared: Record<string, ort.Tensor> = {
    [SPAN_IO.positions]: new ort.Tensor('int64', positions, [1, tokens]),
    [SPAN_IO.seqlensK]: new ort.Tensor('int32', Int32Array.of(past + tokens - 1), [1]),
    [SPAN_IO.totalLength]: new ort.Tensor('int32', Int32Array.of(past + tokens), [])
  }
  let current: ort.Tensor = new ort.Tensor('float32', hidden, [1, tokens, hiddenSize])
  for (const graph of graphs) {
    const feeds: Record<string, ort.Tensor> = { ...shared, [SPAN_IO.hidden]: current }
    for (const layer of graph.layers) {
      const cache = session.caches.get(layer)!
      feeds[SPAN_IO.pastKey(layer)] = cache.key
      feeds[SPAN_IO.pastValue(layer)] = cache.value
    }
    const out = await graph.session.run(feeds, graph.fetches)
    for (const layer of graph.layers) {
      const cache = session.caches.get(layer)!
      appendToCache(cache.keyData, out[SPAN_IO.newKey(layer)].data as Float32Array, session.capacity, past, tokens)
      appendToCache(cache.valueData, out[SPAN_IO.newValue(layer)].data as Float32Array, session.capacity, past, tokens)
    }
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
  for (const s of sessions.values()) cacheTokens += s.capacity
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
