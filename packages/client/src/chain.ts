// The client's end of chains: the first hop of a chain answers the FORWARD it was sent as usual, and
// the chain's outputs (every hop's, stacked) come back in one RESULT that the last hop pushes on
// CHAIN_PROTOCOL, or that a hop whose next link broke pushes with what it has (CHAIN_BROKEN). The
// inbox matches a report to the step waiting for it by the reporting hop's session id, its peer and
// the step's position; anything else is refused.
import type { PeerId } from '@libp2p/interface'
import {
  ErrorCode, FrameFlag, FrameType, ProtocolError, sessionIdToHex, tensorF32, type Channel, type Frame, type FrameInit
} from '@minga/p2p'

/** One hop of a chain, as the inbox needs to know it (any of them may report). */
export interface ChainMember {
  sessionId: Uint8Array
  peerId: string
  channel: Channel
}

export interface ChainReport {
  /** Outputs of the chain's hops that ran, in order, starting with the first hop's. */
  outputs: Float32Array[]
  /** A link broke (or a hop vanished): hops after `outputs.length` did not run, or are in doubt. */
  broken: boolean
}

export interface ChainWait {
  readonly report: Promise<ChainReport>
  cancel (): void
}

interface Waiter {
  position: number
  tokens: number
  hiddenSize: number
  members: ChainMember[]
  settle: (report: ChainReport) => void
}

/**
 * After a chain member's channel closed, how long to wait for the broken link's report before
 * relaying without it (then a hop that did run answers WRONG_POSITION and is failed over, exactly).
 */
const CLOSED_GRACE_MS = 2000

export class ChainInbox {
  private readonly waiters = new Map<string, Waiter>()

  constructor (private readonly timeoutMs: number) {}

  /**
   * Waits for the report of a chain step at `position` whose hops are `members`, the first included. It
   * resolves (never rejects): with the outputs, or, if no report comes within the timeout (or within
   * a short grace after a member's channel closed: its upstream normally reports the broken link),
   * as broken with no outputs at all (the caller then relays from the second hop).
   */
  expect (members: ChainMember[], position: number, tokens: number, hiddenSize: number): ChainWait {
    const keys = members.map(m => sessionIdToHex(m.sessionId))
    let timer: ReturnType<typeof setTimeout> | undefined
    const giveUp = (): void => { finish({ outputs: [], broken: true }) }
    const closed = (): void => {
      clearTimeout(timer)
      timer = setTimeout(giveUp, CLOSED_GRACE_MS)
    }
    let settle!: (report: ChainReport) => void
    const report = new Promise<ChainReport>(resolve => { settle = resolve })
    let done = false
    const finish = (r: ChainReport): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      for (const key of keys) this.waiters.delete(key)
      for (const m of members) m.channel.stream.removeEventListener('close', closed)
      settle(r)
    }
    const waiter: Waiter = { position, tokens, hiddenSize, members, settle: finish }
    for (const key of keys) this.waiters.set(key, waiter)
    timer = setTimeout(giveUp, this.timeoutMs)
    for (const m of members) {
      if (m.channel.closed) closed()
      else m.channel.stream.addEventListener('close', closed)
    }
    return { report, cancel: giveUp }
  }

  /** The CHAIN_PROTOCOL handler. */
  readonly onFrame = (frame: Frame, peer: PeerId): FrameInit => {
    const waiter = this.waiters.get(sessionIdToHex(frame.sessionId))
    const member = waiter?.members.find(m => m.peerId === peer.toString() && sameBytes(m.sessionId, frame.sessionId))
    if (waiter == null || member == null || frame.type !== FrameType.RESULT || (frame.flags & FrameFlag.FORWARDED) === 0) {
      throw new ProtocolError(ErrorCode.UNKNOWN_SESSION, 'no chain step of this client waits for that report')
    }
    const broken = (frame.flags & FrameFlag.CHAIN_BROKEN) !== 0
    const expected = waiter.members.length
    if (frame.position !== waiter.position || frame.tokens !== waiter.tokens || frame.hiddenSize !== waiter.hiddenSize || frame.stack > expected || (!broken && frame.stack !== expected)) {
      throw new ProtocolError(ErrorCode.WRONG_SHAPE, `a chain report of ${frame.stack} × ${frame.tokens} × ${frame.hiddenSize} at ${frame.position} does not fit the step (${expected} × ${waiter.tokens} × ${waiter.hiddenSize} at ${waiter.position})`)
    }
    const all = tensorF32(frame)
    const size = frame.tokens * frame.hiddenSize
    const outputs: Float32Array[] = []
    for (let i = 0; i < frame.stack; i++) outputs.push(all.subarray(i * size, (i + 1) * size))
    waiter.settle({ outputs, broken })
    return { type: FrameType.ACK, sessionId: frame.sessionId }
  }
}

function sameBytes (a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}
