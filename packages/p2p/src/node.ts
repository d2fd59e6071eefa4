// A minga libp2p node: TCP + noise + yamux, identify, ping and a private Kademlia DHT (own protocol
// id, server mode, loopback/LAN addresses kept) whose /minga/... records are checked by records.ts.
// Across NAT: every node can dial through circuit relays (circuit-relay-v2 transport), runs AutoNAT
// and DCUtR (hole punching upgrades a relayed connection to a direct one when it can); a node made
// with `relay` offers relaying; a listening node that turns out unreachable reserves a relay slot.

import './polyfill.ts'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import './yamux-window.ts'
import { autoNAT } from '@libp2p/autonat'
import { circuitRelayServer, circuitRelayTransport, type CircuitRelayService } from '@libp2p/circuit-relay-v2'
import { dcutr } from '@libp2p/dcutr'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { identify, type Identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper, type KadDHT } from '@libp2p/kad-dht'
import { ping, type Ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import type { ConnectionProtector, Libp2p, PeerId, PrivateKey } from '@libp2p/interface'
import { BootstrapError, IdentityError, InvalidArgumentError } from './errors.ts'
import { DEFAULT_MAX_FRAME_BYTES } from './frames.ts'
import { recordSelectors, recordValidators } from './records.ts'
import { MergingRecordStore } from './record-store.ts'
import { mingaReachability, type Reachability, type ReachabilityService } from './reachability.ts'
import { parseSwarmKey } from './swarm-key.ts'
import { DEFAULT_RELAY_LIMITS, type RelayLimits } from './relay-limits.ts'

/** Protocol id of minga's DHT: a private DHT, never mixed with the IPFS one. */
export const DHT_PROTOCOL = '/minga/kad/1.0.0'
/** This machine's addresses, as connection-manager allow-list entries. */
const LOOPBACK = ['/ip4/127.0.0.0/ipcidr/8', '/ip6/::1']
export const DEFAULT_LISTEN = ['/ip4/127.0.0.1/tcp/0']
export const DEFAULT_BOOTSTRAP_TIMEOUT_MS = 15_000
const RELAY_RESERVATION_TIMEOUT_MS = 15_000

// a type alias (not an interface) so it satisfies libp2p's ServiceMap index signature
export type MingaServices = {
  identify: Identify
  ping: Ping
  dht: KadDHT
  autoNAT: unknown
  dcutr: unknown
  reachability: ReachabilityService
  /** Only on nodes made with `relay`. */
  relay?: CircuitRelayService
}

export type MingaLibp2p = Libp2p<MingaServices>

export interface MingaNodeInit {
  /** Multiaddrs to listen on. Default ['/ip4/127.0.0.1/tcp/0']. */
  listen?: string[]
  /** Addresses to announce instead of the listening ones (e.g. a public IP behind port forwarding). */
  announce?: string[]
  /** Multiaddrs ending in /p2p/<peer id>; dialled at start, then we wait for the DHT to know a peer. */
  bootstrap?: string[]
  /** How long to wait for a bootstrap peer to be reachable and in the DHT routing table. Default 15 s. */
  bootstrapTimeoutMs?: number
  /** The node's identity (see loadOrCreateIdentity); a fresh Ed25519 key if absent. */
  privateKey?: PrivateKey
  /** Largest inference frame the node will handle; sizes the muxer buffers. Default 64 MiB. */
  maxFrameBytes?: number
  /**
   * A pre-shared swarm key (the libp2p pnet key file's bytes, see loadSwarmKey): connections are
   * encrypted with it before anything else, so only peers holding the same key can connect at all.
   */
  swarmKey?: Uint8Array
  /** DHT protocol id. Default '/minga/kad/1.0.0'. */
  dhtProtocol?: string
  /** Offer circuit relaying to nodes behind NAT (`--relay`), within these limits. */
  relay?: boolean | RelayLimits
  /**
   * 'auto' (default for a listening node with bootstrap peers): once bootstrapped, ask peers to dial
   * this node back; if none can, take a relay slot. 'private': take one anyway. 'public': never.
   */
  reachability?: 'auto' | 'public' | 'private'
}

export interface MingaNode {
  readonly libp2p: MingaLibp2p
  readonly peerId: PeerId
  readonly privateKey: PrivateKey
  /** Listening addresses with /p2p/<peer id>, as strings to hand to others as bootstrap addresses. */
  addrs(): string[]
  /** Dials more bootstrap peers and waits until the DHT routing table has a peer. */
  bootstrap(addrs: string[], timeoutMs?: number): Promise<void>
  /** Peers in the DHT routing table. */
  dhtPeers(): number
  /** What the reachability check found ('unknown' if it did not run), and whether a relay carries us. */
  reachability(): { status: Reachability, relayed: boolean }
  stop(): Promise<void>
}

function parseBootstrap (addr: string): Multiaddr {
  let ma: Multiaddr
  try {
    ma = multiaddr(addr)
  } catch (err) {
    throw new InvalidArgumentError(`bootstrap address "${addr}" is not a multiaddr: ${(err as Error).message}`)
  }
  if (ma.getComponents().find(c => c.name === 'p2p') === undefined) {
    throw new InvalidArgumentError(`bootstrap address "${addr}" has no /p2p/<peer id> part`)
  }
  return ma
}

function routingTableSize (dht: KadDHT): number {
  const rt = (dht as unknown as { routingTable?: { size?: number } }).routingTable
  return typeof rt?.size === 'number' ? rt.size : 0
}

async function sleep (ms: number, signal?: AbortSignal): Promise<void> {
  await new Promise<void>(resolve => {
    const t = setTimeout(resolve, ms)
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve() }, { once: true })
  })
}

/** Progress event a dial reports once its TCP connection is up and the pnet handshake starts. */
const PNET_HANDSHAKE_EVENT = 'minga:pnet-handshake'
/** Dial progress events that mean the transport connected and the connection upgrade began. */
const HANDSHAKE_EVENTS = new Set([PNET_HANDSHAKE_EVENT, 'upgrader:encrypt-outbound-connection'])

/**
 * preSharedKey's protector, reporting to the dial when it starts: a dial that fails after that
 * reached the peer and failed in the handshake, which is what a swarm key mismatch looks like.
 */
function reportingProtector (psk: Uint8Array): () => ConnectionProtector {
  const factory = preSharedKey({ psk })
  return () => {
    const inner = factory()
    return {
      [Symbol.toStringTag]: '@libp2p/pnet',
      protect: async (connection, options) => {
        // the upgrader hands the dial's options (onProgress included) to the protector
        const onProgress = (options as { onProgress?: (evt: { type: string, detail: unknown }) => void } | undefined)?.onProgress
        onProgress?.({ type: PNET_HANDSHAKE_EVENT, detail: undefined })
        return await inner.protect(connection, options)
      }
    } satisfies ConnectionProtector & { [Symbol.toStringTag]: string }
  }
}

interface DialFailure { addr: string, reason: string, handshake: boolean }

function describeDialError (err: unknown): string {
  const e = err as Error | undefined
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError' || /aborted due to timeout/.test(e?.message ?? '')) return 'timed out'
  const name = e?.name != null && e.name !== 'Error' ? `${e.name}: ` : ''
  return `${name}${e?.message ?? String(err)}`
}

/**
 * The bootstrap error for dials that all failed. A failure after the TCP connection was up is a
 * failed handshake: with pnet that is what a different key, or a key on one side only, looks like
 * (the other side reads noise and resets or stalls), though any handshake failure looks the same.
 */
function bootstrapFailure (failures: DialFailure[], timeoutMs: number, hasSwarmKey: boolean): BootstrapError {
  const handshake = failures.filter(f => f.handshake)
  if (handshake.length === 0) {
    return new BootstrapError(`could not reach any bootstrap peer within ${timeoutMs} ms — ${failures.map(f => `${f.addr}: ${f.reason}`).join('; ')}`)
  }
  const what = hasSwarmKey ? 'the private-network handshake' : 'the handshake'
  const hint = hasSwarmKey
    ? 'do both sides use the same --swarm-key? (this node has a swarm key; the other side may have a different one or none)'
    : 'if that swarm is private, this node needs its key (--swarm-key FILE)'
  const parts = failures.map(f => f.handshake ? `the connection failed during ${what} (${f.reason})` : `unreachable (${f.reason})`)
  if (failures.length === 1) return new BootstrapError(`cannot join the swarm through ${failures[0].addr}: ${parts[0]} — ${hint}`)
  return new BootstrapError(`cannot join the swarm through any bootstrap address — ${failures.map((f, i) => `${f.addr}: ${parts[i]}`).join('; ')} — ${hint}`)
}

/**
 * kad-dht adds a connected peer to its routing table only once identify and a ping of it have
 * both succeeded, and does not try again when either fails (a peer busy for a few seconds misses the
 * ping's 5 s timeout): bootstrap peers still missing from it after this long are dialled afresh.
 */
const REDIAL_AFTER_MS = 6000

async function bootstrapTo (libp2p: MingaLibp2p, addrs: string[], timeoutMs: number, hasSwarmKey: boolean): Promise<void> {
  if (addrs.length === 0) return
  const targets = addrs.map(a => ({ addr: a, ma: parseBootstrap(a), handshake: false }))
  const deadline = Date.now() + timeoutMs
  const signal = AbortSignal.timeout(timeoutMs)
  const self = libp2p.peerId.toString()
  const results = await Promise.allSettled(targets.map(async (target) => {
    if (target.ma.getComponents().find(c => c.name === 'p2p')?.value === self) throw new Error('that is this node itself')
    return await libp2p.dial(target.ma, {
      signal,
      onProgress: (evt: { type: string }) => { if (HANDSHAKE_EVENTS.has(evt.type)) target.handshake = true }
    })
  }))
  if (results.every(r => r.status === 'rejected')) {
    throw bootstrapFailure(results.map((r, i) => ({
      addr: targets[i].addr,
      reason: describeDialError((r as PromiseRejectedResult).reason),
      handshake: targets[i].handshake
    })), timeoutMs, hasSwarmKey)
  }
  const reached = targets.filter((_, i) => results[i].status === 'fulfilled')
  let redialAt = Date.now() + REDIAL_AFTER_MS
  while (routingTableSize(libp2p.services.dht) === 0) {
    if (Date.now() >= deadline) {
      throw new BootstrapError(`connected to ${reached.map(t => t.addr).join(', ')} but no peer joined the DHT (${DHT_PROTOCOL}) within ${timeoutMs} ms — is it a minga node?`)
    }
    if (Date.now() >= redialAt) {
      redialAt = Date.now() + REDIAL_AFTER_MS
      await Promise.allSettled(reached.map(async target => {
        await libp2p.hangUp(target.ma, { signal })
        await libp2p.dial(target.ma, { signal })
      }))
    }
    await sleep(25)
  }
}

/** Creates and starts a minga node; with `bootstrap`, resolves once the DHT has a peer. */
export async function createMingaNode (init: MingaNodeInit = {}): Promise<MingaNode> {
  const privateKey = init.privateKey ?? await generateKeyPair('Ed25519')
  const maxFrameBytes = init.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
  // Validate bootstrap addresses and the swarm key before starting anything.
  for (const a of init.bootstrap ?? []) parseBootstrap(a)
  const swarmKey = init.swarmKey !== undefined ? parseSwarmKey(init.swarmKey) : undefined
  const relayLimits = init.relay === true ? DEFAULT_RELAY_LIMITS : init.relay === false || init.relay == null ? undefined : { ...DEFAULT_RELAY_LIMITS, ...init.relay }

  const libp2p = await createLibp2p<MingaServices>({
    privateKey,
    // block values merge on PUT instead of replacing each other (record-store.ts)
    datastore: new MergingRecordStore(),
    // Connections from this machine (a local gateway or client, the other nodes of a local swarm)
    // skip the per-host limits meant for remote hosts: on loopback every node is the same host, and
    // with tens of nodes the 5-a-second limit refused joins.
    connectionManager: { allow: LOOPBACK },
    addresses: {
      listen: init.listen ?? DEFAULT_LISTEN,
      ...(init.announce !== undefined ? { announce: init.announce } : {})
    },
    // reservations: a relay slot is only taken when reachability says so (listenThroughRelay)
    transports: [tcp(), circuitRelayTransport({ reservationCompletionTimeout: 10_000 })],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({
      // keep-alive pings stop TCP's 2-minute socket inactivity timeout from closing quiet connections
      enableKeepAlive: true,
      keepAliveInterval: 30_000,
      // per-connection stream caps (the per-protocol caps are set where protocols are handled)
      maxInboundStreams: 1024,
      maxOutboundStreams: 1024,
      streamOptions: {
        // 256 KiB initial window (the spec minimum), auto-tuned up to 16 MiB on fast links
        initialStreamWindowSize: 256 * 1024,
        maxStreamWindowSize: 16 * 1024 * 1024,
        // Bytes a stream may hold while paused or before its handler listens: a whole frame plus a
        // full window in flight. rpc.ts pauses streams for backpressure, so this is what must fit.
        maxReadBufferLength: maxFrameBytes + 32 * 1024 * 1024,
        // a decode session keeps its stream for its whole life, including pauses between requests
        inactivityTimeout: 30 * 60 * 1000
      }
    })],
    ...(swarmKey !== undefined ? { connectionProtector: reportingProtector(swarmKey) } : {}),
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol: init.dhtProtocol ?? DHT_PROTOCOL,
        clientMode: false,
        // the default mapper drops private addresses (127.x, 10.x, 192.168.x): keep them
        peerInfoMapper: passthroughMapper,
        validators: recordValidators,
        selectors: recordSelectors,
        // a lone node (the first one, or a test) must still answer queries from its own store
        allowQueryWithZeroPeers: true
      }),
      autoNAT: autoNAT(),
      dcutr: dcutr(),
      reachability: mingaReachability(),
      ...(relayLimits !== undefined
        ? {
            relay: circuitRelayServer({
              reservations: {
                maxReservations: relayLimits.maxReservations,
                applyDefaultLimit: true,
                defaultDataLimit: BigInt(relayLimits.maxBytes),
                defaultDurationLimit: relayLimits.maxDurationMs
              }
            })
          }
        : {})
    }
  })

  const node: MingaNode = {
    libp2p,
    peerId: libp2p.peerId,
    privateKey,
    addrs: () => shareableAddrs(libp2p.getMultiaddrs().map(ma => ma.toString())),
    bootstrap: async (addrs, timeoutMs = init.bootstrapTimeoutMs ?? DEFAULT_BOOTSTRAP_TIMEOUT_MS) => {
      await bootstrapTo(libp2p, addrs, timeoutMs, swarmKey !== undefined)
    },
    dhtPeers: () => routingTableSize(libp2p.services.dht),
    reachability: () => ({ status: libp2p.services.reachability.status, relayed: libp2p.services.reachability.relayed }),
    stop: async () => { await libp2p.stop() }
  }

  try {
    if ((init.bootstrap ?? []).length > 0) await node.bootstrap(init.bootstrap ?? [])
    const listening = libp2p.getMultiaddrs().length > 0
    const mode = init.reachability ?? ((init.bootstrap ?? []).length > 0 ? 'auto' : 'public')
    if (listening && mode !== 'public' && relayLimits === undefined) {
      const status = mode === 'private' ? 'private' : await libp2p.services.reachability.check()
      if (status === 'private') {
        // others cannot reach us, so we should not be in their DHT routing tables
        await libp2p.services.dht.setMode('client')
        await libp2p.services.reachability.listenThroughRelay(RELAY_RESERVATION_TIMEOUT_MS)
      }
    }
  } catch (err) {
    await libp2p.stop()
    throw err
  }
  return node
}

const isLoopback = (addr: string): boolean => addr.startsWith('/ip4/127.') || addr.startsWith('/ip6/::1/')

/**
 * Direct addresses first, relayed ones after. A relay hands out all its addresses, loopback
 * included: a relayed address through the relay's loopback only helps nodes on the relay's machine,
 * so it is dropped unless this node is itself on loopback only.
 */
function shareableAddrs (addrs: string[]): string[] {
  const direct = addrs.filter(a => !a.includes('/p2p-circuit'))
  const localOnly = direct.every(isLoopback)
  return [...direct, ...addrs.filter(a => a.includes('/p2p-circuit') && (localOnly || !isLoopback(a)))]
}

/**
 * Reads the node identity from `file` (a libp2p protobuf-encoded private key), or creates an
 * Ed25519 key and writes it there with mode 0600 if the file does not exist.
 */
export async function loadOrCreateIdentity (file: string): Promise<PrivateKey> {
  let bytes: Uint8Array | undefined
  try {
    bytes = await readFile(file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new IdentityError(`cannot read identity file ${file}: ${(err as Error).message}`)
  }
  if (bytes !== undefined) {
    try {
      return privateKeyFromProtobuf(bytes)
    } catch (err) {
      throw new IdentityError(`identity file ${file} is not a libp2p private key: ${(err as Error).message}`)
    }
  }
  const key = await generateKeyPair('Ed25519')
  await mkdir(dirname(file), { recursive: true })
  try {
    // 'wx': never overwrite a key another process created in the meantime
    await writeFile(file, privateKeyToProtobuf(key), { mode: 0o600, flag: 'wx' })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return await loadOrCreateIdentity(file)
    throw new IdentityError(`cannot write identity file ${file}: ${(err as Error).message}`)
  }
  return key
}
