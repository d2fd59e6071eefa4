// A minga node: joins the swarm, picks its blocks, loads them, measures itself, serves sessions and
// keeps its announcement fresh until it stops.
import type { PrivateKey } from '@libp2p/interface'
import { computeModelId, createSpanExecutor, loadModelConfig, type Quantization, type SpanExecutor } from '@minga/engine'
import {
  createMingaNode, findSpans, handleChannel, INFERENCE_PROTOCOL, serveInfo, startAnnouncer,
  type Announcer, type ChannelServer, type MingaNode, type SpanInfo
} from '@minga/p2p'
import { chooseBlocks } from './block-selection.ts'
import { ServerConfigError } from './errors.ts'
import { SessionHandler } from './handler.ts'
import { measureThroughput } from './throughput.ts'

export const MINGA_VERSION = '0.1.0'

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
  readonly start: number
  readonly end: number
  readonly throughput: number
  addrs (): string[]
  /** Stops announcing (withdrawing the span), refuses new sessions, closes the rest, exits the swarm. */
  stop (): Promise<void>
}

export async function createServer (init: ServerInit): Promise<MingaServer> {
  const log = init.log ?? (() => {})
  const config = loadModelConfig(init.modelDir)
  const modelId = computeModelId(init.modelDir)
  const node = await createMingaNode({ listen: init.listen, bootstrap: init.bootstrap, privateKey: init.privateKey })
  let executor: SpanExecutor | undefined
  let channels: ChannelServer | undefined
  let handler: SessionHandler | undefined
  let announcer: Announcer | undefined
  const stopAll = async (): Promise<void> => {
    if (handler != null) handler.accepting = false
    await announcer?.stop()
    await channels?.close()
    await handler?.stop()
    await executor?.close()
    await node.stop()
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
    log(`model ${modelId}: hosting blocks [${blocks.start}, ${blocks.end}) of ${config.numLayers}`)
    executor = init.executor ?? await createSpanExecutor({
      modelDir: init.modelDir,
      start: blocks.start,
      end: blocks.end,
      quant: init.quant,
      threads: init.threads,
      maxSessions: init.maxSessions,
      maxCacheTokens: init.cacheTokens
    })
    const throughput = init.throughput ?? await measureThroughput(executor)
    log(`throughput ${throughput.toFixed(1)} tokens/s through the span`)

    const sessions = new SessionHandler({ executor, idleTimeoutMs: init.sessionIdleMs ?? 5 * 60_000, log })
    handler = sessions
    channels = await handleChannel(node, INFERENCE_PROTOCOL, sessions.onFrame, {
      onError: (err: any) => { log(`request failed: ${err?.message ?? err}`) }
    })
    await serveInfo(node, () => ({
      modelId, modelType: config.modelType, numLayers: config.numLayers, start: blocks.start, end: blocks.end, version: MINGA_VERSION,
      ...(init.publicName != null ? { name: init.publicName } : {})
    }))
    const span = executor
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

    return {
      node,
      peerId: node.peerId.toString(),
      modelId,
      start: blocks.start,
      end: blocks.end,
      throughput,
      addrs: () => node.addrs(),
      stop: stopAll
    }
  } catch (err) {
    await stopAll().catch(() => {})
    throw err
  }
}
