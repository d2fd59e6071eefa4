// A minga libp2p node: TCP + noise + yamux, identify, ping and a private Kademlia DHT (own protocol
// id, server mode, loopback/LAN addresses kept) whose /minga/... records are checked by records.ts.

import './polyfill.ts'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { identify, type Identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper, type KadDHT } from '@libp2p/kad-dht'
import { ping, type Ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import type { Libp2p, PeerId, PrivateKey } from '@libp2p/interface'
import { BootstrapError, IdentityError, InvalidArgumentError } from './errors.ts'
import { DEFAULT_MAX_FRAME_BYTES } from './frames.ts'
import { recordSelectors, recordValidators } from './records.ts'

/** Protocol id of minga's DHT: a private DHT, never mixed with the IPFS one. */
export const DHT_PROTOCOL = '/minga/kad/1.0.0'
export const DEFAULT_LISTEN = ['/ip4/127.0.0.1/tcp/0']
export const DEFAULT_BOOTSTRAP_TIMEOUT_MS = 15_000

// a type alias (not an interface) so it satisfies libp2p's ServiceMap index signature
export type MingaServices = {
  identify: Identify
  ping: Ping
  dht: KadDHT
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
  /** Optional pre-shared swarm key (libp2p pnet format) to make the network private. */
  swarmKey?: Uint8Array
  /** DHT protocol id. Default '/minga/kad/1.0.0'. */
  dhtProtocol?: string
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

async function bootstrapTo (libp2p: MingaLibp2p, addrs: string[], timeoutMs: number): Promise<void> {
  if (addrs.length === 0) return
  const targets = addrs.map(a => ({ addr: a, ma: parseBootstrap(a) }))
  const deadline = Date.now() + timeoutMs
  const signal = AbortSignal.timeout(timeoutMs)
  const self = libp2p.peerId.toString()
  const results = await Promise.allSettled(targets.map(async ({ ma }) => {
    if (ma.getComponents().find(c => c.name === 'p2p')?.value === self) throw new Error('that is this node itself')
    return await libp2p.dial(ma, { signal })
  }))
  const failures = results.map((r, i) => r.status === 'rejected' ? `${targets[i].addr}: ${(r.reason as Error)?.message ?? String(r.reason)}` : undefined)
  if (results.every(r => r.status === 'rejected')) {
    throw new BootstrapError(`could not reach any bootstrap peer within ${timeoutMs} ms — ${failures.filter(Boolean).join('; ')}`)
  }
  while (routingTableSize(libp2p.services.dht) === 0) {
    if (Date.now() >= deadline) {
      const reached = targets.filter((_, i) => results[i].status === 'fulfilled').map(t => t.addr)
      throw new BootstrapError(`connected to ${reached.join(', ')} but no peer joined the DHT (${DHT_PROTOCOL}) within ${timeoutMs} ms — is it a minga node?`)
    }
    await sleep(25)
  }
}

/** Creates and starts a minga node; with `bootstrap`, resolves once the DHT has a peer. */
export async function createMingaNode (init: MingaNodeInit = {}): Promise<MingaNode> {
  const privateKey = init.privateKey ?? await generateKeyPair('Ed25519')
  const maxFrameBytes = init.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
  // Validate bootstrap addresses before starting anything.
  for (const a of init.bootstrap ?? []) parseBootstrap(a)

  const libp2p = await createLibp2p<MingaServices>({
    privateKey,
    addresses: {
      listen: init.listen ?? DEFAULT_LISTEN,
      ...(init.announce !== undefined ? { announce: init.announce } : {})
    },
    transports: [tcp()],
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
    ...(init.swarmKey !== undefined ? { connectionProtector: preSharedKey({ psk: init.swarmKey }) } : {}),
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
      })
    }
  })

  const node: MingaNode = {
    libp2p,
    peerId: libp2p.peerId,
    privateKey,
    addrs: () => libp2p.getMultiaddrs().map(ma => ma.toString()),
    bootstrap: async (addrs, timeoutMs = init.bootstrapTimeoutMs ?? DEFAULT_BOOTSTRAP_TIMEOUT_MS) => {
      await bootstrapTo(libp2p, addrs, timeoutMs)
    },
    dhtPeers: () => routingTableSize(libp2p.services.dht),
    stop: async () => { await libp2p.stop() }
  }

  if ((init.bootstrap ?? []).length > 0) {
    try {
      await node.bootstrap(init.bootstrap ?? [])
    } catch (err) {
      await libp2p.stop()
      throw err
    }
  }
  return node
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
