// What a span will take in memory, what the machine has, and a clear refusal (with what would fit)
// before loading something that does not fit: an old laptop should not find out by swapping to death.
import { existsSync, readFileSync } from 'node:fs'
import { freemem } from 'node:os'
import { preparedSpanBytes, type ModelConfig, type Quantization } from '@minga/engine'
import { ServerConfigError } from './errors.ts'

/** Node, libp2p and onnxruntime with nothing loaded, measured (RSS of a node with a tiny span). */
export const RUNTIME_BASELINE_BYTES = 200 * 2 ** 20

export interface SpanMemory { weights: number, cache: number, runtime: number, total: number }

export function spanMemory (config: ModelConfig, quant: Quantization, layers: number, cacheBytes: number): SpanMemory {
  const weights = preparedSpanBytes(config, quant, layers)
  return { weights, cache: cacheBytes, runtime: RUNTIME_BASELINE_BYTES, total: weights + cacheBytes + RUNTIME_BASELINE_BYTES }
}

/** Memory this process may still use, counting what it already holds: MemAvailable and any cgroup limit. */
export function availableMemory (): { bytes: number, source: string } {
  const own = process.memoryUsage.rss()
  const meminfo = /^MemAvailable:\s+(\d+) kB/m.exec(readText('/proc/meminfo') ?? '')
  let best = meminfo != null
    ? { bytes: Number(meminfo[1]) * 1024 + own, source: 'MemAvailable in /proc/meminfo' }
    : { bytes: freemem() + own, source: 'free memory' }
  const cgroup = cgroupRoom()
  if (cgroup != null && cgroup.bytes + own < best.bytes) best = { bytes: cgroup.bytes + own, source: cgroup.source }
  return best
}

/** Throws a ServerConfigError naming what would fit when the span does not fit in `available` bytes. */
export function checkSpanFits (config: ModelConfig, quant: Quantization, blocks: { start: number, end: number }, cacheBytes: number, available: { bytes: number, source: string }): SpanMemory {
  const layers = blocks.end - blocks.start
  const need = spanMemory(config, quant, layers, cacheBytes)
  if (need.total <= available.bytes) return need
  const room = available.bytes - cacheBytes - RUNTIME_BASELINE_BYTES
  const fitting = (q: Quantization): number => Math.min(config.numLayers, Math.max(0, Math.floor(room / preparedSpanBytes(config, q, 1))))
  const hints: string[] = []
  const here = fitting(quant)
  if (here > 0) hints.push(`--blocks ${blocks.start}:${Math.min(config.numLayers, blocks.start + here)} (${here} layer${here === 1 ? '' : 's'} at ${quant})`)
  if (quant !== 'int4' && fitting('int4') > here) hints.push(`--quant int4 (${Math.min(layers, fitting('int4'))} of these ${layers} layers fit)`)
  if (cacheBytes > 64 * 2 ** 20) hints.push('a smaller --cache-mb')
  throw new ServerConfigError(`not enough memory for blocks [${blocks.start}, ${blocks.end}) at ${quant}: they need ≈ ${describe(need)}, ` +
    `but only ${mib(available.bytes)} are available (${available.source}); ${hints.length > 0 ? `try ${hints.join(', or ')}` : 'this machine cannot host a layer of this model'}`)
}

export function describe (m: SpanMemory): string {
  return `${mib(m.total)} (weights ${mib(m.weights)} + KV cache up to ${mib(m.cache)} + runtime ≈ ${mib(m.runtime)})`
}

export function mib (bytes: number): string {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`
  return `${(bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 1 : 0)} MiB`
}

/** Room left under this process's cgroup memory limit (v2 memory.max or v1 memory.limit_in_bytes), if one applies. */
function cgroupRoom (): { bytes: number, source: string } | undefined {
  const lines = (readText('/proc/self/cgroup') ?? '').split('\n')
  const v2 = lines.find(l => l.startsWith('0::'))
  if (v2 != null) {
    const dir = `/sys/fs/cgroup${v2.slice(3)}`
    const room = limitRoom(`${dir}/memory.max`, `${dir}/memory.current`, `${dir}/memory.stat`, { inactive: 'inactive_file', active: 'active_file', mapped: 'file_mapped', dirty: 'file_dirty' })
    if (room != null) return { bytes: room, source: `cgroup v2 memory.max in ${dir}` }
  }
  const v1 = lines.map(l => l.split(':')).find(parts => parts[1]?.split(',').includes('memory'))
  if (v1 != null) {
    const dir = `/sys/fs/cgroup/memory${v1[2] === '/' ? '' : v1[2]}`
    const room = limitRoom(`${dir}/memory.limit_in_bytes`, `${dir}/memory.usage_in_bytes`, `${dir}/memory.stat`, { inactive: 'total_inactive_file', active: 'total_active_file', mapped: 'total_mapped_file', dirty: 'total_dirty' })
    if (room != null) return { bytes: room, source: `cgroup v1 memory.limit_in_bytes in ${dir}` }
  }
  return undefined
}

/**
 * Usage counts the page cache. What of it is neither mapped nor dirty (the checkpoint just hashed or
 * read, active or not) is given back under pressure, so it is room too.
 */
function limitRoom (limitFile: string, usageFile: string, statFile: string, keys: { inactive: string, active: string, mapped: string, dirty: string }): number | undefined {
  const limit = Number(readText(limitFile)?.trim())
  const stat = readText(statFile) ?? ''
  const value = (key: string): number => Number(new RegExp(`^${key} (\\d+)$`, 'm').exec(stat)?.[1] ?? 0)
  const reclaimable = Math.max(0, value(keys.inactive) + value(keys.active) - value(keys.mapped) - value(keys.dirty))
  const usage = Number(readText(usageFile)?.trim()) - reclaimable
  // "max" (v2) or a huge number (v1) mean no limit
  if (!Number.isFinite(limit) || limit >= 2 ** 60 || !Number.isFinite(usage)) return undefined
  return Math.max(0, limit - usage)
}

function readText (path: string): string | undefined {
  try {
    return existsSync(path) ? readFileSync(path, 'utf8') : undefined
  } catch {
    return undefined
  }
}
