// A minga node: joins the swarm, picks its blocks, loads them, measures itself, serves sessions and
// keeps its announcement fresh until it stops.
import type { PrivateKey } from '@libp2p/interface'
import { computeModelId, createSpanExecutor, loadModelConfig, type Quantization, type SpanExecutor } from '@minga/engine'
import {
  createMingaNode, DEFAULT_MAX_FRAME_BYTES, ErrorCode, findSpans, handleChannel, INFERENCE_PROTOCOL, MAX_PAYLOAD_BYTES,
  parsePeerId, ProtocolError, serveInfo, startAnnouncer, type Announcer, type ChannelServer, type MingaNode, type RelayLimits,
  type SpanInfo, type SpanMove
} from '@minga/p2p'
import { chooseBlocks } from './block-selection.ts'
import { ServerConfigError } from './errors.ts'
import { SessionHandler } from './handler.ts'
import { startRebalancer, type MovePlan, type Rebalancer } from './rebalance.ts'
import { measureThroughput } from './throughput.ts'

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
  modelDir: string
  /** Layers [start, end) to host, or 'auto' to fill the swarm's weakest blocks. */
  blocks: { start: number, end: number } | 'auto'
  /** With blocks 'auto': how many consecutive blocks (default: all). */
  numBlocks?: number
  listen?: string[]
  bootstrap?: string[]
  publicName?: string
  maxSessions?: number
  /** KV cache budget in tokens (sum over sessions of their lengths). */
  cacheTokens?: number
  quant?: Quantization
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
  log?: (message: string) => void
}

export interface MingaServer {
  readonly node: MingaNode
  readonly peerId: string
  readonly modelId: string
  /** The span served now (it changes when a `--blocks auto` server moves). */
  readonly start: number
  readonly end: number
  readonly throughput: number
  /** Sessions open now. */
  readonly openSessions: number
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
  const limits = checkLimits(init)
  const config = loadModelConfig(init.modelDir)
  const modelId = computeModelId(init.modelDir)
  if (init.rebalanceIntervalMs != null && !(init.rebalanceIntervalMs >= 100)) throw new ServerConfigError(`--rebalance-interval must be ≥ 0.1 s, got ${init.rebalanceIntervalMs / 1000} s`)
  const node = await createMingaNode({
    listen: init.listen,
    bootstrap: init.bootstrap,
    privateKey: init.privateKey,
    swarmKey: init.swarmKey,
    maxFrameBytes: limits.maxFrameBytes,
    relay: init.relay,
    reachability: init.reachability
  })
  const reach = node.reachability()
  if (reach.status === 'private') log(reach.relayed ? `not reachable from outside: serving through a relay (${node.addrs().filter(a => a.includes('/p2p-circuit')).join(', ')})` : 'not reachable from outside and no relay slot found: only peers that can reach this node directly can use it')
  let active: ActiveSpan | undefined
  let channels: ChannelServer | undefined
  let rebalancer: Rebalancer | undefined
  let moving: Promise<void> | undefined
  let lastMove: SpanMove | undefined
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
    await channels?.close()
    if (active != null) await release(active)
    await node.stop()
  }
  const stop = async (options: { drainTimeoutMs?: number, immediate?: boolean } = {}): Promise<void> => {
    if (options.immediate === true) stopNow()
    stopping ??= shutdown(Math.max(0, options.drainTimeoutMs ?? limits.drainTimeoutMs))
    await stopping
  }

  /** Loads `blocks`, measures them and makes their session handler (not announced yet). */
  const load = async (blocks: { start: number, end: number }, executor?: SpanExecutor): Promise<ActiveSpan> => {
    log(`model ${modelId}: hosting blocks [${blocks.start}, ${blocks.end}) of ${config.numLayers}`)
    executor ??= await createSpanExecutor({
      modelDir: init.modelDir,
      start: blocks.start,
      end: blocks.end,
      quant: init.quant,
      threads: init.threads,
      maxSessions: init.maxSessions,
      maxCacheTokens: init.cacheTokens
    })
    try {
      const throughput = init.throughput ?? await measureThroughput(executor)
      log(`throughput ${throughput.toFixed(1)} tokens/s through the span`)
      const sessions = new SessionHandler({
        executor,
        idleTimeoutMs: init.sessionIdleMs ?? 5 * 60_000,
        maxSessionsPerPeer: limits.maxSessionsPerPeer,
        allow: limits.allow,
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
        name: init.publicName
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
    const blocks = init.executor != null
      ? { start: init.executor.start, end: init.executor.end }
      : init.blocks === 'auto'
      ? chooseBlocks(config.numLayers, init.numBlocks ?? config.numLayers, (init.bootstrap?.length ?? 0) > 0 ? await findSpans(node, modelId, config.numLayers) : [])
      : init.blocks
    if (!(blocks.start >= 0 && blocks.start < blocks.end && blocks.end <= config.numLayers)) {
      throw new ServerConfigError(`--blocks ${blocks.start}:${blocks.end} is not within the model's ${config.numLayers} layers`)
    }
    active = await load(blocks, init.executor)
    // one inference handler for the node's life; it hands frames to whichever span is served now
    channels = await handleChannel(node, INFERENCE_PROTOCOL, async (frame, peer, ctx) => {
      const span = active
      if (span == null) throw new ProtocolError(ErrorCode.BUSY, 'busy: this server is moving its span')
      return await span.sessions.onFrame(frame, peer, ctx)
    }, {
      maxFrameBytes: limits.maxFrameBytes,
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
      peerId: node.peerId.toString(),
      modelId,
      get start () { return active?.start ?? blocks.start },
      get end () { return active?.end ?? blocks.end },
      get throughput () { return active?.throughput ?? 0 },
      get openSessions () { return active?.sessions.openSessions ?? 0 },
      get lastMove () { return lastMove },
      addrs: () => node.addrs(),
      stop
    }
  } catch (err) {
    await stop({ immediate: true }).catch(() => {})
    throw err
  }
}

/** Checks the limits before anything starts; each bad value is a ServerConfigError naming it. */
function checkLimits (init: ServerInit): { allow?: Set<string>, maxSessionsPerPeer: number, maxFrameBytes: number, drainTimeoutMs: number } {
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
  return { allow, maxSessionsPerPeer, maxFrameBytes, drainTimeoutMs }
}
