// One inference session along a route (Petals' inference_session): a session on every hop's server,
// hidden states relayed hop to hop with raw tensor bytes on the wire, and, for each hop, the inputs
// the client sent it. That history is what makes the session survive:
// - failover: when a hop's server dies, times out or errors, the client routes its layers to other
//   servers and replays the history there call by call (same token counts, so the new KV caches are
//   built by the same kernels and the continuation is identical), then goes on;
// - integrity: with probability r a step is also replayed on a second server holding the same layers;
//   if the outputs differ, a third server decides and the wrong one is banned.
// With chains on, consecutive hops whose link the client set up (each hop's session names the
// previous hop as its upstream) get one FORWARD, to the first: the servers pass the step on and the
// client gets every hop's output back (chain.ts), so the history, failover and checks are the same.
import { DType, FrameFlag, FrameType, encodeTensor, newSessionId, tensorF32, type Channel, type NextHop } from '@minga/p2p'
import type { LayerChain } from '@minga/engine'
import type { ChainInbox } from './chain.ts'
import { SwarmError } from './errors.ts'
import type { RouteHop } from './routing.ts'

export interface RemoteHop {
  hop: RouteHop
  channel: Channel
  /** How the previous hop of a chain dials this one: a multiaddr with /p2p/, or the peer id. */
  addr?: string
}

/** How a session finds servers: supplied by the client, which knows the swarm. */
export interface HopConnector {
  /**
   * The cheapest chain of servers for layers [start, end), avoiding failed and banned peers.
   * `urgent`: a session is waiting mid-generation, so use the servers already known if they can do it.
   */
  route (start: number, end: number, urgent: boolean): Promise<RemoteHop[]>
  /**
   * Another server holding all of [start, end) with the same weights as peer `like` (so that their
   * outputs can be compared), none of `exclude`; undefined if there is none.
   */
  alternative (start: number, end: number, exclude: Set<string>, like: string): Promise<RemoteHop | undefined>
  /** The peer failed a request: avoid it for a while. */
  penalize (peerId: string, reason: unknown): void
  /** The peer returned wrong results: never use it again. */
  ban (peerId: string, reason: string): void
}

export interface SessionPolicy {
  maxLength: number
  hiddenSize: number
  wireDtype: 'f32' | 'f16' | 'q8'
  /** Where chain reports arrive; without it the client relays every hop itself. */
  chains?: ChainInbox
  /** Give up re-routing after this long without success. */
  failoverTimeoutMs: number
  /** Keep at most this many bytes of inputs per session for replay (beyond it, no failover). */
  maxHistoryBytes: number
  /** Probability of verifying a hop's step on a second server. */
  verifyProbability: number
  /** Largest difference, relative to the output's largest magnitude, that still counts as agreeing. */
  verifyTolerance: number
  random: () => number
  /** Called when the route changes (failover, or a verifier that replaced a wrong server). */
  onRoute?: (route: RouteHop[]) => void
  /** Stops retrying to open or re-route when aborted. */
  signal?: AbortSignal
}

export interface SessionEvents {
  /** Hop steps whose output came back through a chain rather than from the client relaying. */
  chainedHops: number
  /** Chain steps that broke before their end (the client relayed the rest). */
  brokenChains: number
  failovers: number
  verifications: number
  mismatches: number
  banned: string[]
}

interface Step { hidden: Float32Array, tokens: number }

interface HopState extends RemoteHop {
  sessionId: Uint8Array
  /** The peer this hop's session accepts forwarded steps from (the previous hop when it was opened). */
  upstream?: string
  /** Tokens in this server's cache for the session. */
  position: number
  /** Every input sent to this hop, in order, for replay. */
  history: Step[]
}

export class RemoteSession implements LayerChain {
  readonly events: SessionEvents = { chainedHops: 0, brokenChains: 0, failovers: 0, verifications: 0, mismatches: 0, banned: [] }
  private hops: HopState[] = []
  private historyBytes = 0
  private replayable = true
  private closed = false
  /** Set by abort(): every pending and later step fails with it, and nothing is re-routed. */
  private abortReason?: Error
  private abortion?: Promise<never>
  private rejectAbortion?: (reason: Error) => void

  private constructor (private readonly connector: HopConnector, private readonly policy: SessionPolicy) {}

  static async open (connector: HopConnector, numBlocks: number, policy: SessionPolicy): Promise<RemoteSession> {
    const session = new RemoteSession(connector, policy)
    session.hops = await session.connect(0, numBlocks, Date.now() + policy.failoverTimeoutMs, false, undefined)
    policy.onRoute?.(session.route)
    return session
  }

  get route (): RouteHop[] {
    return this.hops.map(h => h.hop)
  }

  async forward (hidden: Float32Array, tokens: number): Promise<Float32Array> {
    this.remember(hidden.length)
    let relayNext = false
    for (let i = 0; i < this.hops.length;) {
      const { last, verifyLast } = this.segment(i, relayNext)
      const input = hidden
      let outputs: Float32Array[]
      try {
        if (this.abortReason != null) throw this.abortReason
        const step = last > i ? this.chained(i, last, input, tokens) : this.request(this.hops[i], input, tokens).then(out => [out])
        outputs = await (this.abortion != null ? Promise.race([step, this.abortion]) : step)
      } catch (err) {
        if (this.abortReason != null) throw this.abortReason
        const replaced = await this.failover(i, err, input, tokens)
        hidden = replaced.output
        i += replaced.hops // the replacement hops were verified by construction: they replayed the history
        relayNext = false
        continue
      }
      for (const output of outputs) {
        this.record(this.hops[i++], hidden, tokens)
        hidden = output
      }
      // a broken chain: the hop after the last output did not run (or is in doubt), so relay to it,
      // and keep relaying to it (a link that failed once, e.g. across a NAT, would cost a timeout each step)
      relayNext = i <= last
      if (relayNext) this.hops[i].upstream = undefined
      if (!relayNext && verifyLast) hidden = await this.verify(i - 1, hidden)
    }
    return hidden
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await Promise.all(this.hops.map(async h => { await closeOn(h) }))
  }

  /**
   * Ends the session at once (the caller went away): the step in flight fails with `reason`, no
   * failover follows, and every server is told to close its session now. A server finishes the step
   * it is computing first: it reads a stream's frames in order.
   */
  abort (reason: Error): void {
    if (this.abortReason != null) return
    this.abortReason = reason
    this.rejectAbortion?.(reason)
    void this.close()
  }

  /** Lets abort() interrupt a step in flight (only sessions that can be aborted pay for the race). */
  abortable (): void {
    this.abortion ??= new Promise<never>((_resolve, reject) => { this.rejectAbortion = reject })
    this.abortion.catch(() => {})
  }

  /**
   * The hops from `i` that one chained FORWARD can take: up to the first whose step is to be verified
   * (checks need the hop's output before the next hop runs) or whose link the client did not set up.
   */
  private segment (i: number, relayOnly: boolean): { last: number, verifyLast: boolean } {
    let last = i
    let verifyLast = this.drawVerify()
    if (this.policy.chains == null || relayOnly) return { last, verifyLast }
    const linked = (k: number): boolean => this.hops[k].upstream === this.hops[k - 1].hop.peerId && !this.hops[k].channel.closed
    while (!verifyLast && last + 1 < this.hops.length && linked(last + 1)) {
      last++
      verifyLast = this.drawVerify()
    }
    return { last, verifyLast }
  }

  private drawVerify (): boolean {
    return this.policy.verifyProbability > 0 && this.replayable && this.policy.random() < this.policy.verifyProbability
  }

  /**
   * One step through hops i..last as a chain: the outputs of the hops that ran, in order (at least
   * hop i's; fewer than all if a link broke). Throws if hop i itself fails.
   */
  private async chained (i: number, last: number, input: Float32Array, tokens: number): Promise<Float32Array[]> {
    const first = this.hops[i]
    const rest = this.hops.slice(i + 1, last + 1)
    const wait = this.policy.chains!.expect([first, ...rest].map(h => ({ sessionId: h.sessionId, peerId: h.hop.peerId, channel: h.channel })), first.position, tokens, this.policy.hiddenSize)
    let firstOutput: Float32Array
    let forwarded = false
    try {
      firstOutput = await this.request(first, input, tokens, rest.map(h => ({ peer: h.addr ?? h.hop.peerId, startBlock: h.hop.start, endBlock: h.hop.end, sessionId: h.sessionId })), flags => { forwarded = (flags & FrameFlag.FORWARDED) !== 0 })
    } catch (err) {
      wait.cancel()
      throw err
    }
    if (!forwarded) wait.cancel() // a server that does not forward: relay at once
    const { outputs, broken } = await wait.report
    // The first output came from hop i itself; a report that disagrees with it is not trusted at all.
    const trusted = outputs.length > 0 && sameValues(outputs[0], firstOutput)
    const ran = trusted ? outputs.length : 1
    for (let k = 1; k < ran; k++) rest[k - 1].position += tokens
    this.events.chainedHops += ran - 1
    if (broken || !trusted) this.events.brokenChains++
    return trusted ? [firstOutput, ...outputs.slice(1)] : [firstOutput]
  }

  /** Opens sessions on a route for [start, end), retrying with other servers until the deadline. */
  private async connect (start: number, end: number, deadline: number, urgent: boolean, upstream: string | undefined): Promise<HopState[]> {
    return await this.retry(deadline, `layers [${start}, ${end})`, async () => {
      const remotes = await this.connector.route(start, end, urgent)
      const states: HopState[] = []
      try {
        for (const remote of remotes) {
          const previous = states.length > 0 ? states[states.length - 1].hop.peerId : upstream
          states.push(await this.blame(remote, async () => await this.openOn(remote, previous)))
        }
      } catch (err) {
        await Promise.all(states.map(closeOn))
        throw err
      }
      return states
    })
  }

  /**
   * Replaces hop `index` by another route for its layers, rebuilt from the history; returns the
   * output for `input` and how many hops now stand in its place.
   */
  private async failover (index: number, cause: unknown, input: Float32Array, tokens: number): Promise<{ output: Float32Array, hops: number }> {
    const failed = this.hops[index]
    this.connector.penalize(failed.hop.peerId, cause)
    void closeOn(failed)
    if (!this.replayable) throw new SwarmError(`server ${failed.hop.peerId} failed (${messageOf(cause)}) and the session's history is too large to replay elsewhere`)
    const deadline = Date.now() + this.policy.failoverTimeoutMs
    const { states, output } = await this.retry(deadline, `layers [${failed.hop.start}, ${failed.hop.end})`, async () => {
      const states = await this.connect(failed.hop.start, failed.hop.end, deadline, true, this.hops[index - 1]?.hop.peerId)
      try {
        for (const step of failed.history) await this.through(states, step.hidden, step.tokens)
        return { states, output: await this.through(states, input, tokens) }
      } catch (err) {
        await Promise.all(states.map(closeOn))
        throw err
      }
    })
    this.hops.splice(index, 1, ...states)
    this.events.failovers++
    this.policy.onRoute?.(this.route)
    return { output, hops: states.length }
  }

  /** Checks hop `index`'s last output on a second server; a third decides a disagreement. */
  private async verify (index: number, output: Float32Array): Promise<Float32Array> {
    const primary = this.hops[index]
    const exclude = new Set([primary.hop.peerId, ...this.events.banned])
    const second = await this.replica(primary, exclude)
    if (second == null) return output
    this.events.verifications++
    if (this.agree(output, second.output)) {
      void closeOn(second.state)
      return output
    }
    this.events.mismatches++
    exclude.add(second.state.hop.peerId)
    const third = await this.replica(primary, exclude)
    if (third == null) {
      void closeOn(second.state)
      throw new SwarmError(`servers ${primary.hop.peerId} and ${second.state.hop.peerId} disagree on layers [${primary.hop.start}, ${primary.hop.end}) and no third server can decide`)
    }
    const primaryWrong = !this.agree(output, third.output)
    const secondWrong = !this.agree(second.output, third.output)
    if (secondWrong) this.banPeer(second.state.hop.peerId, 'its output disagreed with two other servers')
    void closeOn(second.state)
    if (!primaryWrong) {
      void closeOn(third.state)
      return output
    }
    // The third server replayed the whole history: it takes the wrong server's place as it is.
    this.banPeer(primary.hop.peerId, 'its output disagreed with two other servers')
    void closeOn(primary)
    this.hops[index] = third.state
    this.policy.onRoute?.(this.route)
    return third.output
  }

  /** Replays hop `like`'s history on another server holding its layers; its output for the last step. */
  private async replica (like: HopState, exclude: Set<string>): Promise<{ state: HopState, output: Float32Array } | undefined> {
    for (;;) {
      const remote = await this.connector.alternative(like.hop.start, like.hop.end, exclude, like.hop.peerId)
      if (remote == null) return undefined
      try {
        const state = await this.blame(remote, async () => await this.openOn(remote))
        let output: Float32Array = new Float32Array(0)
        for (const step of like.history) output = await this.through([state], step.hidden, step.tokens)
        return { state, output }
      } catch {
        exclude.add(remote.hop.peerId)
      }
    }
  }

  /** Runs an input through a chain of fresh hops, recording their history. */
  private async through (states: HopState[], hidden: Float32Array, tokens: number): Promise<Float32Array> {
    for (const state of states) {
      const input = hidden
      hidden = await this.blame(state, async () => await this.request(state, input, tokens))
      this.record(state, input, tokens)
    }
    return hidden
  }

  /** Runs a call to one server; if it fails, that server is avoided for a while. */
  private async blame<T> (remote: RemoteHop, call: () => Promise<T>): Promise<T> {
    try {
      return await call()
    } catch (err) {
      this.connector.penalize(remote.hop.peerId, err)
      throw err
    }
  }

  /** Opens a session on `remote`; with chains on, `upstream` (the previous hop) may forward into it. */
  private async openOn (remote: RemoteHop, upstream?: string): Promise<HopState> {
    const sessionId = newSessionId()
    const { start, end } = remote.hop
    const chainable = this.policy.chains != null && upstream != null
    const nextHops: NextHop[] = chainable ? [{ peer: upstream, startBlock: start, endBlock: end }] : []
    await remote.channel.request({ type: FrameType.OPEN_SESSION, sessionId, startBlock: start, endBlock: end, maxLength: this.policy.maxLength, nextHops })
    return { ...remote, sessionId, upstream: chainable ? upstream : undefined, position: 0, history: [] }
  }

  private async request (state: HopState, hidden: Float32Array, tokens: number, nextHops: NextHop[] = [], onFlags?: (flags: number) => void): Promise<Float32Array> {
    const dtype = WIRE_DTYPES[this.policy.wireDtype]
    const reply = await state.channel.request({
      type: FrameType.FORWARD,
      sessionId: state.sessionId,
      dtype,
      startBlock: state.hop.start,
      endBlock: state.hop.end,
      position: state.position,
      tokens,
      hiddenSize: this.policy.hiddenSize,
      nextHops,
      payload: encodeTensor(hidden, dtype)
    })
    if (reply.tokens !== tokens || reply.hiddenSize !== this.policy.hiddenSize) {
      throw new SwarmError(`server ${state.hop.peerId} answered ${reply.tokens} × ${reply.hiddenSize} values for ${tokens} × ${this.policy.hiddenSize}`)
    }
    state.position += tokens
    onFlags?.(reply.flags)
    return tensorF32(reply)
  }

  private record (state: HopState, hidden: Float32Array, tokens: number): void {
    if (this.replayable) state.history.push({ hidden, tokens })
  }

  /** Counts the bytes every hop will keep for a step; past the budget, history is dropped. */
  private remember (values: number): void {
    this.historyBytes += values * 4 * this.hops.length
    if (this.replayable && this.historyBytes > this.policy.maxHistoryBytes) {
      this.replayable = false
      for (const h of this.hops) h.history = []
    }
  }

  private agree (a: Float32Array, b: Float32Array): boolean {
    if (a.length !== b.length) return false
    let scale = 0
    let diff = 0
    for (let i = 0; i < a.length; i++) {
      scale = Math.max(scale, Math.abs(b[i]))
      diff = Math.max(diff, Math.abs(a[i] - b[i]))
    }
    return diff <= this.policy.verifyTolerance * Math.max(scale, 1e-6) // NaN fails too
  }

  private banPeer (peerId: string, reason: string): void {
    this.events.banned.push(peerId)
    this.connector.ban(peerId, reason)
  }

  /** Retries `attempt` with backoff until it succeeds or the deadline passes (then the last error, clearly). */
  private async retry<T> (deadline: number, what: string, attempt: () => Promise<T>): Promise<T> {
    let delay = 100
    for (;;) {
      try {
        return await attempt()
      } catch (err) {
        this.policy.signal?.throwIfAborted()
        if (Date.now() + delay > deadline) {
          if ((err as Error)?.name === 'NoRouteError') throw err
          throw new SwarmError(`no working route for ${what} within ${this.policy.failoverTimeoutMs} ms: ${messageOf(err)}`)
        }
        await new Promise(resolve => setTimeout(resolve, delay))
        delay = Math.min(delay * 2, 2000)
      }
    }
  }
}

async function closeOn ({ channel, sessionId }: HopState): Promise<void> {
  await channel.request({ type: FrameType.CLOSE_SESSION, sessionId }, { timeoutMs: 2000 }).catch(() => {})
}

const WIRE_DTYPES = { f32: DType.F32, f16: DType.F16, q8: DType.Q8 } as const

function sameValues (a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false
  return true
}

function messageOf (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
