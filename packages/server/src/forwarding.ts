// Chains: after a hop has run its span for a step, send the output on to the next server named in
// the frame, or, at the chain's end, back to the session's owner. Each server forwards over its own
// libp2p connection, and the outputs of the chain's hops travel stacked with the step, so the one
// RESULT the last hop pushes to the client on CHAIN_PROTOCOL holds every hop's output (what the
// client keeps for failover and checks). A hop that cannot reach the next pushes what it has with
// CHAIN_BROKEN, and the client relays the rest itself.
//
// Who may do what (the rule, also in the README):
// - a server forwards only for a session that the frame's sender owns (opened on this server) or may
//   forward into, and only to the peer the frame names next, with the session id the frame gives;
// - a server accepts a forwarded step only from a peer that the session's owner listed when it
//   opened the session (OPEN_SESSION's next hops: the allowed upstream peers);
// - the chain's result, or a broken link's report, goes only to the owner of the sender's own session.
import {
  CHAIN_PROTOCOL, FrameFlag, FrameType, INFERENCE_PROTOCOL, openChannel,
  type Channel, type Frame, type FrameInit, type MingaNode
} from '@minga/p2p'

export interface ChainForwarderInit {
  node: MingaNode
  /** Per request to the next hop or to the owner. */
  timeoutMs?: number
  /** Dialing the next hop (one that cannot be reached, e.g. behind a NAT, must not hold the step long). Default 5 s. */
  dialTimeoutMs?: number
  maxFrameBytes?: number
  log: (message: string) => void
}

/** What a hop hands on after its span ran. */
export interface ChainStep {
  /** The frame the hop received (its next hops, position, shape and dtype are reused). */
  frame: Frame
  /** Owner of this hop's session: the only peer a report goes to. */
  owner: string
  /** The chain's outputs so far, one after the other, this hop's last (the next hop's input). */
  payload: Uint8Array
  stack: number
  /** The step came from the owner (this hop is the chain's first): its reply already told the owner. */
  fromOwner: boolean
}

export class ChainForwarder {
  private readonly channels = new Map<string, Promise<Channel>>()

  constructor (private readonly init: ChainForwarderInit) {}

  /** Sends the step on (or reports it); never throws, failures are reported to the owner and logged. */
  continue (step: ChainStep): void {
    const next = step.frame.nextHops[0]
    if (next == null) {
      if (!step.fromOwner) void this.report(step, false)
      return
    }
    void this.request(next.peer, INFERENCE_PROTOCOL, {
      type: FrameType.FORWARD,
      flags: FrameFlag.FORWARDED,
      sessionId: next.sessionId,
      dtype: step.frame.dtype,
      startBlock: next.startBlock,
      endBlock: next.endBlock,
      position: step.frame.position,
      tokens: step.frame.tokens,
      hiddenSize: step.frame.hiddenSize,
      stack: step.stack,
      nextHops: step.frame.nextHops.slice(1),
      payload: step.payload
    }).catch(async (err: unknown) => {
      this.init.log(`chain link to ${next.peer} failed: ${messageOf(err)}`)
      await this.report(step, true)
    })
  }

  async close (): Promise<void> {
    const channels = [...this.channels.values()]
    this.channels.clear()
    await Promise.all(channels.map(async c => { (await c.catch(() => undefined))?.abort('server closing') }))
  }

  /** The chain's outputs (or, broken, those so far) to the session's owner. */
  private async report (step: ChainStep, broken: boolean): Promise<void> {
    const { frame } = step
    const report: FrameInit = {
      type: FrameType.RESULT,
      flags: FrameFlag.FORWARDED | (broken ? FrameFlag.CHAIN_BROKEN : 0),
      sessionId: frame.sessionId, // this hop's own session: the owner knows which hop reports
      dtype: frame.dtype,
      startBlock: frame.startBlock,
      endBlock: frame.endBlock,
      position: frame.position,
      tokens: frame.tokens,
      hiddenSize: frame.hiddenSize,
      stack: step.stack,
      payload: step.payload
    }
    await this.request(step.owner, CHAIN_PROTOCOL, report).catch((err: unknown) => {
      this.init.log(`reporting a chain step to ${step.owner} failed: ${messageOf(err)}`)
    })
  }

  private async request (peer: string, protocol: string, frame: FrameInit): Promise<Frame> {
    const channel = await this.channelTo(peer, protocol)
    try {
      return await channel.request(frame, { timeoutMs: this.init.timeoutMs })
    } catch (err) {
      // a failed channel is not reused: the next step dials afresh
      if (channel.closed || (err as Error)?.name === 'TimeoutError') this.drop(peer, protocol, channel)
      throw err
    }
  }

  private async channelTo (peer: string, protocol: string): Promise<Channel> {
    const key = `${protocol} ${peer}`
    let channel = this.channels.get(key)
    if (channel != null && (await channel.then(c => c.closed, () => true))) channel = undefined
    if (channel == null) {
      channel = openChannel(this.init.node, peer, protocol, { maxFrameBytes: this.init.maxFrameBytes, timeoutMs: this.init.timeoutMs, signal: AbortSignal.timeout(this.init.dialTimeoutMs ?? 5_000) })
      this.channels.set(key, channel)
      channel.catch(() => { if (this.channels.get(key) === channel) this.channels.delete(key) })
    }
    return await channel
  }

  private drop (peer: string, protocol: string, channel: Channel): void {
    const key = `${protocol} ${peer}`
    void this.channels.get(key)?.then(c => { if (c === channel) this.channels.delete(key) }, () => {})
    channel.abort('the chain link failed')
  }
}

/** The peer id a next-hop entry names (a peer id, or a multiaddr ending in /p2p/<id>). */
export function hopPeerId (peer: string): string {
  const at = peer.lastIndexOf('/p2p/')
  return at >= 0 ? peer.slice(at + 5) : peer
}

function messageOf (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
