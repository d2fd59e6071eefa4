// Which servers, which route: the cheapest chain of servers that covers every layer in order.
// A hop may use any part of a server's span, so overlapping spans still chain.
import { NoRouteError } from './errors.ts'

export interface RouteServer {
  peerId: string
  start: number
  end: number
  /** Tokens per second through the server's whole span, as announced. */
  throughput: number
  /** Reached through a circuit relay (the server is behind NAT and no direct connection is up). */
  relayed?: boolean
}

/**
 * What a relayed hop costs on top of its round trip (which, measured through the relay, already
 * includes the relay's leg): the relay is a volunteer's shared link, and its limits on bytes and
 * duration end long sessions, which then fail over. So among comparable servers, direct ones win.
 */
export const RELAYED_HOP_EXTRA_MS = 20

/**
 * What every hop costs besides its round trip and its layers (framing, the server's worker round
 * trip). It also keeps a route from splitting one server's layers into several hops when round
 * trips measure 0 ms on loopback: the costs would then tie, and floating-point rounding decide.
 */
export const HOP_OVERHEAD_MS = 0.5

export interface RouteHop {
  peerId: string
  start: number
  end: number
}

/** Estimated milliseconds per decode step for using `blocks` layers of `server`, one round trip included. */
export function hopCostMs (server: RouteServer, blocks: number, rttMs: number): number {
  const msPerBlock = 1000 / (Math.max(server.throughput, 1e-6) * (server.end - server.start))
  return rttMs + HOP_OVERHEAD_MS + blocks * msPerBlock + (server.relayed === true ? RELAYED_HOP_EXTRA_MS : 0)
}

/** The cheapest route through every layer of the model. */
export function planRoute (numBlocks: number, servers: RouteServer[], rttMs: (peerId: string) => number | undefined): RouteHop[] {
  return planRange(0, numBlocks, numBlocks, servers, rttMs)
}

/**
 * Shortest path over layer boundaries start…end (Dijkstra; few nodes, so a plain scan is enough).
 * `rttMs` gives each server's measured round trip; servers without one are assumed slow.
 */
export function planRange (start: number, end: number, numBlocks: number, servers: RouteServer[], rttMs: (peerId: string) => number | undefined): RouteHop[] {
  const missing = uncoveredBlocks(numBlocks, servers).filter(b => b >= start && b < end)
  if (missing.length > 0) throw new NoRouteError(`no server holds ${describeBlocks(missing)} of ${numBlocks}`)

  const cost = new Array<number>(end + 1).fill(Infinity)
  const via = new Array<RouteHop | undefined>(end + 1)
  const done = new Array<boolean>(end + 1).fill(false)
  cost[start] = 0
  for (let round = start; round <= end; round++) {
    let at = -1
    for (let b = start; b <= end; b++) if (!done[b] && (at < 0 || cost[b] < cost[at])) at = b
    if (at < 0 || cost[at] === Infinity || at === end) break
    done[at] = true
    for (const server of servers) {
      if (!(server.start <= at && at < server.end)) continue
      const rtt = rttMs(server.peerId) ?? 1000
      for (let to = at + 1; to <= Math.min(server.end, end); to++) {
        const total = cost[at] + hopCostMs(server, to - at, rtt)
        if (total < cost[to] || (total === cost[to] && via[to] != null && server.peerId < via[to]!.peerId)) {
          cost[to] = total
          via[to] = { peerId: server.peerId, start: at, end: to }
        }
      }
    }
  }
  const route: RouteHop[] = []
  for (let b = end; b > start; b = via[b]!.start) route.unshift(via[b]!)
  return route
}

export function uncoveredBlocks (numBlocks: number, servers: RouteServer[]): number[] {
  const covered = new Array<boolean>(numBlocks).fill(false)
  for (const s of servers) for (let b = Math.max(0, s.start); b < Math.min(numBlocks, s.end); b++) covered[b] = true
  return covered.flatMap((c, b) => c ? [] : [b])
}

/** "block 3" or "blocks 0–1, 4" */
export function describeBlocks (blocks: number[]): string {
  const runs: string[] = []
  for (let i = 0; i < blocks.length;) {
    let j = i
    while (j + 1 < blocks.length && blocks[j + 1] === blocks[j] + 1) j++
    runs.push(i === j ? `${blocks[i]}` : `${blocks[i]}–${blocks[j]}`)
    i = j + 1
  }
  return `${blocks.length === 1 ? 'block' : 'blocks'} ${runs.join(', ')}`
}
