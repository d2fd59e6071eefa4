// A minga node: joins the swarm, picks its blocks, loads them, measures itself, serves sessions and
// keeps its announcement fresh until it stops.
import type { PrivateKey } from '@libp2p/interface'
import {
  createSpanExecutor, DEFAULT_CACHE_BYTES, DEFAULT_QUANT, kvBytesPerToken, loadModelConfig, parseModelConfig,
  type ModelConfig, type PrepareProgress, type Quantization, type SpanExecutor
} from '@minga/engine'
import {
  createMingaNode, DEFAULT_MAX_FRAME_BYTES, findSpans, handleChannel, INFERENCE_PROTOCOL, MAX_PAYLOAD_BYTES, parsePeerId,
  serveInfo, startAnnouncer, type Announcer, type ChannelServer, type MingaNode, type SpanInfo
} from '@minga/p2p'
import { resolveModel, serveWeights, type FetchModelInit, type FetchResult, type ResolvedModel, type WeightsProvider } from '@minga/weights'
import { chooseBlocks } from './block-selection.ts'
import { ServerConfigError } from './errors.ts'
import { ChainForwarder } from './forwarding.ts'
import { SessionHandler } from './handler.ts'
import { createServerMetrics, serveMetrics, type ServerMetrics } from './metrics.ts'
import { availableMemory, checkSpanFits, describe } from './memory.ts'
import { measureThroughput } from './throughput.ts'

export const MINGA_VERSION = '0.1.0'
export const DEFAULT_MAX_SESSIONS_PER_PEER = 8
export const DEFAULT_DRAIN_TIMEOUT_MS = 30_000
/** After the drain, how long FORWARDs on the remaining sessions get "moving" before the node closes. */
const MOVING_GRACE_MS = 2000
/**
 * Pause between the last session's end and closing the streams, so the last replies (the ACK of a
 * CLOSE_SESSION, a "moving" error) are read before the streams are reset behind them.
 */
const SETTLE_MS = 300

export interface ServerInit {
  /** The model directory; or give `modelId` instead and the span's tensors are fetched from the swarm. */
  modelDir?: string
  /** A model id (`minga manifest`): the manifest, the small files and this span's tensors are fetched from providers in the swarm. */
  modelId?: string
  /** Share the weights this node holds (the directory, or what it fetched) with the swarm. Default true. */
  share?: boolean
  /** Upload cap for sharing, in megabits per second (default: none). */
  shareMbps?: number
  /** Chunk transfers served at once (default 8). */
  maxTransfers?: number
  /** Chunk size of the directory's manifest (default 4 MiB; it is part of the model id). */
  chunkBytes?: number
  /** With modelId: options for the fetch (providers, parallelism, progress, a signal). */
  fetch?: Partial<Pick<FetchModelInit, 'providers' | 'parallel' | 'progress' | 'signal' | 'onChunk' | 'requestTimeoutMs'>>
  /** Layers [start, end) to host, or 'auto' to fill the swarm's weakest blocks. */
  blocks: { start: number, end: number } | 'auto'
  /** With blocks 'auto': how many consecutive blocks (default: all). */
  numBlocks?: number
  listen?: string[]
  bootstrap?: string[]
  publicName?: string
  maxSessions?: number
  /** KV cache budget in MiB, all sessions together (default 256). Caches grow as sessions fill them. */
  cacheMb?: number
  /** The same budget in tokens of the whole span, instead of cacheMb. */
  cacheTokens?: number
  /** Default int8; 'none' keeps f32. */
  quant?: Quantization
  /** The cache folder: prepared spans (prepared/), fetched models (models/), manifests (default: the engine's defaultCacheDir()). */
  cacheDir?: string
  /** Each layer prepared on the first start of a span. */
  onPrepareProgress?: (progress: PrepareProgress) => void
  /**
   * Memory the node may use, in bytes (default: MemAvailable, or less under a cgroup limit). A span
   * that needs more (weights + KV cache budget + runtime) is refused before anything loads.
   */
  availableMemory?: number
  privateKey?: PrivateKey
  /** Announce this many tokens/s instead of measuring. */
  throughput?: number
  /** Lifetime of the DHT announcement; it is renewed every third of it. Default 60 s. */
  announceTtlMs?: number
  /** Sessions idle this long are closed. Default 5 min. */
  sessionIdleMs?: number
  threads?: number
  /** The swarm's pre-shared key (a key file's bytes, see loadSwarmKey): only peers with it can connect. */
  swarmKey?: Uint8Array
  /** Only these peers (peer id strings) may open sessions; others get NOT_ALLOWED. Default: anyone. */
  allow?: string[]
  /** Sessions one peer may hold at once; more get BUSY. Default 8. */
  maxSessionsPerPeer?: number
  /** Largest inference frame accepted (bigger ones get TOO_LARGE). Default 64 MiB. */
  maxFrameBytes?: number
  /** On stop(), how long open sessions may go on before they are told to move. Default 30 s. */
  drainTimeoutMs?: number
  /**
   * An executor to serve instead of loading one (its span is the server's). Lets an embedder wrap
   * the engine, e.g. tests that need a server which corrupts its outputs.
   */
  executor?: SpanExecutor
  /** Serve Prometheus metrics at http://metricsHost:metricsPort/metrics (0: any free port). Default: none. */
  metricsPort?: number
  /** Default 127.0.0.1. */
  metricsHost?: string
  log?: (message: string) => void
}

export interface MingaServer {
  readonly node: MingaNode
  /** The directory the span was loaded from (the local store's, when fetched). */
  readonly modelDir: string
  /** What the fetch did, when the server started from a model id. */
  readonly fetched?: FetchResult
  /** The weights provider, unless sharing is off. */
  readonly weights?: WeightsProvider
  readonly peerId: string
  readonly modelId: string
  readonly start: number
  readonly end: number
  readonly throughput: number
  /** Sessions open now. */
  readonly openSessions: number
  /** The node's metrics (also served at metricsUrl when ServerInit.metricsPort is set). */
  readonly metrics: ServerMetrics
  /** http://host:port/metrics, when metricsPort was given. */
  readonly metricsUrl?: string
  addrs (): string[]
  /**
   * Stops gracefully: refuses new sessions (BUSY "busy: this server is shutting down"), withdraws
   * the span from the DHT, lets open sessions go on until they close or `drainTimeoutMs` (default:
   * ServerInit's) has passed since the call, then answers their FORWARDs with BUSY "moving: this
   * server is shutting down, continue elsewhere" for up to 2 s, and closes. `immediate` skips
   * whatever is left of that (e.g. a second SIGTERM) and closes at once. Later calls resolve with
   * the first; every call resolves when the server has stopped.
   */
  stop (options?: { drainTimeoutMs?: number, immediate?: boolean }): Promise<void>
}

export async function createServer (init: ServerInit): Promise<MingaServer> {
  const log = init.log ?? (() => {})
  const limits = checkLimits(init)
  if ((init.modelDir == null) === (init.modelId == null)) throw new ServerConfigError('give either a model directory (--model) or a model id (--model-id)')
  // a directory is checked (and its manifest built) before any network work
  if (init.modelDir != null) loadModelConfig(init.modelDir)
  const local = init.modelDir != null ? await resolveModel({ modelDir: init.modelDir, chunkBytes: init.chunkBytes, cacheDir: init.cacheDir }) : undefined
  const node = await createMingaNode({
    listen: init.listen,
    bootstrap: init.bootstrap,
    privateKey: init.privateKey,
    swarmKey: init.swarmKey,
    maxFrameBytes: limits.maxFrameBytes
  })
  let executor: SpanExecutor | undefined
  let channels: ChannelServer | undefined
  let handler: SessionHandler | undefined
  const chain = new ChainForwarder({ node, maxFrameBytes: limits.maxFrameBytes, timeoutMs: 30_000, log })
  let announcer: Announcer | undefined
  let metricsServer: Awaited<ReturnType<typeof serveMetrics>> | undefined
  let model: ResolvedModel | undefined = local
  let weights: WeightsProvider | undefined

  // Shutdown, in steps: withdraw, drain, tell the rest to move, close. The drain is timed from the
  // stop() call; `now` (stop({ immediate: true })) ends whichever step is in progress and skips the rest.
  let stopping: Promise<void> | undefined
  let stopNow!: () => void
  const now = new Promise<void>(resolve => { stopNow = resolve })
  const shutdown = async (drainTimeoutMs: number): Promise<void> => {
    let drainTimer: ReturnType<typeof setTimeout> | undefined
    // (setTimeout cannot wait longer than 2^31 - 1 ms; an infinite drain has no timer at all)
    const drainOver = new Promise<void>(resolve => { if (Number.isFinite(drainTimeoutMs)) drainTimer = setTimeout(resolve, Math.min(drainTimeoutMs, 2 ** 31 - 1)) })
    try {
      // (b) no new sessions from here on: BUSY "busy: this server is shutting down"
      if (handler != null) handler.accepting = false
      // (a) withdraw the announcement, so routes planned from now on skip this node
      await Promise.race([announcer?.stop().catch((err: any) => { log(`withdrawing the span failed: ${err?.message ?? err}`) }), now])
      const sessions = handler
      const drained = sessions != null && sessions.openSessions > 0
      if (sessions != null && sessions.openSessions > 0) {
        // (c) open sessions go on until they close or the drain timeout passes
        log(`draining: ${sessions.openSessions} open session${sessions.openSessions === 1 ? '' : 's'} may go on for up to ${Math.ceil(drainTimeoutMs / 1000)} s`)
        await Promise.race([sessions.whenEmpty(), drainOver, now])
      }
      if (sessions != null && sessions.openSessions > 0) {
        // (d) their next FORWARD gets BUSY "moving: …"; a moment for them to send it, then close
        log(`drain over: telling ${sessions.openSessions} session${sessions.openSessions === 1 ? '' : 's'} to continue elsewhere`)
        sessions.moving = true
        let graceTimer: ReturnType<typeof setTimeout> | undefined
        const grace = new Promise<void>(resolve => { graceTimer = setTimeout(resolve, MOVING_GRACE_MS) })
        await Promise.race([sessions.whenEmpty(), grace, now])
        clearTimeout(graceTimer)
      }
      if (drained) {
        let settleTimer: ReturnType<typeof setTimeout> | undefined
        await Promise.race([new Promise<void>(resolve => { settleTimer = setTimeout(resolve, SETTLE_MS) }), now])
        clearTimeout(settleTimer)
      }
    } finally {
      clearTimeout(drainTimer)
    }
    // (e) close
    if (metricsServer != null) {
      const { server } = metricsServer
      await new Promise<void>(resolve => { server.close(() => { resolve() }); server.closeAllConnections() })
    }
    await channels?.close()
    await weights?.close()
    await chain.close()
    await handler?.stop()
    await executor?.close()
    model?.close()
    await node.stop()
  }
  const stop = async (options: { drainTimeoutMs?: number, immediate?: boolean } = {}): Promise<void> => {
    if (options.immediate === true) stopNow()
    stopping ??= shutdown(Math.max(0, options.drainTimeoutMs ?? limits.drainTimeoutMs))
    await stopping
  }
  try {
    const pickBlocks = async (config: ModelConfig, modelId: string): Promise<{ start: number, end: number }> => init.executor != null
      ? { start: init.executor.start, end: init.executor.end }
      : init.blocks === 'auto'
      ? chooseBlocks(config.numLayers, init.numBlocks ?? config.numLayers, (init.bootstrap?.length ?? 0) > 0 ? await findSpans(node, modelId, config.numLayers) : [])
      : init.blocks
    let blocks!: { start: number, end: number }
    model ??= await resolveModel({
      modelId: init.modelId,
      node,
      cacheDir: init.cacheDir,
      log,
      ...init.fetch,
      // the span is chosen from the fetched config.json, and only its tensors are fetched
      select: async (_manifest, rawConfig) => {
        const config = parseModelConfig(rawConfig)
        blocks = await pickBlocks(config, init.modelId!)
        checkBlocks(blocks, config)
        return { blocks }
      }
    })
    const modelDir = model.dir
    const modelId = model.modelId
    const config = loadModelConfig(modelDir)
    if (model.fetched != null) log(`fetched ${(model.fetched.bytesFetched / 1e6).toFixed(1)} MB in ${model.fetched.chunksFetched} chunks (${model.fetched.chunksReused} already held) into ${modelDir}`)
    else blocks = await pickBlocks(config, modelId)
    checkBlocks(blocks, config)
    log(`model ${modelId}: hosting blocks [${blocks.start}, ${blocks.end}) of ${config.numLayers}`)
    if (init.executor != null) {
      executor = init.executor
    } else {
      const quant = init.quant ?? DEFAULT_QUANT
      const cacheBytes = init.cacheTokens != null ? init.cacheTokens * kvBytesPerToken(config, blocks.end - blocks.start) : limits.cacheBytes
      const available = init.availableMemory != null ? { bytes: init.availableMemory, source: 'as configured' } : availableMemory()
      const need = checkSpanFits(config, quant, blocks, cacheBytes, available)
      log(`blocks [${blocks.start}, ${blocks.end}) at ${quant} take ≈ ${describe(need)}`)
      executor = await createSpanExecutor({
        modelDir,
        modelId,
        cacheDir: init.cacheDir,
        start: blocks.start,
        end: blocks.end,
        quant,
        threads: init.threads,
        maxSessions: init.maxSessions,
        cacheBytes,
        onPrepareProgress: init.onPrepareProgress,
        log
      })
      log(executor.prepared.built.length > 0
        ? `prepared ${executor.prepared.built.length} layer${executor.prepared.built.length === 1 ? '' : 's'} into ${executor.prepared.dir}`
        : `loaded the prepared span from ${executor.prepared.dir}`)
    }
    const throughput = init.throughput ?? await measureThroughput(executor)
    log(`throughput ${throughput.toFixed(1)} tokens/s through the span`)

    const span = executor
    let openSessions = (): number => 0
    const metrics = createServerMetrics({ openSessions: () => openSessions(), stats: async () => await span.stats() })
    const sessions = new SessionHandler({
      executor,
      idleTimeoutMs: init.sessionIdleMs ?? 5 * 60_000,
      maxSessionsPerPeer: limits.maxSessionsPerPeer,
      allow: limits.allow,
      onForward: metrics.forward,
      chain,
      log
    })
    openSessions = () => sessions.openSessions
    handler = sessions
    channels = await handleChannel(node, INFERENCE_PROTOCOL, sessions.onFrame, {
      maxFrameBytes: limits.maxFrameBytes,
      onAnswered: metrics.answered,
      onError: (err: any) => { log(`request failed: ${err?.message ?? err}`) }
    })
    await serveInfo(node, () => ({
      modelId, modelType: config.modelType, numLayers: config.numLayers, start: blocks.start, end: blocks.end, version: MINGA_VERSION,
      ...(init.publicName != null ? { name: init.publicName } : {})
    }))
    const info = async (): Promise<SpanInfo> => {
      const stats = await span.stats()
      return {
        modelId,
        start: blocks.start,
        end: blocks.end,
        throughput,
        freeSessions: sessions.accepting ? stats.freeSessions : 0,
        freeCacheTokens: stats.freeCacheTokens,
        version: MINGA_VERSION,
        name: init.publicName
      }
    }
    const ttlMs = init.announceTtlMs ?? 60_000
    announcer = startAnnouncer(node, info, { ttlMs, onError: (err: any) => { log(`announce failed: ${err?.message ?? err}`) } })
    await announcer.ready
    if (init.metricsPort != null) {
      metricsServer = await serveMetrics(metrics.registry, init.metricsHost ?? '127.0.0.1', init.metricsPort)
      log(`metrics at ${metricsServer.url}`)
    }
    if (init.share !== false) weights = await serveWeights(node, [model.source], { shareMbps: init.shareMbps, maxTransfers: init.maxTransfers, log })

    return {
      node,
      modelDir,
      fetched: model.fetched,
      weights,
      peerId: node.peerId.toString(),
      modelId,
      start: blocks.start,
      end: blocks.end,
      throughput,
      get openSessions () { return sessions.openSessions },
      metrics,
      metricsUrl: metricsServer?.url,
      addrs: () => node.addrs(),
      stop
    }
  } catch (err) {
    await stop({ immediate: true }).catch(() => {})
    throw err
  }
}

function checkBlocks (blocks: { start: number, end: number }, config: ModelConfig): void {
  if (!(blocks.start >= 0 && blocks.start < blocks.end && blocks.end <= config.numLayers)) {
    throw new ServerConfigError(`--blocks ${blocks.start}:${blocks.end} is not within the model's ${config.numLayers} layers`)
  }
}

/** Checks the limits before anything starts; each bad value is a ServerConfigError naming it. */
function checkLimits (init: ServerInit): { allow?: Set<string>, maxSessionsPerPeer: number, maxFrameBytes: number, drainTimeoutMs: number, cacheBytes: number } {
  const allow = init.allow != null
    ? new Set(init.allow.map(id => {
      try {
        return parsePeerId(id).toString()
      } catch (err) {
        throw new ServerConfigError(`--allow: ${(err as Error).message}`)
      }
    }))
    : undefined
  const maxSessionsPerPeer = init.maxSessionsPerPeer ?? DEFAULT_MAX_SESSIONS_PER_PEER
  if (!(Number.isInteger(maxSessionsPerPeer) && maxSessionsPerPeer >= 1)) throw new ServerConfigError(`--max-sessions-per-peer must be an integer ≥ 1, got ${maxSessionsPerPeer}`)
  const maxFrameBytes = init.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
  if (!(Number.isInteger(maxFrameBytes) && maxFrameBytes >= 4096 && maxFrameBytes <= MAX_PAYLOAD_BYTES)) {
    throw new ServerConfigError(`the frame size limit (--max-frame-mb) must be from 4 KiB to ${MAX_PAYLOAD_BYTES / 2 ** 20} MiB, got ${maxFrameBytes} bytes`)
  }
  const drainTimeoutMs = init.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS
  if (!(drainTimeoutMs >= 0)) throw new ServerConfigError(`--drain-timeout must be ≥ 0, got ${drainTimeoutMs / 1000} s`)
  if (init.cacheMb != null && init.cacheTokens != null) throw new ServerConfigError('give the KV cache budget as --cache-mb or as --cache-tokens, not both')
  if (init.cacheMb != null && !(init.cacheMb > 0)) throw new ServerConfigError(`--cache-mb must be > 0, got ${init.cacheMb}`)
  if (init.cacheTokens != null && !(Number.isInteger(init.cacheTokens) && init.cacheTokens >= 1)) throw new ServerConfigError(`--cache-tokens must be an integer ≥ 1, got ${init.cacheTokens}`)
  const cacheBytes = init.cacheMb != null ? Math.round(init.cacheMb * 2 ** 20) : DEFAULT_CACHE_BYTES
  return { allow, maxSessionsPerPeer, maxFrameBytes, drainTimeoutMs, cacheBytes }
}
