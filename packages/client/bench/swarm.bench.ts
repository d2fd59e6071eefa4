// Swarm benchmark: decode speed through a 3-node loopback swarm (a bootstrap process and three
// `minga serve` processes) divided by the decode speed of the same model run locally, for
// stories260k (f32) and the TinyLlama-shaped random checkpoint (int4), at each ORT thread count.
//
//   node --import tsx packages/client/bench/swarm.bench.ts [--json] [--models stories,tinyllama]
//     [--tokens N] [--threads 1,2] [--repeats R] [--warmup-runs W] [--clients chain-f16,relay-f32] [--no-chain]
//     [--verbose] [--ready-timeout S]
//
// See README.md next to this file.
import '@minga/p2p/polyfill'
import { readdirSync, readFileSync } from 'node:fs'
import { availableParallelism, loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { createLocalModel, loadModelConfig, seededRandom, untilDone, type ClientHead, type GenerationResult, type LocalModel, type Quantization } from '@minga/engine'
import { FrameType, type Channel } from '@minga/p2p'
import { median } from '../../engine/bench/bench-helpers.ts'
import { startSwarm, stopSwarm, type Swarm } from './swarm-processes.ts'
import { defaultCheckpointDir, ensureRandomCheckpoint, ensureTokenizer } from '../../engine/bench/random-checkpoint.ts'
import { createClient, type MingaClient, type SwarmGenerationResult } from '../src/index.ts'

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const STORIES = fileURLToPath(new URL('../../../../shared/models/stories260k', import.meta.url))
/** "Once upon a time" in stories260k's tokenizer, with BOS. */
const STORIES_PROMPT = [1, 403, 407, 261, 378]

type ModelName = 'stories' | 'tinyllama'

interface ModelSpec {
  name: ModelName
  dir: string
  quant: Quantization
  spans: Array<[number, number]>
  promptIds: number[]
  tokens: number
  /** Full-length runs of each configuration before measuring (V8 must optimize the networking code). */
  warmupRuns: number
}

interface Options {
  json: boolean
  models: ModelName[]
  tokens?: number
  threads: number[]
  repeats: number
  warmupRuns?: number
  /** Client configurations run against the same swarm, alternating; the first is "the swarm". */
  clients: ClientVariant[]
  chain: boolean
  verbose: boolean
  readyTimeoutMs: number
}

/** A client configuration: chains on or off (the client relays every hop), and the wire dtype. */
interface ClientVariant { name: string, chains: boolean, wire: 'f32' | 'f16' | 'q8' }

function parseVariant (name: string): ClientVariant {
  const m = /^(chain|relay)-(f32|f16|q8)$/.exec(name)
  if (m == null) throw new Error(`--clients: "${name}" is not chain|relay-f32|f16|q8`)
  return { name, chains: m[1] === 'chain', wire: m[2] as ClientVariant['wire'] }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

const log = (msg: string): void => { process.stderr.write(`${msg}\n`) }
const load1 = (): number => Number(loadavg()[0].toFixed(2))
const round = (x: number, digits = 2): number => Number(x.toFixed(digits))

/**
 * CPU time and run-queue wait of a process in ms (Linux schedstat): of its main thread (event loop:
 * libp2p, the generation loop) and of all its other threads (engine workers, ORT, V8, libuv). The
 * wait is time a thread was runnable but had no core: on a busy machine it is where latency goes.
 */
interface Sched { cpuMs: number, waitMs: number, mainCpuMs: number, mainWaitMs: number }

function schedstat (pid: number | 'self'): Sched {
  const id = pid === 'self' ? process.pid : pid
  const out: Sched = { cpuMs: 0, waitMs: 0, mainCpuMs: 0, mainWaitMs: 0 }
  try {
    for (const task of readdirSync(`/proc/${id}/task`)) {
      try {
        const [run, queued] = readFileSync(`/proc/${id}/task/${task}/schedstat`, 'utf8').split(' ').map(Number)
        out.cpuMs += run / 1e6
        out.waitMs += queued / 1e6
        if (Number(task) === id) {
          out.mainCpuMs += run / 1e6
          out.mainWaitMs += queued / 1e6
        }
      } catch {} // the thread ended
    }
  } catch {
    return { cpuMs: NaN, waitMs: NaN, mainCpuMs: NaN, mainWaitMs: NaN }
  }
  return out
}

/** Per decode step, CPU and run-queue wait of each process taking part (schedstat deltas). */
interface ProcessTimes { [name: string]: Sched }

/** Drains a generation, with schedstat deltas of `pids` over its decode steps (after the first token). */
async function timed<R extends GenerationResult> (pids: Record<string, number | 'self'>, stream: AsyncGenerator<unknown, R>, into: ProcessTimes[]): Promise<R> {
  let before: Record<string, Sched> | undefined
  for (;;) {
    const step = await stream.next()
    if (step.done === true) {
      const result = step.value
      const steps = Math.max(1, result.ids.length - 1)
      into.push(Object.fromEntries(Object.entries(pids).map(([name, pid]) => {
        const after = schedstat(pid)
        const start = before?.[name] ?? after
        const per = (key: keyof Sched): number => (after[key] - start[key]) / steps
        return [name, { cpuMs: per('cpuMs'), waitMs: per('waitMs'), mainCpuMs: per('mainCpuMs'), mainWaitMs: per('mainWaitMs') }]
      })))
      return result
    }
    // the prefill is done and the first token sampled: the decode steps start here
    before ??= Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, schedstat(pid)]))
  }
}

function medianTimes (all: ProcessTimes[]): ProcessTimes {
  const names = Object.keys(all[0] ?? {})
  const mid = (name: string, key: keyof Sched): number => round(median(all.map(t => t[name][key])), 3)
  return Object.fromEntries(names.map(name => [name, {
    cpuMs: mid(name, 'cpuMs'), waitMs: mid(name, 'waitMs'), mainCpuMs: mid(name, 'mainCpuMs'), mainWaitMs: mid(name, 'mainWaitMs')
  }]))
}

function modelSpecs (opts: Options): ModelSpec[] {
  return opts.models.map((name): ModelSpec => {
    if (name === 'stories') {
      const tokens = opts.tokens ?? 128
      // ~2000 steps through the swarm before measuring: until then V8 is still optimizing the
      // libp2p/noise/yamux code of every process and the swarm runs up to 2× slower
      return { name, dir: STORIES, quant: 'none', spans: [[0, 2], [2, 4], [4, 5]], promptIds: STORIES_PROMPT, tokens, warmupRuns: opts.warmupRuns ?? Math.ceil(2048 / tokens) }
    }
    const info = ensureRandomCheckpoint(defaultCheckpointDir(), REPO_ROOT)
    if (!info.reused) log(`built the TinyLlama-shaped checkpoint in ${info.dir} (${(info.buildMs / 1000).toFixed(0)} s)`)
    const config = loadModelConfig(info.dir)
    if (ensureTokenizer(info.dir, config.vocabSize)) log(`wrote a generated tokenizer.json/tokenizer_config.json into ${info.dir}`)
    const random = seededRandom(7)
    // ids ≥ 3: no specials in the prompt
    const promptIds = Array.from({ length: 16 }, () => 3 + Math.floor(random() * (config.vocabSize - 3)))
    // compute dominates a step here (≥ 50 ms): two warm-up runs are enough
    return { name, dir: info.dir, quant: 'int4', spans: [[0, 8], [8, 15], [15, 22]], promptIds, tokens: opts.tokens ?? 32, warmupRuns: opts.warmupRuns ?? 2 }
  })
}

// ---------------------------------------------------------------------------------------------
// Measurements

interface RunStats {
  /** Median over the repeats of the decode tokens/s (steps after the first token). */
  tokensPerSecond: number
  msPerToken: number
  runs: number[]
  prefillMs: number
  newTokens: number
  ids: number[]
  loadMs: number
  /** CPU and run-queue wait per decode step of each process taking part, median of the repeats. */
  perStep?: ProcessTimes
}

function summarize (results: GenerationResult[], loadMs: number): RunStats {
  const tps = results.map(r => r.tokensPerSecond)
  const mid = median(tps)
  return {
    tokensPerSecond: round(mid),
    msPerToken: round(1000 / mid, 3),
    runs: tps.map(x => round(x)),
    prefillMs: round(median(results.map(r => r.prefillMs))),
    newTokens: results[0].ids.length,
    ids: results[0].ids,
    loadMs: Math.round(loadMs)
  }
}

interface Breakdown {
  /** Per decode token, milliseconds, from the client process: */
  embedMs: number
  logitsMs: number
  /** FORWARD → RESULT round trip of each hop, as the client sees it (network + server + span). */
  hopMs: number[]
  /** Whatever is left of the step: sampling, detokenizing, the generator, awaits. */
  otherMs: number
  totalMs: number
}

/** Wraps the client's head and channels with timers (private fields, bench only) and runs once more. */
async function measureBreakdown (client: MingaClient, spec: ModelSpec, route: SwarmGenerationResult['route']): Promise<Breakdown> {
  const inner = client as unknown as { head: ClientHead, channels: Map<string, Promise<Channel>> }
  const head = inner.head
  const embedMs: number[] = []
  const logitsMs: number[] = []
  const hopMs = route.map(() => [] as number[])
  const origEmbed = head.embed
  const origLogits = head.logits
  const patched: Array<{ channel: Channel, request: Channel['request'] }> = []
  ;(head as { embed: ClientHead['embed'] }).embed = async (ids) => {
    const t = performance.now()
    try { return await origEmbed(ids) } finally { if (ids.length === 1) embedMs.push(performance.now() - t) }
  }
  ;(head as { logits: ClientHead['logits'] }).logits = async (hidden, tokens) => {
    const t = performance.now()
    try { return await origLogits(hidden, tokens) } finally { logitsMs.push(performance.now() - t) }
  }
  for (const [peerId, pending] of inner.channels ?? new Map<string, Promise<Channel>>()) {
    const hop = route.findIndex(h => h.peerId === peerId)
    if (hop < 0) continue
    const channel = await pending
    const request = channel.request
    patched.push({ channel, request })
    ;(channel as { request: Channel['request'] }).request = async (init, ropts) => {
      const t = performance.now()
      try { return await request(init, ropts) } finally { if (init.type === FrameType.FORWARD && init.tokens === 1) hopMs[hop].push(performance.now() - t) }
    }
  }
  try {
    const result = await untilDone(client.generate(spec.promptIds, { maxNewTokens: spec.tokens, temperature: 0 }))
    const steps = result.ids.length - 1
    const totalMs = 1000 / result.tokensPerSecond
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length)
    const e = mean(embedMs)
    const l = mean(logitsMs.slice(1)) // the first logits call belongs to the prefill
    const hops = hopMs.map(xs => mean(xs.slice(-steps)))
    return {
      embedMs: round(e, 3),
      logitsMs: round(l, 3),
      hopMs: hops.map(x => round(x, 3)),
      otherMs: round(totalMs - e - l - hops.reduce((a, b) => a + b, 0), 3),
      totalMs: round(totalMs, 3)
    }
  } finally {
    head.embed = origEmbed
    head.logits = origLogits
    for (const { channel, request } of patched) channel.request = request
  }
}

interface SwarmStats extends RunStats {
  route: SwarmGenerationResult['route']
  swarmStartMs: number
  breakdown: Breakdown
  stop: string[]
}

interface VariantStats extends RunStats {
  variant: string
  /** median tok/s ÷ the local engine's median tok/s */
  ratio: number
  pairedRatio: number
  addedMsPerHop: number
  sameIds: boolean
}

interface Paired {
  local: RunStats
  localChain?: RunStats
  swarm: SwarmStats
  /** Every client variant (the first is `swarm`), measured in the same alternation. */
  variants: VariantStats[]
  /** Median over the repeats of (swarm tok/s ÷ local tok/s) of runs made back to back. */
  pairedRatio: number
  load1: [number, number]
}

/**
 * Loads the local model (one span, and optionally the swarm's spans chained in this process), starts
 * the swarm and its client, warms all up, then alternates local, chain and swarm runs so that each
 * repeat compares them under the same machine load.
 */
async function measurePaired (spec: ModelSpec, threads: number, opts: Options): Promise<Paired> {
  const before = load1()
  const loadLocal = async (spans?: Array<[number, number]>): Promise<{ model: LocalModel, loadMs: number }> => {
    const t = performance.now()
    const model = await createLocalModel({ modelDir: spec.dir, quant: spec.quant, threads, spans })
    return { model, loadMs: performance.now() - t }
  }
  const opened: LocalModel[] = []
  let swarm: Swarm | undefined
  let client: MingaClient | undefined
  const clients: MingaClient[] = []
  try {
    const local = await loadLocal()
    opened.push(local.model)
    const chain = opts.chain ? await loadLocal(spec.spans) : undefined
    if (chain != null) opened.push(chain.model)
    swarm = await startSwarm(spec, threads, opts)
    log(`  swarm up in ${(swarm.startMs / 1000).toFixed(1)} s`)
    const t = performance.now()
    for (const v of opts.clients) clients.push(await createClient({ modelDir: spec.dir, bootstrap: [swarm.bootstrap], threads, wireDtype: v.wire, chains: v.chains }))
    client = clients[0]
    const clientLoadMs = performance.now() - t

    const options = { maxNewTokens: spec.tokens, temperature: 0 }
    const warmOptions = { maxNewTokens: 4, temperature: 0 }
    for (const m of opened) await untilDone(m.generate(spec.promptIds, warmOptions))
    // the swarm's warm-up is retried until the DHT shows every span (announcements take a moment)
    const deadline = Date.now() + 60_000
    for (let warmed = false; !warmed;) {
      try {
        for (const c of clients) {
          const warm = await untilDone(c.generate(spec.promptIds, warmOptions))
          if (warm.route.length !== spec.spans.length) throw new Error(`route of ${warm.route.length} hops, expected ${spec.spans.length}`)
        }
        warmed = true
      } catch (err) {
        if (Date.now() > deadline) throw err
        log(`  waiting for the swarm: ${(err as Error).message}`)
        await new Promise(resolve => setTimeout(resolve, 1000))
      }
    }

    // full-length warm-up runs: V8 is still compiling the servers' and client's networking code
    // (on its background threads, competing for the cores) during the first few hundred steps
    for (let i = 0; i < spec.warmupRuns; i++) {
      for (const m of opened) await untilDone(m.generate(spec.promptIds, options))
      for (const c of clients) await untilDone(c.generate(spec.promptIds, options))
    }

    const localRuns: GenerationResult[] = []
    const chainRuns: GenerationResult[] = []
    const variantRuns = clients.map(() => [] as SwarmGenerationResult[])
    const swarmRuns = variantRuns[0]
    const localTimes: ProcessTimes[] = []
    const chainTimes: ProcessTimes[] = []
    const swarmTimes: ProcessTimes[] = []
    const swarmPids: Record<string, number | 'self'> = { client: 'self' }
    for (const p of swarm.procs.slice(1)) swarmPids[p.name] = p.child.pid!
    for (let i = 0; i < opts.repeats; i++) {
      localRuns.push(await timed({ local: 'self' }, local.model.generate(spec.promptIds, options), localTimes))
      if (chain != null) chainRuns.push(await timed({ chain: 'self' }, chain.model.generate(spec.promptIds, options), chainTimes))
      swarmRuns.push(await timed(swarmPids, client.generate(spec.promptIds, options), swarmTimes))
      for (let v = 1; v < clients.length; v++) variantRuns[v].push(await untilDone(clients[v].generate(spec.promptIds, options)))
      log(`  repeat ${i + 1}: local ${localRuns[i].tokensPerSecond.toFixed(1)}${chain != null ? `, chain ${chainRuns[i].tokensPerSecond.toFixed(1)}` : ''}, ${opts.clients.map((v, k) => `${v.name} ${variantRuns[k][i].tokensPerSecond.toFixed(1)}`).join(', ')} tok/s (load ${load1()})`)
    }
    const localStats = summarize(localRuns, local.loadMs)
    const variants = opts.clients.map((v, k): VariantStats => {
      const stats = summarize(variantRuns[k], clientLoadMs)
      return {
        ...stats,
        variant: v.name,
        ratio: round(stats.tokensPerSecond / localStats.tokensPerSecond, 4),
        pairedRatio: round(median(variantRuns[k].map((r, i) => r.tokensPerSecond / localRuns[i].tokensPerSecond)), 4),
        addedMsPerHop: round((stats.msPerToken - localStats.msPerToken) / spec.spans.length, 3),
        sameIds: JSON.stringify(stats.ids) === JSON.stringify(localStats.ids)
      }
    })
    const route = swarmRuns[0].route
    if (route.length !== spec.spans.length) throw new Error(`the swarm routed through ${route.length} hops, expected ${spec.spans.length}`)
    // (per-hop round trips are what the client sees only when it relays: time a relaying client)
    const relaying = opts.clients.findIndex(v => !v.chains)
    const breakdown = await measureBreakdown(clients[Math.max(0, relaying)], spec, route)
    for (const c of clients) await c.close()
    client = undefined
    const stop = await stopSwarm(swarm)
    return {
      local: { ...summarize(localRuns, local.loadMs), perStep: medianTimes(localTimes) },
      localChain: chain != null ? { ...summarize(chainRuns, chain.loadMs), perStep: medianTimes(chainTimes) } : undefined,
      swarm: { ...summarize(swarmRuns, clientLoadMs), perStep: medianTimes(swarmTimes), route, swarmStartMs: Math.round(swarm.startMs), breakdown, stop },
      pairedRatio: round(median(swarmRuns.map((r, i) => r.tokensPerSecond / localRuns[i].tokensPerSecond)), 4),
      variants,
      load1: [before, load1()]
    }
  } finally {
    if (client != null) for (const c of clients) await c.close().catch(() => {})
    if (swarm != null) await stopSwarm(swarm)
    await Promise.all(opened.map(async m => { await m.close() }))
  }
}

// ---------------------------------------------------------------------------------------------
// Main

interface ThreadResult {
  threads: number
  local: RunStats
  /** The same spans as the swarm, chained in this process (one worker each, no network). */
  localChain?: RunStats
  swarm: SwarmStats
  /** Each client variant against the same servers, alternating with the local runs. */
  variants: VariantStats[]
  /** median swarm tok/s ÷ median local tok/s */
  ratio: number
  /** median of the per-repeat ratios (runs made back to back) */
  pairedRatio: number
  /** (swarm ms/token − local ms/token) ÷ hops */
  addedMsPerHop: number
  sameIds: boolean
  /** 1-minute load average before → after */
  load1: [number, number]
}

interface ModelResult {
  model: ModelName
  dir: string
  quant: Quantization
  spans: Array<[number, number]>
  promptTokens: number
  tokens: number
  warmupRuns: number
  byThreads: ThreadResult[]
  /** Every swarm thread count against every local one. */
  cross: Array<{ swarmThreads: number, localThreads: number, ratio: number, addedMsPerHop: number }>
}

function parseOptions (): Options {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean', default: false },
      models: { type: 'string', default: 'stories,tinyllama' },
      tokens: { type: 'string' },
      threads: { type: 'string', default: '1,2' },
      repeats: { type: 'string', default: '3' },
      'warmup-runs': { type: 'string' },
      clients: { type: 'string', default: 'chain-f16,relay-f32' },
      'no-chain': { type: 'boolean', default: false },
      verbose: { type: 'boolean', default: false },
      'ready-timeout': { type: 'string', default: '600' }
    }
  })
  const list = (s: string): string[] => s.split(',').map(x => x.trim()).filter(x => x !== '')
  const models = list(values.models!).map(m => {
    if (m !== 'stories' && m !== 'tinyllama') throw new Error(`unknown model ${m} (stories, tinyllama)`)
    return m
  })
  const int = (s: string, name: string, min = 1): number => {
    const n = Number(s)
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got ${s}`)
    return n
  }
  return {
    json: values.json!,
    models,
    tokens: values.tokens != null ? int(values.tokens, 'tokens') : undefined,
    threads: list(values.threads!).map(t => int(t, 'threads')),
    repeats: int(values.repeats!, 'repeats'),
    warmupRuns: values['warmup-runs'] != null ? int(values['warmup-runs'], 'warmup-runs', 0) : undefined,
    clients: list(values.clients!).map(parseVariant),
    chain: !values['no-chain'],
    verbose: values.verbose!,
    readyTimeoutMs: int(values['ready-timeout']!, 'ready-timeout') * 1000
  }
}

function table (results: ModelResult[]): string {
  const lines: string[] = []
  const pad = (s: string | number, n: number): string => String(s).padStart(n)
  for (const r of results) {
    lines.push(`${r.model} (${r.quant}, spans ${r.spans.map(([a, b]) => `[${a},${b})`).join(' ')}; ${r.promptTokens}-token prompt, ${r.tokens} new tokens, greedy; ${r.warmupRuns} warm-up runs)`)
    lines.push(`  ${pad('threads', 7)} ${pad('local tok/s', 11)} ${pad('ms/tok', 7)} ${pad('chain tok/s', 11)} ${pad('swarm tok/s', 11)} ${pad('ms/tok', 7)} ${pad('ratio', 6)} ${pad('paired', 6)} ${pad('+ms/hop', 7)} ${pad('same ids', 8)}  load1`)
    for (const t of r.byThreads) {
      lines.push(`  ${pad(t.threads, 7)} ${pad(t.local.tokensPerSecond.toFixed(1), 11)} ${pad(t.local.msPerToken.toFixed(2), 7)} ${pad(t.localChain?.tokensPerSecond.toFixed(1) ?? '-', 11)} ` +
        `${pad(t.swarm.tokensPerSecond.toFixed(1), 11)} ${pad(t.swarm.msPerToken.toFixed(2), 7)} ${pad(t.ratio.toFixed(3), 6)} ${pad(t.pairedRatio.toFixed(3), 6)} ${pad(t.addedMsPerHop.toFixed(2), 7)} ${pad(String(t.sameIds), 8)}  ` +
        `${t.load1.join('→')}`)
    }
    for (const t of r.byThreads) {
      lines.push(`  threads=${t.threads}, client variants (same servers, alternating): ` +
        t.variants.map(v => `${v.variant} ${v.tokensPerSecond.toFixed(1)} tok/s = ${v.msPerToken.toFixed(2)} ms/tok (ratio ${v.ratio.toFixed(3)}, paired ${v.pairedRatio.toFixed(3)}, +${v.addedMsPerHop.toFixed(2)} ms/hop, same ids ${String(v.sameIds)})`).join('; '))
    }
    for (const t of r.byThreads) {
      const fmt = (times?: ProcessTimes): string => Object.entries(times ?? {})
        .map(([name, v]) => `${name} ${v.cpuMs.toFixed(2)} (main ${v.mainCpuMs.toFixed(2)}) / ${v.waitMs.toFixed(2)}`).join(', ')
      lines.push(`  threads=${t.threads}, per decode step, CPU ms (main thread) / run-queue wait ms: ${fmt(t.local.perStep)}; ${fmt(t.localChain?.perStep)}`)
      lines.push(`    swarm: ${fmt(t.swarm.perStep)}`)
    }
    for (const t of r.byThreads) {
      const b = t.swarm.breakdown
      lines.push(`  swarm threads=${t.threads}, per token from the client: embed ${b.embedMs} ms, hops ${b.hopMs.join(' + ')} ms, logits ${b.logitsMs} ms, other ${b.otherMs} ms = ${b.totalMs} ms`)
    }
    for (const c of r.cross) {
      lines.push(`  swarm (servers threads=${c.swarmThreads}) vs local threads=${c.localThreads}: ratio ${c.ratio.toFixed(3)}, +${c.addedMsPerHop.toFixed(2)} ms/hop`)
    }
    lines.push('')
  }
  return lines.join('\n')
}

async function main (): Promise<void> {
  const opts = parseOptions()
  const startedLoad = load1()
  log(`swarm bench: ${availableParallelism()} cores, load average ${loadavg().map(x => x.toFixed(2)).join(' ')}`)
  const results: ModelResult[] = []
  for (const spec of modelSpecs(opts)) {
    const hops = spec.spans.length
    const byThreads: ThreadResult[] = []
    for (const threads of opts.threads) {
      log(`${spec.name}, threads=${threads}: local${opts.chain ? `, local chain of ${hops} spans` : ''} and a swarm of ${hops} servers, alternating`)
      const { local, localChain, swarm, variants, pairedRatio, load1: load } = await measurePaired(spec, threads, opts)
      byThreads.push({
        threads,
        variants,
        local,
        localChain,
        swarm,
        ratio: round(swarm.tokensPerSecond / local.tokensPerSecond, 4),
        pairedRatio,
        addedMsPerHop: round((swarm.msPerToken - local.msPerToken) / hops, 3),
        sameIds: JSON.stringify(swarm.ids) === JSON.stringify(local.ids),
        load1: load
      })
    }
    const cross = byThreads.flatMap(s => byThreads.map(l => ({
      swarmThreads: s.threads,
      localThreads: l.threads,
      ratio: round(s.swarm.tokensPerSecond / l.local.tokensPerSecond, 4),
      addedMsPerHop: round((s.swarm.msPerToken - l.local.msPerToken) / hops, 3)
    })))
    results.push({ model: spec.name, dir: spec.dir, quant: spec.quant, spans: spec.spans, promptTokens: spec.promptIds.length, tokens: spec.tokens, warmupRuns: spec.warmupRuns, byThreads, cross })
  }
  const summary = { cores: availableParallelism(), load1: [startedLoad, load1()], repeats: opts.repeats, clients: opts.clients.map(v => v.name), results }
  if (opts.json) process.stdout.write(JSON.stringify(summary) + '\n')
  else process.stdout.write(table(results))
}

try {
  await main()
} catch (err) {
  log(`swarm bench failed: ${(err as Error).stack ?? err}`)
  process.exitCode = 1
}
