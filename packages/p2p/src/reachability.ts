// Is this node reachable from outside, and if not, take a circuit-relay slot.
//
// libp2p's AutoNAT (also running on every node) only checks public addresses and needs 4 peers on
// different networks to agree, so it cannot decide in a small swarm or on private networks (a
// LAN, a lab, the tests' network namespaces). minga asks its bootstrap peers directly instead: "dial
// me back". A peer answers only for addresses on the host it sees the request come from (so nobody
// can make it dial a third party), with a fresh connection. Behind a NAT the host it sees is the
// router's, never one of the node's own, so the answer is "translated": the node is not reachable.
// Such a node then switches its DHT to client mode (others should not route queries through it)
// and listens on /p2p-circuit: the circuit-relay transport reserves a slot on a relay it knows and
// the relayed address joins the node's addresses (and so its DHT entry).
import { serviceDependencies, type ComponentLogger, type Connection, type Libp2pEvents, type PeerId, type PeerStore, type Startable, type Stream, type TypedEventTarget } from '@libp2p/interface'
import type { AddressManager, ConnectionManager, Registrar, TransportManager } from '@libp2p/interface-internal'
import { getNetConfig, lpStream } from '@libp2p/utils'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { Circuit, TCP } from '@multiformats/multiaddr-matcher'

export const DIALBACK_PROTOCOL = '/minga/dialback/1.0.0'
const MAX_MESSAGE_BYTES = 8192
const DIAL_TIMEOUT_MS = 5000

export type Reachability = 'public' | 'private' | 'unknown'

export interface ReachabilityComponents {
  peerId: PeerId
  registrar: Registrar
  connectionManager: ConnectionManager
  transportManager: TransportManager
  addressManager: AddressManager
  peerStore: PeerStore
  events: TypedEventTarget<Libp2pEvents>
  logger: ComponentLogger
}

interface DialbackAnswer {
  reachable: boolean
  /** How the answering peer saw us (our address as it arrived, e.g. a NAT router's). */
  seen: string
  reason?: string
}

export interface ReachabilityService {
  /** Last result of check(). */
  readonly status: Reachability
  /** True once this node listens through a relay. */
  readonly relayed: boolean
  /** Asks up to `peers` connected peers to dial this node back; 'public' if one of them could. */
  check (options?: { peers?: number, timeoutMs?: number }): Promise<Reachability>
  /**
   * Reserves a relay slot (listens on /p2p-circuit) and resolves once a relayed address is among
   * the node's addresses, or false after timeoutMs (no relay found).
   */
  listenThroughRelay (timeoutMs: number): Promise<boolean>
}

class MingaReachability implements Startable, ReachabilityService {
  readonly [Symbol.toStringTag] = '@minga/reachability'
  status: Reachability = 'unknown'
  private listening = false
  private readonly log

  constructor (private readonly components: ReachabilityComponents) {
    this.log = components.logger.forComponent('minga:reachability')
  }

  get [serviceDependencies] (): string[] {
    return ['@libp2p/identify']
  }

  get relayed (): boolean {
    return this.components.addressManager.getAddresses().some(ma => Circuit.matches(ma))
  }

  async start (): Promise<void> {
    await this.components.registrar.handle(DIALBACK_PROTOCOL, (stream, connection) => {
      void this.answer(stream, connection).catch(err => { this.log.error('dial-back request failed - %e', err) })
    }, { maxInboundStreams: 4, maxOutboundStreams: 4 })
  }

  async stop (): Promise<void> {
    await this.components.registrar.unhandle(DIALBACK_PROTOCOL)
  }

  /** The answering side: dial the asker back at its addresses on the host the request came from. */
  private async answer (stream: Stream, connection: Connection): Promise<void> {
    const signal = AbortSignal.timeout(DIAL_TIMEOUT_MS * 2)
    const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES })
    const reply = async (answer: DialbackAnswer): Promise<void> => {
      await lp.write(new TextEncoder().encode(JSON.stringify(answer)), { signal })
      await stream.close({ signal })
    }
    try {
      const request = JSON.parse(new TextDecoder().decode((await lp.read({ signal })).subarray())) as { addrs?: unknown }
      const seen = connection.remoteAddr.toString()
      if (connection.limits != null || Circuit.matches(connection.remoteAddr)) {
        await reply({ reachable: false, seen, reason: 'asked over a relayed connection' }); return
      }
      const seenHost = getNetConfig(connection.remoteAddr).host
      const addrs = (Array.isArray(request.addrs) ? request.addrs : []).slice(0, 16).flatMap((a: unknown): Multiaddr[] => {
        try {
          const ma = multiaddr(String(a))
          return TCP.exactMatch(ma.decapsulateCode(421)) && getNetConfig(ma).host === seenHost ? [ma] : []
        } catch {
          return []
        }
      }).slice(0, 4)
      if (addrs.length === 0) {
        await reply({ reachable: false, seen, reason: 'translated: none of its addresses is on the host the request came from' }); return
      }
      for (const addr of addrs) {
        const target = addr.getComponents().some(c => c.name === 'p2p') ? addr : addr.encapsulate(`/p2p/${connection.remotePeer.toString()}`)
        try {
          const back = await this.components.connectionManager.openConnection(target, { force: true, signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
          const same = back.remotePeer.equals(connection.remotePeer)
          await back.close().catch(() => {})
          if (same) { await reply({ reachable: true, seen }); return }
        } catch (err) {
          this.log('dial back to %a failed - %e', target, err)
        }
      }
      await reply({ reachable: false, seen, reason: 'dialling it back failed' })
    } catch (err: any) {
      stream.abort(err)
    }
  }

  async check ({ peers = 3, timeoutMs = DIAL_TIMEOUT_MS * 3 } = {}): Promise<Reachability> {
    const own = this.components.addressManager.getAddresses().filter(ma => !Circuit.matches(ma)).map(ma => ma.toString())
    if (own.length === 0) return (this.status = 'private')
    const askable: PeerId[] = []
    for (const conn of this.components.connectionManager.getConnections()) {
      if (conn.limits != null || askable.some(p => p.equals(conn.remotePeer))) continue
      const peer = await this.components.peerStore.get(conn.remotePeer).catch(() => undefined)
      if (peer?.protocols.includes(DIALBACK_PROTOCOL) === true) askable.push(conn.remotePeer)
      if (askable.length >= peers) break
    }
    const answers = await Promise.all(askable.map(async (peer) => await this.ask(peer, own, timeoutMs).catch(err => {
      this.log('dial-back request to %p failed - %e', peer, err)
      return undefined
    })))
    const got = answers.filter((a): a is DialbackAnswer => a != null)
    this.status = got.some(a => a.reachable) ? 'public' : got.length > 0 ? 'private' : 'unknown'
    this.log('reachability %s (%d answers: %s)', this.status, got.length, got.map(a => `${a.reachable ? 'reachable' : a.reason ?? 'unreachable'} as ${a.seen}`).join('; '))
    return this.status
  }

  private async ask (peer: PeerId, addrs: string[], timeoutMs: number): Promise<DialbackAnswer> {
    const signal = AbortSignal.timeout(timeoutMs)
    const stream = await this.components.connectionManager.openStream(peer, DIALBACK_PROTOCOL, { signal })
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES })
      await lp.write(new TextEncoder().encode(JSON.stringify({ addrs })), { signal })
      const answer = JSON.parse(new TextDecoder().decode((await lp.read({ signal })).subarray())) as DialbackAnswer
      if (typeof answer?.reachable !== 'boolean' || typeof answer.seen !== 'string') throw new Error('malformed dial-back answer')
      return answer
    } finally {
      await stream.close().catch(() => {})
    }
  }

  async listenThroughRelay (timeoutMs: number): Promise<boolean> {
    if (!this.listening) {
      this.listening = true
      await this.components.transportManager.listen([multiaddr('/p2p-circuit')])
    }
    if (this.relayed) return true
    return await new Promise<boolean>(resolve => {
      const done = (ok: boolean): void => {
        clearTimeout(timer)
        this.components.events.removeEventListener('self:peer:update', onUpdate)
        resolve(ok)
      }
      const onUpdate = (): void => { if (this.relayed) done(true) }
      const timer = setTimeout(() => { done(this.relayed) }, timeoutMs)
      this.components.events.addEventListener('self:peer:update', onUpdate)
    })
  }
}

export function mingaReachability (): (components: ReachabilityComponents) => ReachabilityService {
  return (components) => new MingaReachability(components)
}
