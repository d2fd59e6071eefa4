// Shared by the swarm benchmarks: a generated tokenizer for the TinyLlama-shaped checkpoint, and a
// loopback swarm of real processes (a bootstrap node and one `minga serve` per span), started and
// stopped the way an operator would.
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { Quantization } from '@minga/engine'

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const CLI = fileURLToPath(new URL('../../cli/bin/minga.mjs', import.meta.url))
const log = (msg: string): void => { process.stderr.write(`${msg}\n`) }

/** What a swarm serves: a model directory at a quantization, split into spans. */
export interface SwarmModel { dir: string, quant: Quantization, spans: Array<[number, number]> }
export interface ProcOptions { verbose: boolean, readyTimeoutMs: number }



export interface Proc { name: string, child: ChildProcess, stderr: string[], ready: Promise<any>, exited: Promise<number | null> }

const live = new Set<ChildProcess>()
process.on('exit', () => { for (const c of live) c.kill('SIGKILL') })
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    for (const c of live) c.kill('SIGKILL')
    process.exit(130)
  })
}

export function startProc (name: string, args: string[], verbose: boolean, timeoutMs: number): Proc {
  // MINGA_PARENT_PID: the CLI stops by itself if this process dies without stopping it
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MINGA_PARENT_PID: String(process.pid) }
  })
  live.add(child)
  const stderr: string[] = []
  createInterface({ input: child.stderr! }).on('line', line => {
    stderr.push(line)
    if (stderr.length > 40) stderr.shift()
    if (verbose) log(`  [${name}] ${line}`)
  })
  const exited = new Promise<number | null>(resolve => {
    child.on('exit', code => { live.delete(child); resolve(code) })
  })
  const ready = new Promise<any>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`${name} not ready within ${timeoutMs / 1000} s:\n${stderr.join('\n')}`)) }, timeoutMs)
    createInterface({ input: child.stdout! }).on('line', line => {
      try {
        const value = JSON.parse(line)
        clearTimeout(timer)
        resolve(value)
      } catch {
        if (verbose) log(`  [${name}] stdout: ${line}`)
      }
    })
    void exited.then(code => {
      clearTimeout(timer)
      reject(new Error(`${name} exited (code ${code}) before it was ready:\n${stderr.join('\n')}`))
    })
  })
  ready.catch(() => {})
  return { name, child, stderr, ready, exited }
}

/**
 * SIGTERM (a server then withdraws its span and drains), a second SIGTERM after `graceMs` (stop at
 * once), SIGKILL 5 s later. Returns which one ended it.
 */
export async function stopProc (proc: Proc, graceMs = 15_000): Promise<'exited' | 'second SIGTERM' | 'killed'> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return 'exited'
  const within = async (ms: number): Promise<boolean> => {
    let timer: ReturnType<typeof setTimeout> | undefined
    const done = await Promise.race([proc.exited.then(() => true), new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(false), ms) })])
    clearTimeout(timer)
    return done
  }
  proc.child.kill('SIGTERM')
  if (await within(graceMs)) return 'exited'
  proc.child.kill('SIGTERM')
  if (await within(5000)) return 'second SIGTERM'
  proc.child.kill('SIGKILL')
  await proc.exited
  return 'killed'
}

export interface Swarm { bootstrap: string, procs: Proc[], startMs: number }

export async function startSwarm (spec: SwarmModel, threads: number, opts: ProcOptions, extraArgs: string[] = []): Promise<Swarm> {
  const started = performance.now()
  const boot = startProc('bootstrap', ['bootstrap', '--json'], opts.verbose, opts.readyTimeoutMs)
  const procs = [boot]
  try {
    const bootAddr: string = (await boot.ready).addrs[0]
    for (const [start, end] of spec.spans) {
      procs.push(startProc(`serve ${start}:${end}`, [
        'serve', '--model', spec.dir, '--blocks', `${start}:${end}`, '--bootstrap', bootAddr, '--json',
        '--quant', spec.quant, '--threads', String(threads), ...extraArgs
      ], opts.verbose, opts.readyTimeoutMs))
    }
    await Promise.all(procs.map(async p => await p.ready))
    return { bootstrap: bootAddr, procs, startMs: performance.now() - started }
  } catch (err) {
    await Promise.all(procs.map(async p => await stopProc(p, 2000)))
    throw err
  }
}

export async function stopSwarm (swarm: Swarm): Promise<string[]> {
  // One server at a time, the bootstrap node last: each withdraws its span through the DHT, which
  // takes about a second while the other nodes are up (three stopped at once took over 10 s).
  const results: string[] = []
  for (const p of [...swarm.procs.slice(1), swarm.procs[0]]) results.push(`${p.name}: ${await stopProc(p)}`)
  return results
}
