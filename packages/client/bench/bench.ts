// `pnpm bench`: one table comparing, side by side in one run, the local engine (f32, int8, int4)
// with llama.cpp (node-llama-cpp) on the same random TinyLlama-1.1B-shaped weights (F16, Q8_0, Q4_0
// GGUF files written from minga's checkpoint), 1-node and 3-node loopback swarms, and 1 and 8
// concurrent sessions on one server (beside llama.cpp's 1 and 8 sequences); against the machine's
// measured read bandwidth.
//
//   pnpm bench [--json] [--tokens 32] [--prompt-tokens 128] [--repeats 3] [--threads 2] [--sessions 8]
//
// See README.md next to this file.
import '@minga/p2p/polyfill'
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { availableParallelism, cpus, loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { argmax, loadModelConfig, seededRandom, type ModelConfig, type Quantization } from '@minga/engine'
import { measureReadBandwidth, type Bandwidth } from '../../engine/bench/bandwidth.ts'
import { median, procStatus, textTable } from '../../engine/bench/bench-helpers.ts'
import { ensureGguf, GGUF_FILE_TYPES, type GgufFileType } from '../../engine/bench/checkpoint-to-gguf.ts'
import { ensureNodeLlamaCpp } from '../../engine/bench/llama-cpp.ts'
import { defaultCheckpointDir, ensureRandomCheckpoint, ensureTokenizer } from '../../engine/bench/random-checkpoint.ts'
import type { RunnerInit, RunnerRequest, RunnerRun } from './bench-runner.ts'
import { startSwarm, stopSwarm, type Swarm, type SwarmModel } from './swarm-processes.ts'

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const RUNNER = fileURLToPath(new URL('./bench-runner.ts', import.meta.url))
const STORIES = fileURLToPath(new URL('../../../../shared/models/stories260k', import.meta.url))
/** "Once upon a time" in stories260k's tokenizer, with BOS. */
const STORIES_PROMPT = [1, 403, 407, 261, 378]
const log = (msg: string): void => { process.stderr.write(`${msg}\n`) }
const round = (x: number, digits = 2): number => Number(x.toFixed(digits))

interface Options {
  json: boolean
  tokens: number
  promptTokens: number
  repeats: number
  warmupRuns: number
  threads: number
  sessions: number
  llama: boolean
  phases: string[]
  swarms: string[]
  verbose: boolean
  readyTimeoutMs: number
}

const USAGE = `usage: pnpm bench [options]
  --tokens N          new tokens per generation, greedy (default 32; decode tok/s counts the steps after the first)
  --prompt-tokens N   prompt length: prefill tok/s and time to first token (default 128)
  --repeats R         measured runs of every row, alternating (default 3); the table shows medians
  --warmup-runs W     untimed full-length runs of every row first (default 1)
  --threads T         threads of every engine, llama.cpp and server (default 2)
  --sessions S        concurrent sessions of the sessions row, and llama.cpp's sequences beside it (default 8)
  --no-llama          skip llama.cpp (no install, no GGUF files)
  --phases LIST       f32,int8,int4 (default all)
  --swarms LIST       the phases that also run the swarm and sessions rows: int8,int4 (default both)
  --json              one JSON object on stdout instead of the table
  --verbose           the servers' logs on stderr
  --ready-timeout S   per process (default 900)`

function parseOptions (): Options {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean', default: false },
      tokens: { type: 'string', default: '32' },
      'prompt-tokens': { type: 'string', default: '128' },
      repeats: { type: 'string', default: '3' },
      'warmup-runs': { type: 'string', default: '1' },
      threads: { type: 'string', default: '2' },
      sessions: { type: 'string', default: '8' },
      'no-llama': { type: 'boolean', default: false },
      phases: { type: 'string', default: 'f32,int8,int4' },
      swarms: { type: 'string', default: 'int8,int4' },
      verbose: { type: 'boolean', default: false },
      'ready-timeout': { type: 'string', default: '900' },
      help: { type: 'boolean', default: false }
    }
  })
  if (values.help === true) {
    process.stdout.write(USAGE + '\n')
    process.exit(0)
  }
  const int = (name: keyof typeof values, min = 1): number => {
    const n = Number(values[name])
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got ${String(values[name])}\n${USAGE}`)
    return n
  }
  return {
    json: values.json!,
    tokens: int('tokens', 2),
    promptTokens: int('prompt-tokens'),
    repeats: int('repeats'),
    warmupRuns: int('warmup-runs', 0),
    threads: int('threads'),
    sessions: int('sessions'),
    llama: !values['no-llama'],
    phases: values.phases!.split(',').map(p => p.trim()).filter(p => p !== ''),
    swarms: values.swarms!.split(',').map(p => p.trim()).filter(p => p !== ''),
    verbose: values.verbose!,
    readyTimeoutMs: int('ready-timeout') * 1000
  }
}

// ---------------------------------------------------------------------------------------------
// Runner processes: one configuration each, driven over IPC

interface RunnerProc { name: string, child: ChildProcess, stderr: string[], loadPeakRssBytes: number }

const runners = new Set<ChildProcess>()
process.on('exit', () => { for (const c of runners) c.kill('SIGKILL') })

function reply<T> (runner: RunnerProc, key: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (msg: any): void => {
      if (msg?.error != null || key in msg) {
        runner.child.off('message', onMessage)
        runner.child.off('exit', onExit)
        if (msg.error != null) reject(new Error(`${runner.name}: ${msg.error}`))
        else resolve(msg[key] as T)
      }
    }
    const onExit = (code: number | null): void => {
      runner.child.off('message', onMessage)
      reject(new Error(`${runner.name} exited (code ${code}):\n${runner.stderr.join('\n')}`))
    }
    runner.child.on('message', onMessage)
    runner.child.once('exit', onExit)
  })
}

async function startRunner (name: string, init: RunnerInit, opts: Options): Promise<RunnerProc> {
  const child = spawn(process.execPath, ['--import', 'tsx', RUNNER, JSON.stringify(init)], { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] })
  runners.add(child)
  child.on('exit', () => { runners.delete(child) })
  const runner: RunnerProc = { name, child, stderr: [], loadPeakRssBytes: NaN }
  child.stderr!.setEncoding('utf8')
  child.stderr!.on('data', (chunk: string) => {
    for (const line of chunk.split('\n').filter(l => l !== '')) {
      runner.stderr.push(line)
      if (runner.stderr.length > 30) runner.stderr.shift()
      if (opts.verbose) log(`  [${name}] ${line}`)
    }
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.readyTimeoutMs)
  try {
    runner.loadPeakRssBytes = await reply<number>(runner, 'peakRssBytes')
  } finally {
    clearTimeout(timer)
  }
  return runner
}

async function run (runner: RunnerProc, prompts: number[][], newTokens: number): Promise<RunnerRun> {
  const done = reply<RunnerRun>(runner, 'run')
  runner.child.send({ op: 'run', prompts, newTokens } satisfies RunnerRequest)
  return await done
}

async function probabilities (runner: RunnerProc, prompt: number[], vocabSize: number): Promise<Float32Array> {
  const done = reply<number[]>(runner, 'probabilities')
  runner.child.send({ op: 'probabilities', prompt, vocabSize } satisfies RunnerRequest)
  return Float32Array.from(await done)
}

async function closeRunner (runner: RunnerProc): Promise<void> {
  if (runner.child.exitCode !== null) return
  const exited = new Promise(resolve => runner.child.once('exit', resolve))
  runner.child.send({ op: 'close' } satisfies RunnerRequest)
  const timer = setTimeout(() => runner.child.kill('SIGKILL'), 30_000)
  await exited
  clearTimeout(timer)
}

// ---------------------------------------------------------------------------------------------
// Rows

/** Bytes of weights one decode step reads per token: every layer's linear weights and the LM head. */
interface WeightBytes { layers: number, head: number }

const BYTES_PER_WEIGHT: Record<Quantization | GgufFileType, number> = {
  none: 4,
  int8: 1, // per row (layers and head): int8 values; a row's f32 scale and zero point are ~0.1 % more
  int4: 0.5 + 4 / 128 + 0.5 / 128, // MatMulNBits blocks of 128: 4-bit values, an f32 scale and a 4-bit zero point
  F16: 2,
  Q8_0: 34 / 32, // GGML blocks of 32: int8 values and an f16 scale
  Q4_0: 18 / 32 // 4-bit values and an f16 scale
}

function weightBytes (config: ModelConfig, layers: Quantization | GgufFileType, head: Quantization | GgufFileType): WeightBytes {
  const h = config.hiddenSize
  const kv = config.numKvHeads * config.headDim
  const perLayer = 2 * h * config.numHeads * config.headDim + 2 * h * kv + 3 * h * config.intermediateSize
  return { layers: config.numLayers * perLayer * BYTES_PER_WEIGHT[layers], head: config.vocabSize * h * BYTES_PER_WEIGHT[head] }
}

interface Row {
  name: string
  /** What the row is compared with, side by side (same phase, alternating). */
  anchor?: string
  sessions: number
  weights: WeightBytes
  runs: RunnerRun[]
  /** Peak RSS of every process taking part, bytes. */
  peakRss: Record<string, number>
  execute: () => Promise<RunnerRun>
}

interface RowSummary {
  name: string
  sessions: number
  /** Median over the repeats of the decode tok/s (all sessions together). */
  decodeTokensPerSecond: number
  prefillTokensPerSecond: number
  timeToFirstTokenMs: number
  peakRssBytes: Record<string, number>
  weightBytesPerToken: number
  /** decode tok/s × weight bytes per token ÷ read bandwidth */
  fractionOfBound: number
  /** Median of (this row's decode tok/s ÷ its anchor's) over runs made back to back. */
  vsAnchor?: { anchor: string, decodeRatio: number, prefillRatio: number }
  runs: Array<{ decodeTokensPerSecond: number, prefillTokensPerSecond: number, timeToFirstTokenMs: number }>
  sameIdsAs?: { row: string, same: boolean }
  /** Swarm rows: hops of each measured run's route (every session's, for the sessions row). */
  hops?: number[]
}

function perRun (r: RunnerRun, promptTokens: number): RowSummary['runs'][number] {
  const ttft = median(r.sessions.map(s => s.prefillMs))
  return {
    decodeTokensPerSecond: r.sessions.reduce((a, s) => a + s.tokensPerSecond, 0),
    prefillTokensPerSecond: promptTokens / (ttft / 1000),
    timeToFirstTokenMs: ttft
  }
}

function summarize (row: Row, rows: Row[], promptTokens: number, bandwidth: Bandwidth): RowSummary {
  const runs = row.runs.map(r => perRun(r, promptTokens))
  const decode = median(runs.map(r => r.decodeTokensPerSecond))
  const bytes = row.weights.layers + row.weights.head
  const summary: RowSummary = {
    name: row.name,
    sessions: row.sessions,
    decodeTokensPerSecond: round(decode),
    prefillTokensPerSecond: round(median(runs.map(r => r.prefillTokensPerSecond))),
    timeToFirstTokenMs: round(median(runs.map(r => r.timeToFirstTokenMs)), 1),
    peakRssBytes: row.peakRss,
    weightBytesPerToken: Math.round(bytes),
    fractionOfBound: round((decode * bytes) / bandwidth.bytesPerSecond, 3),
    hops: row.runs[0]?.sessions[0]?.hops != null ? row.runs.flatMap(r => r.sessions.map(x => x.hops!)) : undefined,
    runs: runs.map(r => ({ decodeTokensPerSecond: round(r.decodeTokensPerSecond), prefillTokensPerSecond: round(r.prefillTokensPerSecond), timeToFirstTokenMs: round(r.timeToFirstTokenMs, 1) }))
  }
  const anchor = rows.find(r => r.name === row.anchor)
  if (anchor != null) {
    const theirs = anchor.runs.map(r => perRun(r, promptTokens))
    summary.vsAnchor = {
      anchor: anchor.name,
      decodeRatio: round(median(runs.map((r, i) => r.decodeTokensPerSecond / theirs[i].decodeTokensPerSecond)), 3),
      prefillRatio: round(median(runs.map((r, i) => r.prefillTokensPerSecond / theirs[i].prefillTokensPerSecond)), 3)
    }
    if (row.sessions === anchor.sessions) {
      summary.sameIdsAs = { row: anchor.name, same: JSON.stringify(row.runs[0].sessions[0].ids) === JSON.stringify(anchor.runs[0].sessions[0].ids) }
    }
  }
  return summary
}

/** Warm-up runs, then `repeats` rounds running every row once, in order: each round compares them under the same load. */
async function alternate (rows: Row[], opts: Options, phase: string): Promise<void> {
  for (let i = 0; i < opts.warmupRuns; i++) for (const row of rows) await row.execute()
  for (let i = 0; i < opts.repeats; i++) {
    // Each repeat starts one row later, so that no row always runs first or always follows the
    // 8-session row: this machine's speed drifts within a repeat too.
    const order = rows.map((_, k) => (i + k) % rows.length)
    for (const k of order) rows[k].runs.push(await rows[k].execute())
    const line = rows.map(row => `${row.name} ${perRun(row.runs[row.runs.length - 1], opts.promptTokens).decodeTokensPerSecond.toFixed(1)}`)
    log(`  ${phase} repeat ${i + 1}/${opts.repeats} (from ${rows[order[0]].name}): ${line.join(', ')} tok/s (load ${loadavg()[0].toFixed(2)})`)
  }
}

/**
 * The GGUF path checked on real weights: stories260k (F16: its FFN width 172 is no multiple of 32,
 * the Q8_0/Q4_0 block) through llama.cpp against minga f32, greedy ids and next-token probabilities.
 */
async function storiesSanity (llamaEntry: string, opts: Options): Promise<StoriesSanity> {
  const config = loadModelConfig(STORIES)
  const gguf = ensureGguf(STORIES, join(dirname(defaultCheckpointDir()), 'stories260k-gguf'), 'F16')
  const minga = await startRunner('stories minga f32', { kind: 'minga', modelDir: STORIES, quant: 'none', headQuant: 'none', threads: 1 }, opts)
  try {
    const llama = await startRunner('stories llama.cpp F16', { kind: 'llama', entry: llamaEntry, gguf: gguf.path, threads: 1, contextSize: 128 }, opts)
    try {
      const tokens = 32
      const [a, b] = [await run(minga, [STORIES_PROMPT], tokens), await run(llama, [STORIES_PROMPT], tokens)]
      const [p, q] = [await probabilities(minga, STORIES_PROMPT, config.vocabSize), await probabilities(llama, STORIES_PROMPT, config.vocabSize)]
      let diff = 0
      for (let v = 0; v < p.length; v++) diff = Math.max(diff, Math.abs(p[v] - q[v]))
      return { sameGreedyIds: JSON.stringify(a.sessions[0].ids) === JSON.stringify(b.sessions[0].ids), tokens, top1Same: argmax(p) === argmax(q), maxAbsProbabilityDiff: diff, maxProbability: Math.max(...p) }
    } finally {
      await closeRunner(llama)
    }
  } finally {
    await closeRunner(minga)
  }
}

/** A server on a machine this busy may miss its 15 s DHT join ("no peer joined the DHT"): try once more. */
async function startSwarmRetrying (model: SwarmModel, threads: number, opts: Options): Promise<Swarm> {
  const procOptions = { verbose: opts.verbose, readyTimeoutMs: opts.readyTimeoutMs }
  try {
    return await startSwarm(model, threads, procOptions)
  } catch (err) {
    log(`  the swarm did not start (${(err as Error).message.split('\n').slice(0, 2).join(' ')}); once more`)
    return await startSwarm(model, threads, procOptions)
  }
}

// ---------------------------------------------------------------------------------------------
// Main

interface Sanity { against: string, prompt: number, top1Same: boolean, maxAbsProbabilityDiff: number, maxProbability: number }

/** stories260k (real weights) through llama.cpp from the F16 GGUF minga writes, against minga f32. */
interface StoriesSanity { sameGreedyIds: boolean, tokens: number, top1Same: boolean, maxAbsProbabilityDiff: number, maxProbability: number }

function cpuFlags (): { model: string, flags: string[] } {
  const info = readFileSync('/proc/cpuinfo', 'utf8')
  const flags = /^flags\s*:\s*(.*)$/m.exec(info)?.[1].split(' ') ?? []
  const simd = flags.filter(f => /^(sse4_2|avx|avx2|fma|f16c|avx512.*|avx_vnni|amx.*)$/.test(f))
  return { model: cpus()[0]?.model ?? 'unknown', flags: simd }
}

async function main (): Promise<void> {
  const opts = parseOptions()
  const startedAt = new Date().toISOString()
  const loadBefore = loadavg()
  const cpu = cpuFlags()
  log(`minga bench: ${cpu.model}, ${availableParallelism()} cores, load average ${loadBefore.map(x => x.toFixed(2)).join(' ')}`)

  const checkpoint = ensureRandomCheckpoint(defaultCheckpointDir(), REPO_ROOT)
  if (!checkpoint.reused) log(`built the TinyLlama-shaped checkpoint in ${checkpoint.dir}`)
  const config = loadModelConfig(checkpoint.dir)
  ensureTokenizer(checkpoint.dir, config.vocabSize)
  const random = seededRandom(11)
  const randomIds = (n: number): number[] => Array.from({ length: n }, () => 3 + Math.floor(random() * (config.vocabSize - 3)))
  const prompt = randomIds(opts.promptTokens)
  const concurrentPrompts = Array.from({ length: opts.sessions }, () => randomIds(opts.promptTokens))
  const sanityPrompts = [randomIds(4), randomIds(16), randomIds(64)]

  const ggufs = new Map<GgufFileType, string>()
  let llamaEntry = ''
  if (opts.llama) {
    llamaEntry = ensureNodeLlamaCpp(dirname(checkpoint.dir), log)
    for (const type of GGUF_FILE_TYPES) {
      const g = ensureGguf(checkpoint.dir, `${checkpoint.dir}-gguf`, type, log)
      if (!g.reused) log(`wrote ${g.path} (${(g.bytes / 2 ** 30).toFixed(2)} GiB) in ${(g.ms / 1000).toFixed(0)} s`)
      ggufs.set(type, g.path)
    }
  }

  const stories = opts.llama ? await storiesSanity(llamaEntry, opts) : undefined
  if (stories != null) log(`  stories260k through llama.cpp F16: same greedy ids ${String(stories.sameGreedyIds)}, max |Δp| ${stories.maxAbsProbabilityDiff.toExponential(2)}`)

  log(`read bandwidth, ${opts.threads} threads…`)
  let bandwidth = await measureReadBandwidth(opts.threads)
  log(`  ${(bandwidth.bytesPerSecond / 1e9).toFixed(1)} GB/s`)

  const rows: Row[] = []
  const sanity: Sanity[] = []
  let reference: Float32Array[] = []
  const contextSize = opts.promptTokens + opts.tokens + 8
  const threads = opts.threads

  const localRow = (runner: RunnerProc, name: string, weights: WeightBytes, anchor?: string): Row => ({
    name, anchor, sessions: 1, weights, runs: [], peakRss: {}, execute: async () => await run(runner, [prompt], opts.tokens)
  })
  const finishRss = (row: Row, procs: Record<string, number>): void => {
    for (const [name, pid] of Object.entries(procs)) row.peakRss[name] = procStatus('VmHWM', pid)
  }
  const checkSanity = async (runner: RunnerProc, against: string): Promise<void> => {
    for (const [i, p] of sanityPrompts.entries()) {
      const probs = await probabilities(runner, p, config.vocabSize)
      let diff = 0
      for (let v = 0; v < probs.length; v++) diff = Math.max(diff, Math.abs(probs[v] - reference[i][v]))
      sanity.push({ against, prompt: p.length, top1Same: argmax(probs) === argmax(reference[i]), maxAbsProbabilityDiff: diff, maxProbability: Math.max(...reference[i]) })
    }
  }

  // Phases of rows compared with each other, alternating: f32 | F16, int8 | Q8_0, int4 | Q4_0 | swarms.
  const phases: Array<{ quant: Quantization, head: Quantization, gguf: GgufFileType }> = [
    { quant: 'none', head: 'none', gguf: 'F16' },
    { quant: 'int8', head: 'int8', gguf: 'Q8_0' },
    { quant: 'int4', head: 'int8', gguf: 'Q4_0' }
  ]
  for (const phase of phases) {
    const label = phase.quant === 'none' ? 'f32' : phase.quant
    if (!opts.phases.includes(label)) continue
    const withSwarms = phase.quant !== 'none' && opts.swarms.includes(label)
    const opened: RunnerProc[] = []
    const swarms: Swarm[] = []
    try {
      log(`${label}: loading the local engine${opts.llama ? ` and llama.cpp ${phase.gguf}` : ''}…`)
      const minga = await startRunner(`minga ${label}`, { kind: 'minga', modelDir: checkpoint.dir, quant: phase.quant, headQuant: phase.head, threads }, opts)
      opened.push(minga)
      if (phase.quant === 'none') reference = await Promise.all(sanityPrompts.map(async p => await probabilities(minga, p, config.vocabSize)))
      else if (reference.length > 0) await checkSanity(minga, `minga ${label}`)
      const phaseRows = [localRow(minga, `minga ${label}`, weightBytes(config, phase.quant, phase.head), opts.llama ? `llama.cpp ${phase.gguf}` : undefined)]
      const pids: Record<string, Record<string, number>> = { [`minga ${label}`]: { local: minga.child.pid! } }
      if (opts.llama) {
        const llama = await startRunner(`llama.cpp ${phase.gguf}`, { kind: 'llama', entry: llamaEntry, gguf: ggufs.get(phase.gguf)!, threads, contextSize }, opts)
        opened.push(llama)
        if (reference.length > 0) await checkSanity(llama, `llama.cpp ${phase.gguf}`)
        phaseRows.push(localRow(llama, `llama.cpp ${phase.gguf}`, weightBytes(config, phase.gguf, phase.gguf === 'F16' ? 'F16' : 'Q8_0')))
        pids[`llama.cpp ${phase.gguf}`] = { local: llama.child.pid! }
        if (withSwarms && opts.sessions > 1) {
          // llama.cpp's own batching (node-llama-cpp evaluates sequences that step at once as one batch): the anchor of the sessions row
          const name = `llama.cpp ${phase.gguf}, ${opts.sessions} sequences`
          const batched = await startRunner(name, { kind: 'llama', entry: llamaEntry, gguf: ggufs.get(phase.gguf)!, threads, contextSize, sequences: opts.sessions }, opts)
          opened.push(batched)
          phaseRows.push({
            name, anchor: `llama.cpp ${phase.gguf}`, sessions: opts.sessions, weights: phaseRows[1].weights, runs: [], peakRss: {},
            execute: async () => await run(batched, concurrentPrompts, opts.tokens)
          })
          pids[name] = { local: batched.child.pid! }
        }
      }
      if (withSwarms) {
        // the swarms, against the local engine of the phase: one server of every layer, and three spans
        for (const spans of [[[0, 22]], [[0, 8], [8, 15], [15, 22]]] as Array<Array<[number, number]>>) {
          const name = `swarm ${spans.length} node${spans.length > 1 ? 's' : ''}`
          log(`${name}: starting ${spans.length} server${spans.length > 1 ? 's' : ''} and a client…`)
          const swarm = await startSwarmRetrying({ dir: checkpoint.dir, quant: phase.quant, spans }, threads, opts)
          swarms.push(swarm)
          const client = await startRunner(`${name} client`, { kind: 'swarm', modelDir: checkpoint.dir, bootstrap: swarm.bootstrap, threads, servers: spans.length }, opts)
          opened.push(client)
          const procs: Record<string, number> = { client: client.child.pid! }
          for (const p of swarm.procs.slice(1)) procs[p.name] = p.child.pid!
          const row = localRow(client, name, weightBytes(config, phase.quant, phase.head), `minga ${label}`)
          phaseRows.push(row)
          pids[name] = procs
          if (spans.length > 1) {
            // the same servers with the steps chained (`chains: true`): each server forwards to the next, and the last answers the client
            const chained = await startRunner(`${name}, chained client`, { kind: 'swarm', modelDir: checkpoint.dir, bootstrap: swarm.bootstrap, threads, servers: spans.length, chains: true }, opts)
            opened.push(chained)
            phaseRows.push(localRow(chained, `${name}, chained`, weightBytes(config, phase.quant, phase.head), `minga ${label}`))
            pids[`${name}, chained`] = { ...procs, client: chained.child.pid! }
          }
          if (spans.length === 1 && opts.sessions > 1) {
            const concurrent: Row = {
              name: `${name}, ${opts.sessions} sessions`, anchor: name, sessions: opts.sessions, weights: row.weights, runs: [], peakRss: {},
              execute: async () => await run(client, concurrentPrompts, opts.tokens)
            }
            phaseRows.push(concurrent)
            pids[concurrent.name] = procs
          }
        }
      }
      log(`${label}: ${phaseRows.map(r => r.name).join(' | ')}, alternating`)
      await alternate(phaseRows, opts, label)
      for (const row of phaseRows) finishRss(row, pids[row.name])
      rows.push(...phaseRows)
    } finally {
      for (const r of opened) await closeRunner(r).catch(() => {})
      for (const s of swarms) await stopSwarm(s).catch(() => [])
    }
  }

  // measured again at the end: on a shared machine either pass can be starved, and the bound is the better one
  log(`read bandwidth again, ${opts.threads} threads…`)
  const bandwidthAtEnd = await measureReadBandwidth(opts.threads)
  log(`  ${(bandwidthAtEnd.bytesPerSecond / 1e9).toFixed(1)} GB/s`)
  if (bandwidthAtEnd.bytesPerSecond > bandwidth.bytesPerSecond) bandwidth = bandwidthAtEnd
  const summaries = rows.map(row => summarize(row, rows, opts.promptTokens, bandwidth))
  const report = {
    startedAt,
    machine: { cpu: cpu.model, cores: availableParallelism(), simdFlags: cpu.flags, loadAverageBefore: loadBefore, loadAverageAfter: loadavg() },
    model: { dir: checkpoint.dir, parameters: checkpoint.parameters, shape: 'TinyLlama-1.1B (random weights)' },
    options: { tokens: opts.tokens, promptTokens: opts.promptTokens, repeats: opts.repeats, warmupRuns: opts.warmupRuns, threads, sessions: opts.sessions },
    bandwidth: { bytesPerSecond: Math.round(bandwidth.bytesPerSecond), runs: bandwidth.runs.map(Math.round), threads: bandwidth.threads },
    sanity,
    storiesSanity: stories,
    rows: summaries
  }
  if (opts.json) process.stdout.write(JSON.stringify(report) + '\n')
  else process.stdout.write(formatReport(report) + '\n')
}

function formatReport (report: { machine: any, options: any, bandwidth: { bytesPerSecond: number }, sanity: Sanity[], storiesSanity?: StoriesSanity, rows: RowSummary[] }): string {
  const { machine, options } = report
  const mib = (b: number): string => `${Math.round(b / 2 ** 20)}`
  const bw = report.bandwidth.bytesPerSecond
  const lines = [
    `minga bench — random TinyLlama-1.1B-shaped weights, ${options.threads} threads each, prompt ${options.promptTokens} tokens, ${options.tokens} new tokens greedy, medians of ${options.repeats} alternating runs`,
    `  CPU: ${machine.cpu}, ${machine.cores} cores; flags: ${machine.simdFlags.join(' ')}`,
    `  load average before: ${machine.loadAverageBefore.map((x: number) => x.toFixed(2)).join(' ')}; after: ${machine.loadAverageAfter.map((x: number) => x.toFixed(2)).join(' ')}`,
    `  read bandwidth (${options.threads} threads): ${(bw / 1e9).toFixed(1)} GB/s; bound = bandwidth ÷ weight bytes read per token`,
    ''
  ]
  const header = ['row', 'decode tok/s', `prefill tok/s`, 'TTFT ms', 'peak RSS MiB', 'weights MB/tok', 'bound tok/s', 'of bound', 'vs', 'decode ×', 'prefill ×']
  lines.push(...textTable(header, report.rows.map(r => [
    r.name,
    r.decodeTokensPerSecond.toFixed(2) + (r.sessions > 1 ? ' (sum)' : ''),
    r.prefillTokensPerSecond.toFixed(1),
    r.timeToFirstTokenMs.toFixed(0),
    Object.entries(r.peakRssBytes).map(([name, b]) => (Object.keys(r.peakRssBytes).length > 1 ? `${name.replace('serve ', '')} ` : '') + mib(b)).join(', '),
    (r.weightBytesPerToken / 1e6).toFixed(0),
    (bw / r.weightBytesPerToken).toFixed(1),
    r.fractionOfBound.toFixed(2),
    r.vsAnchor?.anchor ?? '',
    r.vsAnchor?.decodeRatio.toFixed(3) ?? '',
    r.vsAnchor?.prefillRatio.toFixed(3) ?? ''
  ])))
  const hops = report.rows.filter(r => r.hops != null).map(r => `${r.name}: ${r.hops!.join(', ')}`)
  if (hops.length > 0) lines.push('', `  route hops per run (the planner may cut one server's span into several hops): ${hops.join('; ')}`)
  const ids = report.rows.filter(r => r.sameIdsAs != null).map(r => `${r.name} = ${r.sameIdsAs!.row}: ${String(r.sameIdsAs!.same)}`)
  if (ids.length > 0) lines.push('', `  same greedy ids: ${ids.join('; ')}`)
  const st = report.storiesSanity
  if (st != null) {
    lines.push('', `  sanity on real weights: stories260k as F16 GGUF through llama.cpp against minga f32: same ${st.tokens} greedy ids ${String(st.sameGreedyIds)}, ` +
      `next-token top-1 same ${String(st.top1Same)}, max |Δp| ${st.maxAbsProbabilityDiff.toExponential(2)} (largest p ${st.maxProbability.toFixed(3)})`)
  }
  if (report.sanity.length > 0) {
    lines.push('', '  sanity, next-token probabilities against minga f32 (prompt lengths ' + [...new Set(report.sanity.map(s => s.prompt))].join(', ') + '):')
    const by = new Map<string, Sanity[]>()
    for (const s of report.sanity) by.set(s.against, [...(by.get(s.against) ?? []), s])
    for (const [name, list] of by) {
      lines.push(`    ${name}: top-1 same ${list.filter(s => s.top1Same).length}/${list.length}, max |Δp| ${Math.max(...list.map(s => s.maxAbsProbabilityDiff)).toExponential(2)}`)
    }
    lines.push(`    (random weights give nearly flat distributions, f32's largest p is ${Math.max(...report.sanity.map(s => s.maxProbability)).toExponential(2)}, and 22 random layers amplify any rounding: top-1 there is a near tie)`)
  }
  return lines.join('\n')
}

try {
  await main()
} catch (err) {
  log(`minga bench failed: ${(err as Error).stack ?? String(err)}`)
  process.exitCode = 1
}
