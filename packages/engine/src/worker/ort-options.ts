import type { InferenceSession } from 'onnxruntime-node'
import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'

/**
 * Session options for every engine graph. Spinning is off: several workers take turns on few cores.
 * The pool's threads are pinned one per processor, as onnxruntime itself does when it picks the
 * thread count: unpinned, a node that resumed after idling (as every server of a chain does between
 * its turns) ran its pool thread on the caller's core for a while, 8 layers in 18–19 ms after 80 ms
 * idle instead of 14 pinned (`pnpm bench:idle`).
 */
export function sessionOptions (threads?: number): InferenceSession.SessionOptions {
  const intraOpNumThreads = threads ?? availableParallelism()
  const affinities = poolAffinities(intraOpNumThreads, allowedProcessors())
  return {
    intraOpNumThreads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    extra: {
      session: {
        ...(affinities == null ? {} : { intra_op_thread_affinities: affinities }),
        intra_op: { allow_spinning: '0' },
        inter_op: { allow_spinning: '0' }
      }
    }
  }
}

/** The processors (0-based) this process may run on, from /proc/self/status on Linux; undefined where unknown. */
export function allowedProcessors (status?: string): number[] | undefined {
  let text = status
  if (text == null) {
    try { text = readFileSync('/proc/self/status', 'utf8') } catch { return undefined }
  }
  const list = /^Cpus_allowed_list:\s*(\S+)\s*$/m.exec(text)?.[1]
  if (list == null) return undefined
  const processors: number[] = []
  for (const range of list.split(',')) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(range)
    if (match == null) return undefined
    const [from, to] = [Number(match[1]), Number(match[2] ?? match[1])]
    for (let p = from; p <= to; p++) processors.push(p)
  }
  return processors
}

/**
 * onnxruntime's `intra_op_thread_affinities` for a pool of `threads`: its threads-1 own threads on
 * the allowed processors after the first, which is left to the caller's thread (ORT never pins that
 * one). Ids are 1-based. None when the threads outnumber the processors: there a pinned thread
 * could only wait for its core.
 */
export function poolAffinities (threads: number, processors: number[] | undefined): string | undefined {
  if (processors == null || threads < 2 || threads > processors.length) return undefined
  return processors.slice(1, threads).map(p => String(p + 1)).join(';')
}
