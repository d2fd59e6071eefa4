// How fast a node starts and how much memory it holds: `minga serve` as a real process, timed from
// spawn to its ready line, cold (empty prepared-span cache: convert + quantize) and warm (prepared),
// with the process's peak RSS (VmHWM, worker threads included) read when it is ready.
import { spawn } from 'node:child_process'
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Quantization } from '../src/index.ts'

const CLI = fileURLToPath(new URL('../../cli/bin/minga.mjs', import.meta.url))

export interface StartRun {
  /** Spawn to the `--json` ready line (announced and serving). */
  readyMs: number
  peakRssBytes: number
  rssBytes: number
  /** RSS when ready split: anonymous memory (heap, ORT's packed weights) and file-backed pages (mmapped weights, code). */
  rssAnonBytes: number
  rssFileBytes: number
  /** The serve process's own log lines (stderr). */
  log: string[]
}

export interface NodeStartResult {
  quant: Quantization
  layers: [number, number]
  cold: StartRun
  /** The warm start of median readiness, of `warmReadyMs.length` in a row. */
  warm: StartRun
  warmReadyMs: number[]
  /** Prepared span on disk: graphs and weights files. */
  preparedBytes: number
}

export interface StartOptions { threads: number, cacheMb: number, timeoutMs: number, extraArgs?: string[], wrap?: (argv: string[]) => string[] }

/** Starts `minga serve` on `modelDir` [start, end) and stops it once ready. */
export async function startServe (modelDir: string, blocks: [number, number], quant: Quantization, cacheDir: string, options: StartOptions): Promise<StartRun> {
  const argv = [process.execPath, CLI, 'serve', '--model', modelDir, '--blocks', `${blocks[0]}:${blocks[1]}`, '--quant', quant,
    '--cache-dir', cacheDir, '--cache-mb', String(options.cacheMb), '--throughput', '1', '--threads', String(options.threads), '--json', ...(options.extraArgs ?? [])]
  const [command, ...args] = options.wrap?.(argv) ?? argv
  const started = performance.now()
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MINGA_PARENT_PID: String(process.pid) } })
  const log: string[] = []
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  try {
    const readyMs = await new Promise<number>((resolve, reject) => {
      let stdout = ''
      const timer = setTimeout(() => { reject(new Error(`serve was not ready after ${options.timeoutMs / 1000} s`)) }, options.timeoutMs)
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
        stdout += chunk
        if (stdout.includes('\n')) {
          clearTimeout(timer)
          resolve(performance.now() - started)
        }
      })
      child.on('exit', (code, signal) => {
        clearTimeout(timer)
        reject(new Error(`serve exited (${signal ?? code}) before it was ready: ${stderr.trim().split('\n').slice(-3).join(' | ')}`))
      })
    })
    const status = readFileSync(`/proc/${child.pid}/status`, 'utf8')
    const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024
    return { readyMs, peakRssBytes: field('VmHWM'), rssBytes: field('VmRSS'), rssAnonBytes: field('RssAnon'), rssFileBytes: field('RssFile'), log }
  } finally {
    if (child.exitCode == null) {
      const exited = new Promise(resolve => child.once('exit', resolve))
      child.kill('SIGTERM')
      await exited
    }
    log.push(...stderr.trim().split('\n').filter(l => l !== ''))
  }
}

/**
 * Cold start of [start, end) at `quant`, in a prepared-span cache folder emptied first, then
 * `warmRepeats` warm starts: one start swings by a few tenths of a second on a shared machine.
 */
export async function measureNodeStart (modelDir: string, blocks: [number, number], quant: Quantization, cacheDir: string, options: StartOptions, warmRepeats = 1): Promise<NodeStartResult> {
  rmSync(cacheDir, { recursive: true, force: true })
  const cold = await startServe(modelDir, blocks, quant, cacheDir, options)
  const warm = await medianStart(warmRepeats, async () => await startServe(modelDir, blocks, quant, cacheDir, options))
  return { quant, layers: blocks, cold, warm: warm.median, warmReadyMs: warm.readyMs, preparedBytes: directoryBytes(cacheDir) }
}

/** `repeats` starts in a row: the one of median readiness, and every start's time to ready. */
export async function medianStart (repeats: number, start: () => Promise<StartRun>): Promise<{ median: StartRun, readyMs: number[] }> {
  const runs: StartRun[] = []
  for (let i = 0; i < repeats; i++) runs.push(await start())
  const sorted = [...runs].sort((a, b) => a.readyMs - b.readyMs)
  return { median: sorted[Math.floor((sorted.length - 1) / 2)], readyMs: runs.map(r => r.readyMs) }
}

export function directoryBytes (dir: string): number {
  let total = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    total += entry.isDirectory() ? directoryBytes(path) : statSync(path).size
  }
  return total
}
