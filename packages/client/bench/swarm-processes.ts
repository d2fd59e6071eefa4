// Shared by the swarm benchmarks: a generated tokenizer for the TinyLlama-shaped checkpoint, and a
// loopback swarm of real processes (a bootstrap node and one `minga serve` per span), started and
// stopped the way an operator would.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { Quantization } from '@minga/engine'

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const CLI = fileURLToPath(new URL('../../cli/src/bin.ts', import.meta.url))
const log = (msg: string): void => { process.stderr.write(`${msg}\n`) }

/** What a swarm serves: a model directory at a quantization, split into spans. */
export interface SwarmModel { dir: string, quant: Quantization, spans: Array<[number, number]> }
export interface ProcOptions { verbose: boolean, readyTimeoutMs: number }
// The TinyLlama checkpoint has no tokenizer, but the local model and the client both load one
// (loadTokenizer runs even when the prompt is given as ids). Write a minimal valid one: BPE without
// merges over a generated 32000-word vocabulary ("w3" … "w31999"), ids 0–2 the usual specials.

export function ensureTokenizer (dir: string, vocabSize: number): boolean {
  const tokenizerPath = join(dir, 'tokenizer.json')
  const configPath = join(dir, 'tokenizer_config.json')
  if (existsSync(tokenizerPath) && existsSync(configPath)) {
    try {
      const vocab = JSON.parse(readFileSync(tokenizerPath, 'utf8'))?.model?.vocab as Record<string, number> | undefined
      if (vocab != null && Object.keys(vocab).length === vocabSize) return false
    } catch {}
  }
  const specials = ['<unk>', '<s>', '</s>']
  const vocab: Record<string, number> = {}
  specials.forEach((token, id) => { vocab[token] = id })
  for (let id = specials.length; id < vocabSize; id++) vocab[`▁w${id}`] = id
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [{ type: 'WhitespaceSplit' }, { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: false }]
    },
    post_processor: null,
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: false },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: false, ignore_merges: true, vocab, merges: []
    }
  }
  const tokenizerConfig = {
    tokenizer_class: 'LlamaTokenizerFast', add_bos_token: true, add_eos_token: false,
    bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', model_max_length: 2048
  }
  const writeAtomic = (path: string, value: unknown): void => {
    writeFileSync(`${path}.${process.pid}.tmp`, JSON.stringify(value) + '\n')
    renameSync(`${path}.${process.pid}.tmp`, path)
  }
  writeAtomic(configPath, tokenizerConfig)
  writeAtomic(tokenizerPath, tokenizer)
  return true
}



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
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
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
