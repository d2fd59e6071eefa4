// The client SDK: finds spans in the DHT knowing only a bootstrap address, routes through the
// fastest chain of servers, and generates with the tokenizer, embeddings and LM head kept here
// (the prompt text never leaves this machine).
import type { PrivateKey } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import {
  computeModelId, createClientHead, generateTokens, loadModelConfig, loadTokenizer, planGeneration,
  type ClientHead, type GenerateOptions, type GeneratedToken, type GenerationResult, type ModelConfig, type TextTokenizer
} from '@minga/engine'
import { createMingaNode, findSpans, openChannel, type Channel, type MingaNode, type ServerEntry } from '@minga/p2p'
import { SwarmError } from './errors.ts'
import { RemoteSession } from './remote-session.ts'
import { planRoute, type RouteHop } from './routing.ts'
import { statusOf, type SwarmStatus } from './status.ts'

export interface ClientInit {
  /** The model directory: the client runs the tokenizer, embeddings and LM head itself. */
  modelDir: string
  /** Multiaddrs (with /p2p/) of any swarm nodes. */
  bootstrap: string[]
  /** Tensor encoding on the wire: f32 (exact, default) or f16 (half the bytes). */
  wireDtype?: 'f32' | 'f16'
  /** Per-request timeout. Default 60 s. */
  requestTimeoutMs?: number
  privateKey?: PrivateKey
  threads?: number
}

export interface SwarmGenerationResult extends GenerationResult {
  route: Array<{ peerId: string, blocks: [number, number] }>
}

export interface MingaClient {
  readonly modelId: string
  readonly config: ModelConfig
  readonly node: MingaNode
  /** Streams new tokens; the generator's return value is the whole result with its route. */
  generate (prompt: string | number[], options?: GenerateOptions): AsyncGenerator<GeneratedToken, SwarmGenerationResult>
  status (): Promise<SwarmStatus>
  close (): Promise<void>
}

export async function createClient (init: ClientInit): Promise<MingaClient> {
  if (init.bootstrap.length === 0) throw new SwarmError('a client needs at least one bootstrap address')
  const config = loadModelConfig(init.modelDir)
  const modelId = computeModelId(init.modelDir)
  const tokenizer = loadTokenizer(init.modelDir, config)
  const node = await createMingaNode({ listen: [], bootstrap: init.bootstrap, privateKey: init.privateKey })
  let head: ClientHead
  try {
    head = await createClientHead({ modelDir: init.modelDir, threads: init.threads })
  } catch (err) {
    await node.stop()
    throw err
  }
  return new SwarmClient(init, node, head, tokenizer, config, modelId)
}

class SwarmClient implements MingaClient {
  private readonly channels = new Map<string, Promise<Channel>>()
  private readonly rtt = new Map<string, number>()

  constructor (
    private readonly init: ClientInit,
    readonly node: MingaNode,
    private readonly head: ClientHead,
    private readonly tokenizer: TextTokenizer,
    readonly config: ModelConfig,
    readonly modelId: string
  ) {}

  async * generate (prompt: string | number[], options: GenerateOptions = {}): AsyncGenerator<GeneratedToken, SwarmGenerationResult> {
    const promptIds = typeof prompt === 'string' ? this.tokenizer.encode(prompt) : prompt
    const plan = planGeneration(promptIds, options, this.config.maxPositionEmbeddings)
    const servers = await this.findServers()
    await this.measureRoundTrips(servers)
    const route = planRoute(this.config.numLayers, servers, peer => this.rtt.get(peer))
    const byPeer = new Map(servers.map(s => [s.peerId, s]))
    const hops = await Promise.all(route.map(async hop => ({ hop, channel: await this.channelTo(byPeer.get(hop.peerId)!) })))
    const session = await RemoteSession.open(hops, plan.sessionLength, this.config.hiddenSize, this.init.wireDtype ?? 'f32')
    try {
      const result = yield * generateTokens(this.head, session, this.tokenizer, this.config.eosTokenIds, plan, options)
      return { ...result, route: route.map(describeHop) }
    } finally {
      await session.close()
    }
  }

  async status (): Promise<SwarmStatus> {
    const servers = await this.findServers()
    await this.measureRoundTrips(servers)
    return statusOf(this.modelId, this.config.numLayers, servers, this.rtt)
  }

  async close (): Promise<void> {
    await Promise.all([...this.channels.values()].map(async c => { await (await c.catch(() => undefined))?.close({ timeoutMs: 1000 }) }))
    await this.head.close()
    await this.node.stop()
  }

  private async findServers (): Promise<ServerEntry[]> {
    const servers = await findSpans(this.node, this.modelId, this.config.numLayers)
    if (servers.length === 0) throw new SwarmError(`no server in the swarm announces model ${this.modelId} (is the bootstrap node on the same swarm, and do the servers run the same checkpoint?)`)
    return servers
  }

  /** Round trips by libp2p ping, measured once per server and reused. */
  private async measureRoundTrips (servers: ServerEntry[]): Promise<void> {
    await Promise.all(servers.filter(s => !this.rtt.has(s.peerId)).map(async s => {
      for (const addr of s.addrs) {
        try {
          this.rtt.set(s.peerId, await this.node.libp2p.services.ping.ping(multiaddr(addr), { signal: AbortSignal.timeout(5000) }))
          return
        } catch {}
      }
    }))
  }

  private async channelTo (server: ServerEntry): Promise<Channel> {
    let channel = this.channels.get(server.peerId)
    const usable = channel != null && !(await channel.then(c => c.closed, () => true))
    if (!usable) {
      channel = this.dial(server)
      this.channels.set(server.peerId, channel)
    }
    return await channel!
  }

  private async dial (server: ServerEntry): Promise<Channel> {
    let lastError: unknown
    for (const addr of server.addrs) {
      try {
        return await openChannel(this.node, addr, undefined, { timeoutMs: this.init.requestTimeoutMs })
      } catch (err) {
        lastError = err
      }
    }
    throw new SwarmError(`cannot reach server ${server.peerId}: ${(lastError as Error)?.message ?? 'no address'}`)
  }
}

function describeHop (hop: RouteHop): { peerId: string, blocks: [number, number] } {
  return { peerId: hop.peerId, blocks: [hop.start, hop.end] }
}
