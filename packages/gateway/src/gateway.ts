// createGateway: one swarm client (tokenizer, embeddings, head) behind an HTTP server; a swarm
// session per request. The swarm's coverage is looked up at most every two seconds and shared by
// admission, /health and /v1/swarm.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { basename, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createClient, type ClientInit, type MingaClient, type SwarmStatus } from '@minga/client'
import { ApiError, GatewayConfigError } from './errors.ts'
import type { RouteView } from './generation.ts'
import { createGatewayMetrics, type GatewayMetrics } from './metrics.ts'
import { createRouter } from './routes.ts'

export interface GatewayInit {
  /** The model directory (the client runs its tokenizer, embeddings and head here)… */
  modelDir?: string
  /** …or only its id: the client fetches what it runs from the swarm, verified (@minga/weights). */
  modelId?: string
  /** Multiaddrs (with /p2p/) of any swarm nodes. */
  bootstrap: string[]
  /** The id in /v1/models and the `model` requests must name. Default: the directory's name, or the model id. */
  modelName?: string
  /** Default 127.0.0.1. */
  host?: string
  /** Default 8080; 0 picks a free port. */
  port?: number
  /** When set, the OpenAI endpoints need `Authorization: Bearer KEY` (else 401). */
  apiKey?: string
  /** The swarm's pre-shared key (a key file's bytes) if it is private. */
  swarmKey?: Uint8Array
  /** Generation requests at once; more get 429 with retry-after. Default 16. */
  maxConcurrent?: number
  /** New tokens for a chat request without max_tokens (capped by the context). Default 1024. */
  defaultMaxTokens?: number
  /** Largest request body; larger ones get 413. Default 1 MiB. */
  maxBodyBytes?: number
  /** Static files served at / (default: this package's public/). */
  publicDir?: string
  /** Anything else for the swarm client (threads, identity, timeouts). */
  client?: Omit<ClientInit, 'modelDir' | 'modelId' | 'bootstrap' | 'swarmKey'>
  log?: (message: string) => void
}

export interface Gateway {
  /** http://host:port, without a trailing slash. */
  readonly url: string
  /** The model id of /v1/models. */
  readonly modelName: string
  readonly client: MingaClient
  readonly metrics: GatewayMetrics
  /** Stops listening, ends the requests in flight (their swarm sessions close) and closes the client. */
  close (): Promise<void>
}

const STATUS_MAX_AGE_MS = 2000
const PUBLIC_DIR = fileURLToPath(new URL('../public', import.meta.url))

export async function createGateway (init: GatewayInit): Promise<Gateway> {
  const maxConcurrent = init.maxConcurrent ?? 16
  if (!(Number.isInteger(maxConcurrent) && maxConcurrent >= 1)) throw new GatewayConfigError(`--max-concurrent must be an integer ≥ 1, got ${maxConcurrent}`)
  const defaultMaxTokens = init.defaultMaxTokens ?? 1024
  if (!(Number.isInteger(defaultMaxTokens) && defaultMaxTokens >= 1)) throw new GatewayConfigError(`the default max tokens must be an integer ≥ 1, got ${defaultMaxTokens}`)
  const maxBodyBytes = init.maxBodyBytes ?? 2 ** 20
  if (!(Number.isInteger(maxBodyBytes) && maxBodyBytes >= 1024)) throw new GatewayConfigError(`the body size limit must be an integer ≥ 1024 bytes, got ${maxBodyBytes}`)
  const log = init.log ?? (() => {})
  const client = await createClient({ ...init.client, modelDir: init.modelDir, modelId: init.modelId, bootstrap: init.bootstrap, swarmKey: init.swarmKey })
  const modelName = init.modelName ?? (init.modelDir != null ? basename(resolve(init.modelDir)) : client.modelId)
  const metrics = createGatewayMetrics()
  const swarm = new SwarmWatch(client)
  let lastRoute: RouteView | null = null
  let active = 0

  const router = createRouter({
    client,
    modelName,
    metrics,
    apiKey: init.apiKey,
    maxBodyBytes,
    defaultMaxTokens,
    publicDir: resolve(init.publicDir ?? PUBLIC_DIR),
    createdAt: Math.floor(Date.now() / 1000),
    log,
    onRoute: route => { lastRoute = route },
    async admit () {
      if (active >= maxConcurrent) throw new ApiError(429, `the gateway is running its maximum of ${maxConcurrent} requests (--max-concurrent); retry shortly`, null, 'rate_limit_exceeded', 1)
      active++
      try {
        const missing = missingBlocks(await swarm.status())
        if (missing.length > 0) throw new ApiError(503, `the swarm cannot serve this request now: no server holds block${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`, null, 'swarm_unavailable', 5)
      } catch (err) {
        active--
        throw err
      }
      let released = false
      return () => { if (!released) { released = true; active-- } }
    },
    missingBlocks: async () => missingBlocks(await swarm.status()),
    swarmView: async () => ({ ...(await swarm.status()), model: modelName, lastRoute })
  })

  const server = createServer(router)
  try {
    await new Promise<void>((resolveListen, reject) => {
      server.once('error', reject)
      server.listen(init.port ?? 8080, init.host ?? '127.0.0.1', () => { server.off('error', reject); resolveListen() })
    })
  } catch (err) {
    await client.close()
    throw err
  }
  const address = server.address() as AddressInfo
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
  let closing: Promise<void> | undefined
  return {
    url: `http://${host}:${address.port}`,
    modelName,
    client,
    metrics,
    async close () {
      closing ??= (async () => {
        await closeServer(server)
        await client.close()
      })()
      await closing
    }
  }
}

/** Coverage from the DHT, cached briefly, with concurrent lookups shared; no server at all is empty coverage. */
class SwarmWatch {
  private cached?: { at: number, status: SwarmStatus }
  private pending?: Promise<SwarmStatus>

  constructor (private readonly client: MingaClient) {}

  async status (): Promise<SwarmStatus> {
    if (this.cached != null && Date.now() - this.cached.at < STATUS_MAX_AGE_MS) return this.cached.status
    this.pending ??= this.lookup().finally(() => { this.pending = undefined })
    return await this.pending
  }

  private async lookup (): Promise<SwarmStatus> {
    const { modelId, config } = this.client
    let status: SwarmStatus
    try {
      status = await this.client.status()
    } catch (err) {
      if ((err as Error)?.name !== 'SwarmError') throw err
      status = { modelId, numBlocks: config.numLayers, servers: [], coverage: Array.from({ length: config.numLayers }, (_, block) => ({ block, servers: 0, throughput: 0 })) }
    }
    this.cached = { at: Date.now(), status }
    return status
  }
}

function missingBlocks (status: SwarmStatus): number[] {
  return status.coverage.filter(c => c.servers === 0).map(c => c.block)
}

/** Stops accepting, and closes every connection: requests in flight see their client go away. */
async function closeServer (server: Server): Promise<void> {
  const closed = new Promise<void>(resolveClose => server.close(() => { resolveClose() }))
  server.closeAllConnections()
  await closed
}
