// Self-healing coverage for servers started with `--blocks auto`: now and then, look at the swarm;
// if some blocks have no server, or far less throughput than the rest, and moving this server's span
// there would raise the swarm's weakest block by a clear margin, move (Petals' rule, but the process
// keeps running: drain, load the new layers, announce).
//
// Against flapping and herds: checks come at randomized intervals; a move that looks worth it is
// re-checked after a random delay against a fresh view of the swarm (by then another server may have
// started moving: a mover withdraws its old span first, which makes the others see that leaving
// their own span would open a gap); of servers with the same span, the one with the smallest peer
// id goes first; a move needs the weakest block to gain MIN_GAIN×; and after a move the server sits
// out a few checks.
import { chooseBlocks, type AnnouncedSpan } from './block-selection.ts'

/** A move must make the weakest block this many times faster (or cover a block nobody holds). */
export const MIN_GAIN = 1.5
/** Checks skipped after a move, so the swarm settles before this server reconsiders. */
const COOLDOWN_CHECKS = 2

export interface Span { start: number, end: number }

export interface MovePlan extends Span {
  /** Why, for logs and `minga status`: e.g. "blocks 3–4 had no server". */
  reason: string
}

/** Per-block summed throughput of `spans`. */
function perBlock (numLayers: number, spans: AnnouncedSpan[]): number[] {
  const sums = new Array<number>(numLayers).fill(0)
  for (const s of spans) for (let b = Math.max(0, s.start); b < Math.min(numLayers, s.end); b++) sums[b] += s.throughput
  return sums
}

function describe (blocks: number[]): string {
  if (blocks.length === 1) return `block ${blocks[0]}`
  const contiguous = blocks.every((b, i) => i === 0 || b === blocks[i - 1] + 1)
  return contiguous ? `blocks ${blocks[0]}–${blocks[blocks.length - 1]}` : `blocks ${blocks.join(', ')}`
}

/**
 * Where this server should move, or undefined to stay. `others` are the other servers' live spans;
 * `self` is this server's span and throughput.
 */
export function planMove (numLayers: number, self: AnnouncedSpan, others: AnnouncedSpan[]): MovePlan | undefined {
  const numBlocks = self.end - self.start
  const now = perBlock(numLayers, [...others, self])
  const currentMin = Math.min(...now)
  const target = chooseBlocks(numLayers, numBlocks, others)
  if (target.start === self.start) return undefined
  const after = perBlock(numLayers, [...others, { ...target, throughput: self.throughput }])
  const newMin = Math.min(...after)
  const worthIt = currentMin === 0 ? newMin > 0 : newMin >= currentMin * MIN_GAIN
  if (!worthIt) return undefined
  const uncovered = now.flatMap((t, b) => t === 0 ? [b] : [])
  const reason = uncovered.length > 0
    ? `${describe(uncovered)} had no server`
    : `the weakest block had ${currentMin.toFixed(1)} tokens/s; moving makes it ${newMin.toFixed(1)}`
  return { start: target.start, end: target.end, reason }
}

export interface RebalancerInit {
  /** Mean time between checks; each interval is randomized ±30%. */
  intervalMs: number
  /** This server's span and throughput now, and the other servers' (a fresh DHT read). */
  view: () => Promise<{ self: AnnouncedSpan & { peerId: string }, others: Array<AnnouncedSpan & { peerId?: string }> }>
  numLayers: number
  /** Performs the move; resolves when the server serves the new span. */
  move: (plan: MovePlan) => Promise<void>
  log: (message: string) => void
  random?: () => number
}

export interface Rebalancer {
  stop (): Promise<void>
}

export function startRebalancer (init: RebalancerInit): Rebalancer {
  const random = init.random ?? Math.random
  let stopped = false
  let timer: ReturnType<typeof setTimeout> | undefined
  let wake: (() => void) | undefined
  let running: Promise<void> = Promise.resolve()
  let cooldown = 0

  const sleep = async (ms: number): Promise<void> => {
    await new Promise<void>(resolve => {
      wake = resolve
      timer = setTimeout(resolve, ms)
      timer.unref?.()
    })
  }

  // A server with the same span and a smaller peer id would make the same move: let it go first,
  // once (if it does not, e.g. it is not on --blocks auto, this server moves at its next check).
  let deferred = false
  const check = async (): Promise<MovePlan | undefined> => {
    const { self, others } = await init.view()
    const plan = planMove(init.numLayers, self, others)
    if (plan === undefined) { deferred = false; return undefined }
    if (!deferred && others.some(o => o.start === self.start && o.end === self.end && o.peerId != null && o.peerId < self.peerId)) {
      deferred = true
      return undefined
    }
    return plan
  }

  const loop = async (): Promise<void> => {
    while (!stopped) {
      await sleep(init.intervalMs * (0.7 + 0.6 * random()))
      if (stopped) return
      if (cooldown > 0) { cooldown--; continue }
      try {
        if (await check() === undefined) continue
        // Worth it: give other servers that saw the same gap a chance to go first, then look again.
        await sleep(init.intervalMs * random())
        if (stopped) return
        const plan = await check()
        if (plan === undefined) continue
        init.log(`rebalancing: moving to blocks [${plan.start}, ${plan.end}) because ${plan.reason}`)
        await init.move(plan)
        deferred = false
        cooldown = COOLDOWN_CHECKS
      } catch (err: any) {
        if (!stopped) init.log(`rebalancing check failed: ${err?.message ?? err}`)
      }
    }
  }
  running = loop()

  return {
    async stop () {
      stopped = true
      clearTimeout(timer)
      wake?.()
      await running
    }
  }
}
