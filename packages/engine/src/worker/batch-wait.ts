// How long a batch waits for companions. A caller's next request comes one "gap" after its last
// reply: the time its client, and the rest of its route, took to send it. That gap repeats from step
// to step, so each caller's next arrival is predicted from its own last gap, and a batch waits only
// for callers due soon. Sessions of one client then merge into one batch and stay merged, while a
// slow or far session, or one that has stopped, costs the others nothing.

/** A caller between requests, as the batch wait sees it (times in ms on one clock). */
export interface Pacing {
  /** When its last request was answered. */
  repliedAt: number
  /** From its last-but-one reply to its last request's arrival; unknown before its second request. */
  gap?: number
}

/** The shortest bound of a wait, so that steps of a tiny span still meet (its runs take well under a ms). */
export const MIN_WAIT_BOUND_MS = 2

/** A caller silent this long is forgotten (a finished generation, a closed session). */
const FORGET_AFTER_MS = 60_000

/**
 * How far past its due time a caller is still waited for. Jitter grows with the gap; and a caller
 * left out runs in a batch of its own later, about one more run, so a quarter run is worth risking.
 */
function lateness (gap: number, lastRunMs: number): number {
  return 1 + gap / 4 + lastRunMs / 4
}

/**
 * Until when a batch that began gathering at `since` waits for `others` (callers not in it, between
 * requests), on the same clock: until each one due within the bound is a little past due. Waiting w
 * ms for k more requests pays while w is below what a batch of their own would cost, about one
 * batch's run: so the bound is the last batch's run time (at least MIN_WAIT_BOUND_MS), and never
 * over `capMs`. Returns `since` when nobody is worth waiting for.
 */
export function waitUntil (others: Iterable<Pacing>, since: number, lastRunMs: number, capMs: number): number {
  const end = since + Math.min(capMs, Math.max(MIN_WAIT_BOUND_MS, lastRunMs))
  let until = since
  for (const { repliedAt, gap } of others) {
    if (gap == null) continue
    const due = repliedAt + gap
    if (due <= end) until = Math.max(until, due + lateness(gap, lastRunMs))
  }
  return Math.min(until, end)
}

/** Absolute time (ms) to stamp a request with: comparable across threads, unlike performance.now(). */
export function sentNow (): number {
  return performance.timeOrigin + performance.now()
}

/** The pacing of a worker's callers, and its batches' run times: what waitUntil needs. */
export class BatchPacer<K> {
  private readonly callers = new Map<K, Pacing>()
  private lastRunMs = 0

  /** `capMs`: the longest wait (0: never wait). */
  constructor (private readonly capMs: number) {}

  /** A request of `caller`, stamped `sentAt` (sentNow()) by its sender, is in a batch that starts now. */
  arrived (caller: K, sentAt: number | undefined): void {
    const pacing = this.callers.get(caller)
    if (pacing != null && sentAt != null) pacing.gap = Math.max(0, sentAt - performance.timeOrigin - pacing.repliedAt)
  }

  /** A batch that began running at `started` (performance.now()) has just answered `callers`. */
  answered (callers: Iterable<K>, started: number): void {
    const now = performance.now()
    this.lastRunMs = now - started
    for (const caller of callers) {
      const pacing = this.callers.get(caller)
      if (pacing != null) pacing.repliedAt = now
      else this.callers.set(caller, { repliedAt: now })
    }
  }

  forget (caller: K): void {
    this.callers.delete(caller)
  }

  /** Until when a batch of `inBatch`'s requests, gathering since `since`, waits for the others that `canJoin`. */
  waitUntil (inBatch: Set<K>, since: number, canJoin: (caller: K) => boolean = () => true): number {
    if (this.capMs === 0) return since
    const others: Pacing[] = []
    for (const [caller, pacing] of this.callers) {
      if (since - pacing.repliedAt > FORGET_AFTER_MS) this.callers.delete(caller)
      else if (!inBatch.has(caller) && canJoin(caller)) others.push(pacing)
    }
    return waitUntil(others, since, this.lastRunMs, this.capMs)
  }
}
