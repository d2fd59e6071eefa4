// The state of a swarm, from one bootstrap address: which models it serves, who holds which blocks,
// at what speed and with what free capacity.
import type { PeerId } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { createMingaNode, fetchInfo, findSpans, type MingaNode, type ServerEntry, type SpanMove } from '@minga/p2p'

/**
 * A server as `status` shows it: its announcement, the round trip to it when measured, whether it
 * is reached through a relay (it announces relayed addresses: it is behind NAT), and when it last
 * moved its span and why (asked from the server itself).
 */
export type SwarmServer = Pick<ServerEntry, 'peerId' | 'name' | 'addrs' | 'start' | 'end' | 'throughput' | 'freeSessions' | 'freeCacheTokens' | 'version' | 'weights'> & {
  rttMs?: number
  relayed: boolean
  lastMove?: SpanMove
}

export interface SwarmStatus {
  modelId: string
  numBlocks: number
  servers: SwarmServer[]
  /** For each block, how many servers hold it and their summed throughput. */
  coverage: Array<{ block: number, servers: number, throughput: number }>
}

export interface SwarmStatusInit {
  bootstrap: string[]
  /** Only this model (else every model the reachable peers serve). */
  model?: { modelId: string, numBlocks: number }
  timeoutMs?: number
  /** The swarm's pre-shared key (a key file's bytes) if the swarm is private. */
  swarmKey?: Uint8Array
}

export async function getSwarmStatus (init: SwarmStatusInit): Promise<SwarmStatus[]> {
  const node = await createMingaNode({ listen: [], bootstrap: init.bootstrap, swarmKey: init.swarmKey })
  try {
    const models = init.model != null ? [init.model] : await discoverModels(node, init.timeoutMs ?? 5000)
    return await Promise.all(models.map(async ({ modelId, numBlocks }) => {
      const status = statusOf(modelId, numBlocks, await findSpans(node, modelId, numBlocks))
      await addMoves(node, status.servers, init.timeoutMs ?? 10_000)
      return status
    }))
  } finally {
    await node.stop()
  }
}

export function statusOf (modelId: string, numBlocks: number, entries: ServerEntry[], rtt = new Map<string, number>()): SwarmStatus {
  const servers = entries.map(e => toSwarmServer(e, rtt.get(e.peerId)))
  const coverage = Array.from({ length: numBlocks }, (_, block) => {
    const holders = servers.filter(s => s.start <= block && block < s.end)
    return { block, servers: holders.length, throughput: holders.reduce((sum, s) => sum + s.throughput, 0) }
  })
  return { modelId, numBlocks, servers, coverage }
}

export function toSwarmServer (e: ServerEntry, rttMs?: number): SwarmServer {
  return {
    peerId: e.peerId,
    ...(e.name != null ? { name: e.name } : {}),
    addrs: e.addrs,
    start: e.start,
    end: e.end,
    throughput: e.throughput,
    freeSessions: e.freeSessions,
    freeCacheTokens: e.freeCacheTokens,
    version: e.version,
    ...(e.weights != null ? { weights: e.weights } : {}),
    relayed: e.addrs.some(a => a.includes('/p2p-circuit')),
    ...(rttMs != null ? { rttMs } : {})
  }
}

/** Asks each server (info protocol) when it last moved its span; servers that do not answer keep none. */
async function addMoves (node: MingaNode, servers: SwarmServer[], timeoutMs: number): Promise<void> {
  await Promise.all(servers.map(async (s) => {
    try {
      const peer = peerIdFromString(s.peerId)
      if (node.libp2p.getConnections(peer).length === 0) {
        await node.libp2p.dial(s.addrs.map(a => multiaddr(a)), { signal: AbortSignal.timeout(timeoutMs) })
      }
      const info = await fetchInfo(node, peer, timeoutMs)
      if (info.lastMove != null) s.lastMove = info.lastMove
    } catch {}
  }))
}

/** Asks the peers we can find (connected ones and the DHT's closest to us) what they serve. */
async function discoverModels (node: MingaNode, timeoutMs: number): Promise<Array<{ modelId: string, numBlocks: number }>> {
  const peers = new Map<string, PeerId>(node.libp2p.getPeers().map(p => [p.toString(), p]))
  try {
    for await (const event of node.libp2p.services.dht.getClosestPeers(node.peerId.toMultihash().bytes, { signal: AbortSignal.timeout(timeoutMs) })) {
      if (event.name === 'FINAL_PEER' || event.name === 'PEER_RESPONSE') {
        const found = event.name === 'FINAL_PEER' ? [event.peer] : event.closer
        for (const peer of found) if (!peer.id.equals(node.peerId)) peers.set(peer.id.toString(), peer.id)
      }
    }
  } catch {}
  const models = new Map<string, number>()
  await Promise.all([...peers.values()].map(async peer => {
    const info = await fetchInfo(node, peer, timeoutMs).catch(() => undefined)
    if (info != null) models.set(info.modelId, info.numLayers)
  }))
  return [...models].map(([modelId, numBlocks]) => ({ modelId, numBlocks }))
}
