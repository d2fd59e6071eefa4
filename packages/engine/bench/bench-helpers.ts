// Small helpers shared by the benchmarks of every package (engine, client, `pnpm bench`).
import { readFileSync } from 'node:fs'
import { availableParallelism, cpus } from 'node:os'
import { argmax } from '../src/sampler.ts'

/** log softmax of one row of logits, in f64 so that KL divergences of close rows stay meaningful. */
export function logSoftmax (row: Float32Array): Float64Array {
  let max = -Infinity
  for (const v of row) if (v > max) max = v
  let sum = 0
  for (const v of row) sum += Math.exp(v - max)
  const logZ = max + Math.log(sum)
  return Float64Array.from(row, v => v - logZ)
}

/** KL(p ‖ q) in nats between the distributions of two rows of logits. */
export function klDivergence (referenceLogits: Float32Array, logits: Float32Array): number {
  const lp = logSoftmax(referenceLogits)
  const lq = logSoftmax(logits)
  let kl = 0
  for (let v = 0; v < lp.length; v++) kl += Math.exp(lp[v]) * (lp[v] - lq[v])
  return kl
}

/**
 * How `logits` compare with `reference` (both [rows, vocab]) at `positions`: in how many the top-1
 * is the same, and the mean KL(reference ‖ logits).
 */
export function agreementWith (reference: Float32Array, logits: Float32Array, vocab: number, positions: number[]): { agree: number, meanKl: number } {
  const row = (values: Float32Array, p: number): Float32Array => values.subarray(p * vocab, (p + 1) * vocab)
  let agree = 0
  let kl = 0
  for (const p of positions) {
    if (argmax(row(logits, p)) === argmax(row(reference, p))) agree++
    kl += klDivergence(row(reference, p), row(logits, p))
  }
  return { agree, meanKl: kl / positions.length }
}

export function median (xs: number[]): number {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** A field of /proc/<pid>/status in bytes: VmHWM is the peak resident set (all threads), VmRSS the current one. */
export function procStatus (field: 'VmHWM' | 'VmRSS', pid: number | 'self' = 'self'): number {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return match == null ? NaN : Number(match[1]) * 1024
  } catch {
    return NaN // the process has exited
  }
}

/** A plain-text table: the first column left-aligned, the others right-aligned. */
export function textTable (header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map(r => (r[i] ?? '').length)))
  const line = (cells: string[]): string => '  ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ')
  return [line(header), '  ' + widths.map(w => '-'.repeat(w)).join('  '), ...rows.map(line)]
}

/** The CPU model, core count and SIMD flags (/proc/cpuinfo): onnxruntime picks its kernels by them, so every figure names them. */
export function cpuInfo (): { model: string, cores: number, flags: string[] } {
  const info = readFileSync('/proc/cpuinfo', 'utf8')
  const all = /^flags\s*:\s*(.*)$/m.exec(info)?.[1].split(' ') ?? []
  const flags = all.filter(f => /^(sse4_2|avx|avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx_vnni|avx512_bf16|amx_\w+)$/.test(f))
  return { model: cpus()[0]?.model ?? 'unknown', cores: availableParallelism(), flags }
}
