// A minga node: joins the swarm, picks its blocks, loads them, measures itself, serves sessions and
// keeps its announcement fresh until it stops.
import { basename } from 'node:path'
import type { PrivateKey } from '@libp2p/interface'
import {
  createSpanExecutor, DEFAULT_CACHE_BYTES, DEFAULT_QUANT, kvBytesPerToken, loadManifest, loadModelConfig, parseModelConfig,
  type ModelConfig, type PrepareProgress, type Quantization, type SpanExecutor
} from '@minga/engine'
import { DEFAULT_MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES } from '@minga/p2p/frames'
// Only types from here on at the top: libp2p and what uses it are imported inside createServer,
// after the span's worker has started (see there).
import type { Announcer, ChannelServer, MingaNode, RelayLimits, SpanInfo, SpanMove } from '@minga/p2p'
import type { FetchModelInit, FetchResult, ResolvedModel, WeightsProvider } from '@minga/weights'
import { chooseBlocks } from './block-selection.ts'
import { ServerConfigError } from './errors.ts'
import type { SessionHandler } from './handler.ts'
import type { ServerMetrics } from './metrics.ts'
import { availableMemory, checkSpanFits, describe } from './memory.ts'
import type { MovePlan, Rebalancer } from './rebalance.ts'

export const MINGA_VERSION = '0.1.0'
export const DEFAULT_MAX_SESSIONS_PER_PEER = 8
export const DEFAULT_DRAIN_TIMEOUT_MS = 30_000
export const DEFAULT_REBALANCE_INTERVAL_MS = 120_000
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
  /** Or the key file to keep the identity in (created if missing; read once libp2p is loaded, see loadOrCreateIdentity). */
  identityFile?: string
  /** Announce this many tokens/s instead of measuring. */
  throughput?: number
  /** Lifetime of the DHT announcement; it is renewed every third of it. Default 60 s. */
  announceTtlMs?: number
  /** Sessions idle this long are closed. Default 5 min. */
  sessionIdleMs?: number
  threads?: number
  /** Worker threads the span is split into (default: the engine's defaultSpanWorkers). */
  workers?: number
  /**
   * The longest a step may wait for other sessions' steps to run through the span with it as one
   * batch, in ms (0 to the engine's MAX_BATCH_WAIT_MS; default its DEFAULT_BATCH_WAIT_MS). It waits
   * only for sessions due back within about one batch's run.
   */
  batchWaitMs?: number
  /** The swarm's pre-shared key (a key file's bytes, see loadSwarmKey): only peers with it can connect. */
  swarmKey?: Uint8Array
  /** Or the swarm key file (minga keygen) to read it from. */
  swarmKeyFile?: string
  /** Also relay for nodes behind NAT (`--relay`), within these limits. */
  relay?: boolean | RelayLimits
  /** 'auto' (default): take a relay slot if peers cannot dial this node back. See MingaNodeInit. */
  reachability?: 'auto' | 'public' | 'private'
  /** Only these peers (peer id strings) may open sessions; others get NOT_ALLOWED. Default: anyone. */
  allow?: string[]
  /** Sessions one peer may hold at once; more get BUSY. Default 8. */
  maxSessionsPerPeer?: number
  /** Largest inference frame accepted (bigger ones get TOO_LARGE). Default 64 MiB. */
  maxFrameBytes?: number
  /** On stop(), how long open sessions may go on before they are told to move. Default 30 s. */
  drainTimeoutMs?: number
  /**
   * With blocks 'auto': how often (on average, randomized) to check whether moving the span would
   * heal the swarm's coverage. Default 120 s.
   */
  rebalanceIntervalMs?: number
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
  /** The span served now (it changes when a `--blocks auto` server moves). */
  readonly start: number
  readonly end: number
  readonly throughput: number
  /** Sessions open now. */
  readonly openSessions: number
  /** The node's metrics (also served at metricsUrl when ServerInit.metricsPort is set). */
  readonly metrics: ServerMetrics
  /** http://host:port/metrics, when metricsPort was given. */
  readonly metricsUrl?: string
  /** The last time this server moved its span, and why (undefined if it never moved). */
  readonly lastMove: SpanMove | undefined
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

/** One span being served: its engine, its sessions and its announcement. */
interface ActiveSpan {
  start: number
  end: number
  throughput: number
  executor: SpanExecutor
  sessions: SessionHandler
  announcer?: Announcer
}

/**
 * Waits for `what` (if given), at most `ms`, and not past `interrupt`; clears its timer either way.
 */
async function within (ms: number, interrupt: Promise<void>, what?: Promise<unknown>): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined
  // (setTimeout cannot wait longer than 2^31 - 1 ms; an infinite wait has no timer at all)
  const elapsed = new Promise<void>(resolve => { if (Number.isFinite(ms)) timer = setTimeout(resolve, Math.min(ms, 2 ** 31 - 1)) })
  try {
    await Promise.race([elapsed, interrupt, ...(what != null ? [what.then(() => {}, () => {})] : [])])
  } finally {
    clearTimeout(timer)
  }
}

export async function createServer (init: ServerInit): Promise<MingaServer> {
  const log = init.log ?? (() => {})
  const limits = await checkLimits(init)
  if ((init.modelDir == null) === (init.modelId == null)) throw new ServerConfigError('give either a model directory (--model) or a model id (--model-id)')
  if (init.rebalanceIntervalMs != null && !(init.rebalanceIntervalMs >= 100)) throw new ServerConfigError(`--rebalance-interval must be ≥ 0.1 s, got ${init.rebalanceIntervalMs / 1000} s`)
  // a directory is checked (and its manifest built) before any network work
  if (init.modelDir != null) loadModelConfig(init.modelDir)
  /** Checks that `blocks` fit in memory, then starts their executor (which prepares the layers the first time). */
  const openExecutor = async (model: { dir: string, modelId: string, config: ModelConfig }, blocks: { start: number, end: number }): Promise<SpanExecutor> => {
    log(`model ${model.modelId}: hosting blocks [${blocks.start}, ${blocks.end}) of ${model.config.numLayers}`)
    const quant = init.quant ?? DEFAULT_QUANT
    const cacheBytes = init.cacheTokens != null ? init.cacheTokens * kvBytesPerToken(model.config, blocks.end - blocks.start) : limits.cacheBytes
    const available = init.availableMemory != null ? { bytes: init.availableMemory, source: 'as configured' } : availableMemory()
    const need = checkSpanFits(model.config, quant, blocks, cacheBytes, available)
    log(`blocks [${blocks.start}, ${blocks.end}) at ${quant} take ≈ ${describe(need)}`)
    const executor = await createSpanExecutor({
      modelDir: model.dir,
      modelId: model.modelId,
      cacheDir: init.cacheDir,
      start: blocks.start,
      end: blocks.end,
      quant,
      threads: init.threads,
      workers: init.workers,
      maxSessions: init.maxSessions,
      cacheBytes,
      batchWaitMs: init.batchWaitMs,
      onPrepareProgress: init.onPrepareProgress,
      log
    })
    log(executor.prepared.built.length > 0
      ? `prepared ${executor.prepared.built.length} layer${executor.prepared.built.length === 1 ? '' : 's'} into ${executor.prepared.dir}`
      : `loaded the prepared span from ${executor.prepared.dir}`)
    return executor
  }
  // A local model with fixed blocks starts loading them (in the span's worker thread) first, and
  // libp2p and everything built on it are imported and started meanwhile (on the other core): a warm
  // start then takes the longer of the two, not their sum.
  let early: Promise<SpanExecutor> | undefined
  if (init.modelDir != null && init.blocks !== 'auto' && init.executor == null) {
    const localConfig = loadModelConfig(init.modelDir)
    checkBlocks(init.blocks, localConfig)
    const { id } = loadManifest(init.modelDir, { chunkBytes: init.chunkBytes, cacheDir: init.cacheDir })
    early = openExecutor({ dir: init.modelDir, modelId: id, config: localConfig }, init.blocks)
    // (a failure is seen where the span is awaited below, not as an unhandled rejection meanwhile)
    early.catch(() => {})
  }
  const closeEarly = async (): Promise<void> => { await early?.then(async executor => { await executor.close() }, () => {}) }
  const networked = await import('./networked.ts').catch(async (err: unknown) => { await closeEarly(); throw err })
  const {
    ChainForwarder, createMingaNode, createServerMetrics, ErrorCode, findSpans, handleChannel, INFERENCE_PROTOCOL, measureThroughput,
    ProtocolError, resolveModel, serveInfo, serveMetrics, serveWeights, SessionHandler, startAnnouncer, startRebalancer
  } = networked
  let local: ResolvedModel | undefined
  let privateKey = init.privateKey
  let swarmKey = init.swarmKey
  try {
    local = init.modelDir != null ? await resolveModel({ modelDir: init.modelDir, chunkBytes: init.chunkBytes, cacheDir: init.cacheDir }) : undefined
    if (privateKey == null && init.identityFile != null) privateKey = await networked.loadOrCreateIdentity(init.identityFile)
    if (swarmKey == null && init.swarmKeyFile != null) swarmKey = await networked.loadSwarmKey(init.swarmKeyFile)
  } catch (err) {
    await closeEarly()
    throw err
  }
  const node = await createMingaNode({
    listen: init.listen,
    bootstrap: init.bootstrap,
    privateKey,
    swarmKey,
    maxFrameBytes: limits.maxFrameBytes,
    relay: init.relay,
    reachability: init.reachability
  }).catch(async (err: unknown) => {
    await closeEarly()
    throw err
  })
  const reach = node.reachability()
  if (reach.status === 'private') log(reach.relayed ? `not reachable from outside: serving through a relay (${node.addrs().filter(a => a.includes('/p2p-circuit')).join(', ')})` : 'not reachable from outside and no relay slot found: only peers that can reach this node directly can use it')
  let model: ResolvedModel | undefined = local
  // known once the model is resolved (a model id fetches its config first)
  let modelId!: string
  let modelDir!: string
  let config!: ModelConfig
  let active: ActiveSpan | undefined
  let channels: ChannelServer | undefined
  let rebalancer: Rebalancer | undefined
  let moving: Promise<void> | undefined
  let lastMove: SpanMove | undefined
  let metricsServer: Awaited<ReturnType<typeof serveMetrics>> | undefined
  let weights: WeightsProvider | undefined
  const chain = new ChainForwarder({ node, maxFrameBytes: limits.maxFrameBytes, timeoutMs: 30_000, log })
  const metrics = createServerMetrics({
    openSessions: () => active?.sessions.openSessions ?? 0,
    // no span while one loads or moves: its gauges read 0 then
    stats: async () => await active?.executor.stats()
  })
  const ttlMs = init.announceTtlMs ?? 60_000

  // Shutdown, in steps: withdraw, drain, tell the rest to move, close. The drain is timed from the
  // stop() call; `now` (stop({ immediate: true })) ends whichever step is in progress and skips the rest.
  let stopping: Promise<void> | undefined
  let stopNow!: () => void
  const now = new Promise<void>(resolve => { stopNow = resolve })

  /** Steps (a)–(d) of a shutdown, also what a move does to the span it leaves. */
  const drain = async (span: ActiveSpan, drainTimeoutMs: number): Promise<void> => {
    const drainEnds = Date.now() + drainTimeoutMs // timed from the start, withdrawal included
    const { sessions } = span
    // (b) no new sessions from here on: BUSY "busy: this server is shutting down"
    sessions.accepting = false
    // (a) withdraw the announcement, so routes planned from now on skip this span
    await Promise.race([span.announcer?.stop().catch((err: any) => { log(`withdrawing the span failed: ${err?.message ?? err}`) }), now])
    const drained = sessions.openSessions > 0
    if (sessions.openSessions > 0) {
      // (c) open sessions go on until they close or the drain timeout passes
      log(`draining: ${sessions.openSessions} open session${sessions.openSessions === 1 ? '' : 's'} may go on for up to ${Math.ceil(drainTimeoutMs / 1000)} s`)
      await within(drainEnds - Date.now(), now, sessions.whenEmpty())
    }
    if (sessions.openSessions > 0) {
      // (d) their next FORWARD gets BUSY "moving: …"; a moment for them to send it, then close
      log(`drain over: telling ${sessions.openSessions} session${sessions.openSessions === 1 ? '' : 's'} to continue elsewhere`)
      sessions.moving = true
      await within(MOVING_GRACE_MS, now, sessions.whenEmpty())
    }
    if (drained) await within(SETTLE_MS, now)
  }

  const release = async (span: ActiveSpan): Promise<void> => {
    await span.sessions.stop()
    await span.executor.close()
  }

  const shutdown = async (drainTimeoutMs: number): Promise<void> => {
    node.libp2p.removeEventListener('self:peer:update', onSelfUpdate)
    await Promise.race([rebalancer?.stop(), now])
    // a move in progress finishes first (it is bounded by the same drain), then the new span drains
    if (moving != null) await within(drainTimeoutMs, now, moving)
    if (active != null) await drain(active, drainTimeoutMs)
    // (e) close
    if (metricsServer != null) {
      const { server } = metricsServer
      await new Promise<void>(resolve => { server.close(() => { resolve() }); server.closeAllConnections() })
    }
    await channels?.close()
    await weights?.close()
    await chain.close()
    if (active != null) await release(active)
    model?.close()
    await node.stop()
  }
  const stop = async (options: { drainTimeoutMs?: number, immediate?: boolean } = {}): Promise<void> => {
    if (options.immediate === true) stopNow()
    stopping ??= shutdown(Math.max(0, options.drainTimeoutMs ?? limits.drainTimeoutMs))
    await stopping
  }

  /** Loads `blocks` (preparing them the first time), measures them and makes their session handler (not announced yet). */
  const load = async (blocks: { start: number, end: number }, loading?: Promise<SpanExecutor>): Promise<ActiveSpan> => {
    const executor = await (loading ?? openExecutor({ dir: modelDir, modelId, config }, blocks))
    try {
      const throughput = init.throughput ?? await measureThroughput(executor)
      log(`throughput ${throughput.toFixed(1)} tokens/s through the span`)
      const sessions = new SessionHandler({
        executor,
        idleTimeoutMs: init.sessionIdleMs ?? 5 * 60_000,
        maxSessionsPerPeer: limits.maxSessionsPerPeer,
        allow: limits.allow,
        onForward: metrics.forward,
        chain,
        log
      })
      return { start: blocks.start, end: blocks.end, throughput, executor, sessions }
    } catch (err) {
      await executor.close()
      throw err
    }
  }

  const announce = async (span: ActiveSpan): Promise<void> => {
    const info = async (): Promise<SpanInfo> => {
      const stats = await span.executor.stats()
      return {
        modelId,
        start: span.start,
        end: span.end,
        throughput: span.throughput,
        freeSessions: span.sessions.accepting ? stats.freeSessions : 0,
        freeCacheTokens: stats.freeCacheTokens,
        version: MINGA_VERSION,
        name: init.publicName,
        // (the prepared folder's name: quantization, format and its version, e.g. int8-rows7-v3)
        weights: basename(span.executor.prepared.dir)
      }
    }
    span.announcer = startAnnouncer(node, info, { ttlMs, onError: (err: any) => { log(`announce failed: ${err?.message ?? err}`) } })
    await span.announcer.ready
  }

  // A relay slot taken, moved or lost changes this node's addresses: re-announce at once.
  let announcedAddrs = node.addrs().join(' ')
  function onSelfUpdate (): void {
    const addrs = node.addrs().join(' ')
    if (addrs === announcedAddrs) return
    announcedAddrs = addrs
    void active?.announcer?.announceNow()
  }

  /** Moves the span without stopping the process: drain the old one like a shutdown, load, announce. */
  const moveTo = async (plan: MovePlan): Promise<void> => {
    if (stopping != null || active == null) return
    const old = active
    moving = (async () => {
      await drain(old, limits.drainTimeoutMs)
      await release(old)
      if (stopping != null) { active = undefined; return }
      try {
        active = await load(plan)
      } catch (err: any) {
        log(`loading blocks [${plan.start}, ${plan.end}) failed (${err?.message ?? err}); going back to [${old.start}, ${old.end})`)
        active = await load(old)
        await announce(active)
        return
      }
      lastMove = { at: Date.now(), from: [old.start, old.end], to: [plan.start, plan.end], reason: plan.reason }
      await announce(active)
      log(`moved from blocks [${old.start}, ${old.end}) to [${plan.start}, ${plan.end})`)
    })()
    try {
      await moving
    } finally {
      moving = undefined
    }
  }

  try {
    const pickBlocks = async (modelConfig: ModelConfig, id: string): Promise<{ start: number, end: number }> => init.executor != null
      ? { start: init.executor.start, end: init.executor.end }
      : init.blocks === 'auto'
      ? chooseBlocks(modelConfig.numLayers, init.numBlocks ?? modelConfig.numLayers, (init.bootstrap?.length ?? 0) > 0 ? await findSpans(node, id, modelConfig.numLayers) : [])
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
        const fetchedConfig = parseModelConfig(rawConfig)
        blocks = await pickBlocks(fetchedConfig, init.modelId!)
        checkBlocks(blocks, fetchedConfig)
        return { blocks }
      }
    })
    modelDir = model.dir
    modelId = model.modelId
    config = loadModelConfig(modelDir)
    if (model.fetched != null) log(`fetched ${(model.fetched.bytesFetched / 1e6).toFixed(1)} MB in ${model.fetched.chunksFetched} chunks (${model.fetched.chunksReused} already held) into ${modelDir}`)
    else blocks = await pickBlocks(config, modelId)
    checkBlocks(blocks, config)
    active = await load(blocks, early ?? (init.executor != null ? Promise.resolve(init.executor) : undefined))
    // one inference handler for the node's life; it hands frames to whichever span is served now
    channels = await handleChannel(node, INFERENCE_PROTOCOL, async (frame, peer, ctx) => {
      const span = active
      if (span == null) throw new ProtocolError(ErrorCode.BUSY, 'busy: this server is moving its span')
      return await span.sessions.onFrame(frame, peer, ctx)
    }, {
      maxFrameBytes: limits.maxFrameBytes,
      onAnswered: metrics.answered,
      onError: (err: any) => { log(`request failed: ${err?.message ?? err}`) }
    })
    await serveInfo(node, () => ({
      modelId,
      modelType: config.modelType,
      numLayers: config.numLayers,
      start: active?.start ?? blocks.start,
      end: active?.end ?? blocks.end,
      version: MINGA_VERSION,
      ...(init.publicName != null ? { name: init.publicName } : {}),
      ...(lastMove != null ? { lastMove } : {})
    }))
    await announce(active)
    node.libp2p.addEventListener('self:peer:update', onSelfUpdate)
    if (init.metricsPort != null) {
      metricsServer = await serveMetrics(metrics.registry, init.metricsHost ?? '127.0.0.1', init.metricsPort)
      log(`metrics at ${metricsServer.url}`)
    }
    if (init.share !== false) weights = await serveWeights(node, [model.source], { shareMbps: init.shareMbps, maxTransfers: init.maxTransfers, log })
    if (init.blocks === 'auto' && init.executor == null && (init.bootstrap?.length ?? 0) > 0) {
      rebalancer = startRebalancer({
        intervalMs: init.rebalanceIntervalMs ?? DEFAULT_REBALANCE_INTERVAL_MS,
        numLayers: config.numLayers,
        view: async () => {
          const self = node.peerId.toString()
          const others = (await findSpans(node, modelId, config.numLayers)).filter(e => e.peerId !== self)
          const span = active ?? blocks
          return { self: { peerId: self, start: span.start, end: span.end, throughput: active?.throughput ?? 0 }, others }
        },
        move: moveTo,
        log
      })
    }

    return {
      node,
      modelDir,
      fetched: model.fetched,
      weights,
      peerId: node.peerId.toString(),
      modelId,
      get start () { return active?.start ?? blocks.start },
      get end () { return active?.end ?? blocks.end },
      get throughput () { return active?.throughput ?? 0 },
      get openSessions () { return active?.sessions.openSessions ?? 0 },
      get lastMove () { return lastMove },
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

/**
 * Checks the limits before anything starts; each bad value is a ServerConfigError naming it.
 * (Peer ids are parsed by the light `@minga/p2p/peer-id`, imported only when there are some.)
 */
async function checkLimits (init: ServerInit): Promise<{ allow?: Set<string>, maxSessionsPerPeer: number, maxFrameBytes: number, drainTimeoutMs: number, cacheBytes: number }> {
  const parsePeerId = init.allow != null ? (await import('@minga/p2p/peer-id')).parsePeerId : undefined
  const allow = init.allow != null && parsePeerId != null
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
