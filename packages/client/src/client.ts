// The client SDK: finds spans in the DHT knowing only a bootstrap address, routes through the
// fastest chain of servers, and generates with the tokenizer, embeddings and LM head kept here.
// The text stays here, but the first server sees the prompt's embeddings (and so its token ids).
import type { PeerId, PrivateKey } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { resolveModel, type FetchModelInit, type FetchResult, type ResolvedModel } from '@minga/weights'
import {
  createClientHead, generateTokens, loadChatTemplate, loadModelConfig, loadTokenizer, planGeneration,
  type ChatMessage, type ChatTemplate, type ClientHead, type GenerateOptions, type GeneratedToken, type GenerationResult,
  type ModelConfig, type Quantization, type TextTokenizer
} from '@minga/engine'
import { CHAIN_PROTOCOL, createMingaNode, findSpans, handleChannel, openChannel, type Channel, type MingaNode, type ServerEntry } from '@minga/p2p'
import { ChainInbox } from './chain.ts'
import { SwarmError } from './errors.ts'
import { RemoteSession, type HopConnector, type RemoteHop, type SessionEvents } from './remote-session.ts'
import { hopCostMs, planRange, type RouteHop, type RouteServer } from './routing.ts'
import { statusOf, type SwarmStatus } from './status.ts'

/** How long a list of servers read from the DHT is reused for new sessions. */
const SERVER_LIST_MAX_AGE_MS = 5000
/** How long a direct dial may take before a server's relayed addresses are tried. */
const DIRECT_DIAL_MS = 3000
const DIAL_MS = 10_000

export interface ClientInit {
  /** Give up re-routing a failed hop after this long (default 30 s). */
  failoverTimeoutMs?: number
  /** Inputs kept per session for replay after a failure (default 512 MiB). */
  maxHistoryBytes?: number
  /** Probability of checking a hop's step on a second server (default 0). */
  verifyProbability?: number
  /** Relative difference that still counts as agreement when verifying (default 1e-3). */
  verifyTolerance?: number
  /** The model directory: the client runs the tokenizer, embeddings and LM head itself. */
  modelDir?: string
  /**
   * Or only the model id: the client fetches what it runs (config, tokenizer files, embeddings,
   * final norm, LM head), verified chunk by chunk, into its local store, and reuses it next time.
   */
  modelId?: string
  /** Where fetched models are stored (default: MINGA_CACHE or ~/.cache/minga). */
  cacheDir?: string
  /** With modelId: options for the fetch (providers, parallelism, progress, a signal, a log). */
  fetch?: Partial<Pick<FetchModelInit, 'providers' | 'parallel' | 'progress' | 'signal' | 'onChunk' | 'requestTimeoutMs' | 'log'>>
  /** Multiaddrs (with /p2p/) of any swarm nodes. */
  bootstrap: string[]
  /**
   * Tensor encoding on the wire: f32 (default: the swarm's output equals the local engine's), f16
   * (half the bytes; it can flip a near tie under int8 layers) or q8 (8-bit blocks of 32 values with
   * an f16 scale, 34 bytes per 32 values; top-1 agreement 99.5% on stories260k, see
   * packages/client/bench/README.md).
   */
  wireDtype?: 'f32' | 'f16' | 'q8'
  /**
   * Chains (default off): send a step to the route's first server only, and let each server pass it
   * on to the next; the client still gets every hop's output. Off, the client relays every hop: on
   * loopback that measured faster, and servers behind NATs cannot yet dial each other directly.
   */
  chains?: boolean
  /** Per-request timeout. Default 60 s. */
  requestTimeoutMs?: number
  privateKey?: PrivateKey
  /** The swarm's pre-shared key (a key file's bytes, see loadSwarmKey) if the swarm is private. */
  swarmKey?: Uint8Array
  /** Quantization of the LM head the client runs (default int8; `none` is f32). */
  headQuant?: Quantization
  threads?: number
}

export interface SwarmGenerationResult extends GenerationResult {
  /** The route at the end of the generation. */
  route: Array<{ peerId: string, blocks: [number, number] }>
  /** Failovers, verified steps, mismatches found and peers banned during the generation. */
  events: SessionEvents
}

export interface SwarmGenerateOptions extends GenerateOptions {
  /** Called with the route when the session opens and whenever it changes. */
  onRoute?: (route: Array<{ peerId: string, blocks: [number, number] }>) => void
  /**
   * Aborting ends the generation at once, during prefill too: the step in flight fails with the
   * signal's reason and every server of the route is told to close the session.
   */
  signal?: AbortSignal
}

export interface MingaClient {
  readonly modelId: string
  /** The directory the tokenizer and head were loaded from (the local store's, when fetched). */
  readonly modelDir: string
  /** What the fetch did, when the client started from a model id. */
  readonly fetched?: FetchResult
  readonly config: ModelConfig
  readonly node: MingaNode
  /** The model's tokenizer, run here. */
  readonly tokenizer: TextTokenizer
  /** Streams new tokens; the generator's return value is the whole result with its route. */
  generate (prompt: string | number[], options?: SwarmGenerateOptions): AsyncGenerator<GeneratedToken, SwarmGenerationResult>
  /**
   * A conversation through the model's chat template (NoChatTemplateError if it has none), then
   * `generate` on the rendered prompt (tokenized without a second BOS).
   */
  chat (messages: ChatMessage[], options?: SwarmGenerateOptions): AsyncGenerator<GeneratedToken, SwarmGenerationResult>
  /** The token ids `chat` would send for these messages. */
  chatPromptIds (messages: ChatMessage[]): number[]
  /** Peers this client stopped using because they returned wrong results. */
  readonly banned: ReadonlySet<string>
  status (): Promise<SwarmStatus>
  close (): Promise<void>
}

export async function createClient (init: ClientInit): Promise<MingaClient> {
  if (init.bootstrap.length === 0) throw new SwarmError('a client needs at least one bootstrap address')
  if ((init.modelDir == null) === (init.modelId == null)) throw new SwarmError('a client needs either a model directory or a model id')
  if (init.modelDir != null) loadModelConfig(init.modelDir) // a bad directory fails before any network work
  const node = await createMingaNode({ listen: [], bootstrap: init.bootstrap, privateKey: init.privateKey, swarmKey: init.swarmKey })
  let model: ResolvedModel | undefined
  let chains: ChainInbox | undefined
  try {
    if (init.chains === true) {
      chains = new ChainInbox(init.requestTimeoutMs ?? 60_000)
      await handleChannel(node, CHAIN_PROTOCOL, chains.onFrame)
    }
    model = await resolveModel({ modelDir: init.modelDir, modelId: init.modelId, node, cacheDir: init.cacheDir, ...init.fetch, select: { head: true } })
    const config = loadModelConfig(model.dir)
    const tokenizer = loadTokenizer(model.dir, config)
    const head = await createClientHead({ modelDir: model.dir, modelId: model.modelId, cacheDir: init.cacheDir, headQuant: init.headQuant, threads: init.threads })
    return new SwarmClient(init, node, head, tokenizer, config, model, chains)
  } catch (err) {
    model?.close()
    await node.stop()
    throw err
  }
}

class SwarmClient implements MingaClient, HopConnector {
  private readonly channels = new Map<string, Promise<Channel>>()
  private readonly rtt = new Map<string, number>()
  private readonly avoided = new Map<string, { failures: number, until: number }>()
  private readonly bannedPeers = new Set<string>()
  /** Servers whose direct addresses failed while relayed ones exist: go through the relay at once. */
  private readonly directFailed = new Set<string>()
  private known?: { at: number, servers: ServerEntry[] }
  private chatTemplate?: ChatTemplate

  constructor (
    private readonly init: ClientInit,
    readonly node: MingaNode,
    private readonly head: ClientHead,
    readonly tokenizer: TextTokenizer,
    readonly config: ModelConfig,
    private readonly model: ResolvedModel,
    private readonly chains: ChainInbox | undefined
  ) {}

  get modelId (): string { return this.model.modelId }
  get modelDir (): string { return this.model.dir }
  get fetched (): FetchResult | undefined { return this.model.fetched }

  chatPromptIds (messages: ChatMessage[]): number[] {
    this.chatTemplate ??= loadChatTemplate(this.modelDir)
    return this.tokenizer.encode(this.chatTemplate.render(messages), { addSpecialTokens: false })
  }

  async * chat (messages: ChatMessage[], options: SwarmGenerateOptions = {}): AsyncGenerator<GeneratedToken, SwarmGenerationResult> {
    return yield * this.generate(this.chatPromptIds(messages), options)
  }

  async * generate (prompt: string | number[], options: SwarmGenerateOptions = {}): AsyncGenerator<GeneratedToken, SwarmGenerationResult> {
    const promptIds = typeof prompt === 'string' ? this.tokenizer.encode(prompt) : prompt
    const plan = planGeneration(promptIds, options, this.config.maxPositionEmbeddings)
    const { onRoute, signal } = options
    signal?.throwIfAborted()
    const session = await RemoteSession.open(this, this.config.numLayers, {
      maxLength: plan.sessionLength,
      hiddenSize: this.config.hiddenSize,
      wireDtype: this.init.wireDtype ?? 'f32',
      chains: this.chains,
      failoverTimeoutMs: this.init.failoverTimeoutMs ?? 30_000,
      maxHistoryBytes: this.init.maxHistoryBytes ?? 512 * 2 ** 20,
      verifyProbability: this.init.verifyProbability ?? 0,
      verifyTolerance: this.init.verifyTolerance ?? 1e-3,
      random: Math.random,
      signal,
      onRoute: onRoute != null ? route => { onRoute(route.map(describeHop)) } : undefined
    })
    const onAbort = (): void => { session.abort(abortReason(signal!)) }
    if (signal != null) {
      session.abortable()
      signal.addEventListener('abort', onAbort, { once: true })
    }
    try {
      signal?.throwIfAborted() // aborted while the route was being opened
      const result = yield * generateTokens(this.head, session, this.tokenizer, this.config.eosTokenIds, plan, options)
      return { ...result, route: session.route.map(describeHop), events: session.events }
    } finally {
      signal?.removeEventListener('abort', onAbort)
      await session.close()
    }
  }

  // HopConnector: how sessions find servers.

  async route (start: number, end: number, urgent: boolean): Promise<RemoteHop[]> {
    let servers = await this.usableServers(urgent ? Infinity : SERVER_LIST_MAX_AGE_MS)
    let route: RouteHop[]
    try {
      route = planRange(start, end, this.config.numLayers, servers.map(this.routeServer), peer => this.rtt.get(peer))
    } catch {
      servers = await this.usableServers(0) // the list we had cannot do it: ask the DHT again
      route = planRange(start, end, this.config.numLayers, servers.map(this.routeServer), peer => this.rtt.get(peer))
    }
    await this.measureRoundTrips(servers)
    route = planRange(start, end, this.config.numLayers, servers.map(this.routeServer), peer => this.rtt.get(peer))
    const byPeer = new Map(servers.map(s => [s.peerId, s]))
    return await Promise.all(route.map(async hop => ({ hop, channel: await this.channelTo(byPeer.get(hop.peerId)!), addr: dialAddr(byPeer.get(hop.peerId)!) })))
  }

  async alternative (start: number, end: number, exclude: Set<string>, like: string): Promise<RemoteHop | undefined> {
    const usable = await this.usableServers(Infinity)
    // (servers of other weights, e.g. int4 beside int8, compute other outputs: no use comparing)
    const weights = this.known?.servers.find(s => s.peerId === like)?.weights
    const candidates = usable.filter(s => s.start <= start && end <= s.end && !exclude.has(s.peerId) && s.weights === weights)
    await this.measureRoundTrips(candidates)
    const cost = (s: ServerEntry): number => hopCostMs(this.routeServer(s), end - start, this.rtt.get(s.peerId) ?? 1000)
    const best = candidates.sort((a, b) => cost(a) - cost(b))[0]
    if (best == null) return undefined
    return { hop: { peerId: best.peerId, start, end }, channel: await this.channelTo(best), addr: dialAddr(best) }
  }

  penalize (peerId: string, reason?: unknown): void {
    const failures = (this.avoided.get(peerId)?.failures ?? 0) + 1
    this.avoided.set(peerId, { failures, until: Date.now() + Math.min(60_000, 1000 * 2 ** failures) })
    const channel = this.channels.get(peerId)
    this.channels.delete(peerId)
    void channel?.then(c => { c.abort('the peer failed a request') }, () => {})
  }

  ban (peerId: string): void {
    this.bannedPeers.add(peerId)
    this.penalize(peerId)
  }

  get banned (): ReadonlySet<string> {
    return this.bannedPeers
  }

  /**
   * Live servers of the model, without banned peers or ones that failed recently, from a list read
   * from the DHT at most `maxAgeMs` ago. A failover takes any age: it should not wait for a lookup
   * that may touch the dead peer, and a stale entry only costs a quick failed dial.
   */
  private async usableServers (maxAgeMs: number): Promise<ServerEntry[]> {
    const now = Date.now()
    if (this.known == null || now - this.known.at > maxAgeMs) this.known = { at: now, servers: await this.findServers() }
    // When none is left, the route planner names the layers that have no server.
    return this.known.servers.filter(s => s.expires > now).filter(s => !this.bannedPeers.has(s.peerId) && !((this.avoided.get(s.peerId)?.until ?? 0) > now))
  }

  async status (): Promise<SwarmStatus> {
    const servers = await this.findServers()
    await this.measureRoundTrips(servers)
    return statusOf(this.modelId, this.config.numLayers, servers, this.rtt)
  }

  async close (): Promise<void> {
    await Promise.all([...this.channels.values()].map(async c => { await (await c.catch(() => undefined))?.close({ timeoutMs: 1000 }) }))
    await this.head.close()
    this.model.close()
    await this.node.stop()
  }

  private async findServers (): Promise<ServerEntry[]> {
    const servers = await findSpans(this.node, this.modelId, this.config.numLayers)
    if (servers.length === 0) throw new SwarmError(`no server in the swarm announces model ${this.modelId} (is the bootstrap node on the same swarm, and do the servers run the same checkpoint?)`)
    return servers
  }

  /**
   * A server for the route planner: relayed when every connection to it goes through a relay (or,
   * before any, when it announces only relayed addresses). DCUtR may later upgrade it to direct.
   */
  private readonly routeServer = (s: ServerEntry): RouteServer => {
    const connections = this.node.libp2p.getConnections(peerIdFromString(s.peerId))
    const relayed = connections.length > 0
      ? connections.every(c => c.limits != null || c.remoteAddr.toString().includes('/p2p-circuit'))
      : s.addrs.length > 0 && s.addrs.every(a => a.includes('/p2p-circuit'))
    return { peerId: s.peerId, start: s.start, end: s.end, throughput: s.throughput, relayed }
  }

  /**
   * Connects to a server (unless a connection is up) and returns its peer id. Direct addresses
   * first; a server behind NAT also announces relayed ones (/p2p-circuit), tried when the direct
   * ones fail within DIRECT_DIAL_MS (its private addresses are usually unreachable, and a dial to
   * them would otherwise use up the whole dial timeout). A direct failure is remembered.
   */
  private async connect (server: ServerEntry): Promise<PeerId> {
    const peer = peerIdFromString(server.peerId)
    if (this.node.libp2p.getConnections(peer).length > 0) return peer
    const addrs = server.addrs.flatMap(a => { try { return [multiaddr(a)] } catch { return [] } })
    const direct = addrs.filter(a => !a.toString().includes('/p2p-circuit'))
    const relayed = addrs.filter(a => a.toString().includes('/p2p-circuit'))
    if (direct.length > 0 && !(relayed.length > 0 && this.directFailed.has(server.peerId))) {
      try {
        await this.node.libp2p.dial(direct, { signal: AbortSignal.timeout(relayed.length > 0 ? DIRECT_DIAL_MS : DIAL_MS) })
        return peer
      } catch (err) {
        if (relayed.length === 0) throw err
        this.directFailed.add(server.peerId)
      }
    }
    if (relayed.length === 0) throw new SwarmError('it announces no address')
    await this.node.libp2p.dial(relayed, { signal: AbortSignal.timeout(DIAL_MS) })
    return peer
  }

  /** Round trips by libp2p ping, measured once per server and reused. */
  private async measureRoundTrips (servers: ServerEntry[]): Promise<void> {
    await Promise.all(servers.filter(s => !this.rtt.has(s.peerId)).map(async s => {
      try {
        this.rtt.set(s.peerId, await this.node.libp2p.services.ping.ping(await this.connect(s), { signal: AbortSignal.timeout(5000) }))
      } catch {}
    }))
  }

  private async channelTo (server: ServerEntry): Promise<Channel> {
    let channel = this.channels.get(server.peerId)
    const usable = channel != null && !(await channel.then(c => c.closed, () => true))
    if (!usable) {
      channel = this.dial(server)
      this.channels.set(server.peerId, channel)
      // An unreachable server is avoided like one that failed a request.
      channel.catch(err => { this.penalize(server.peerId, err) })
    }
    return await channel!
  }

  private async dial (server: ServerEntry): Promise<Channel> {
    if (server.addrs.length === 0) throw new SwarmError(`cannot reach server ${server.peerId}: it announces no address`)
    try {
      return await openChannel(this.node, await this.connect(server), undefined, { timeoutMs: this.init.requestTimeoutMs })
    } catch (err) {
      throw new SwarmError(`cannot reach server ${server.peerId}: ${(err as Error)?.message ?? err}`)
    }
  }
}

function abortReason (signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new DOMException(String(signal.reason ?? 'aborted'), 'AbortError')
}

/** The address a chain's previous hop dials this server at: its first announced one, with /p2p/. */
function dialAddr (server: ServerEntry): string {
  const addr = server.addrs[0]
  if (addr == null) return server.peerId
  const full = addr.includes('/p2p/') ? addr : `${addr}/p2p/${server.peerId}`
  return new TextEncoder().encode(full).length <= 255 ? full : server.peerId
}

function describeHop (hop: RouteHop): { peerId: string, blocks: [number, number] } {
  return { peerId: hop.peerId, blocks: [hop.start, hop.end] }
}
