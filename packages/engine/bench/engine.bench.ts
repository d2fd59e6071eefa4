// Engine benchmark: load time, prefill and decode speed and peak memory of a whole TinyLlama-1.1B-
// shaped model (random weights) as one span, per quantization, each in its own child process; plus
// top-1 agreement of the int8/int4 spans with f32 on the real stories260k checkpoint.
//
//   pnpm bench:engine [--quant none,int8,int4] [--prompt-tokens 128] [--decode-tokens 32] [--json]
//
// See README.md next to this file.
import { spawn } from 'node:child_process'
import { rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { availableParallelism, loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import {
  argmax, createClientHead, createSpanExecutor, defaultSpanWorkers, loadModelConfig, loadTokenizer, QUANTIZATIONS, seededRandom,
  type ClientHead, type Quantization, type SpanExecutor
} from '../src/index.ts'
import { agreementWith, procStatus, textTable as table } from './bench-helpers.ts'
import { measureNodeStart, medianStart, startServe, type NodeStartResult, type StartRun } from './node-start.ts'
import { defaultCheckpointDir, ensureRandomCheckpoint, TINYLLAMA_SHAPE, type CheckpointInfo } from './random-checkpoint.ts'

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const STORIES = fileURLToPath(new URL('../../../../shared/models/stories260k', import.meta.url))
/** "Once upon a time" in stories260k's tokenizer, with BOS. */
const STORIES_PROMPT = [1, 403, 407, 261, 378]
const AGREEMENT_POSITIONS = 200
const RESULT_PREFIX = '@@minga-bench '

// ---------------------------------------------------------------------------------------------
// Measurements, run in a child process per configuration.

interface PerfResult {
  kind: 'perf'
  quant: Quantization
  threads: number
  promptTokens: number
  decodeTokens: number
  spanLoadMs: number
  headLoadMs: number
  bytesRead: number
  rssAfterLoadBytes: number
  /** VmHWM at the end: the process's peak resident set, worker threads included. */
  peakRssBytes: number
  prefill: { embedMs: number, spanMs: number, logitsMs: number, totalMs: number, tokensPerSecond: number }
  decode: { spanMsPerToken: number, headMsPerToken: number, totalMs: number, tokensPerSecond: number }
  logitsFinite: boolean
  generated: number[]
}

interface AgreementResult {
  kind: 'agreement'
  modelDir: string
  positions: number
  /** The f32 greedy continuation of the prompt, teacher-forced through every quantization. */
  sequence: number[]
  text: string
  /** f32's teacher-forced argmax vs its own step-by-step greedy decode (should be all). */
  f32SelfAgreement: number
  quants: Array<{ quant: Quantization, agree: number, rate: number, meanKl: number }>
}

interface ChildFailure { kind: 'error', message: string }

function lastRow (hidden: Float32Array, tokens: number, size: number): Float32Array {
  return hidden.slice((tokens - 1) * size, tokens * size)
}

async function runPerf (modelDir: string, quant: Quantization, threads: number, promptTokens: number, decodeTokens: number): Promise<PerfResult> {
  const config = loadModelConfig(modelDir)
  const size = config.hiddenSize
  const log = (msg: string): void => { process.stderr.write(`  [${quant}] ${msg}\n`) }

  let t = performance.now()
  const span = await createSpanExecutor({ modelDir, start: 0, end: config.numLayers, quant, threads })
  const spanLoadMs = performance.now() - t
  log(`span of ${config.numLayers} layers loaded in ${(spanLoadMs / 1000).toFixed(1)} s`)
  t = performance.now()
  const head = await createClientHead({ modelDir, threads }).catch(async (err: unknown) => { await span.close(); throw err })
  const headLoadMs = performance.now() - t
  const rssAfterLoadBytes = procStatus('VmRSS')
  log(`head loaded in ${(headLoadMs / 1000).toFixed(1)} s; RSS ${gib(rssAfterLoadBytes)}`)

  try {
    const random = seededRandom(42)
    const randomIds = (n: number): number[] => Array.from({ length: n }, () => 3 + Math.floor(random() * (config.vocabSize - 3)))

    // Warm-up on a throwaway session, so the measured runs do not pay ORT's first-run allocations.
    await span.openSession('warmup', 16)
    let warm = await span.forward('warmup', await head.embed(randomIds(8)), { tokens: 8 })
    await head.logits(lastRow(warm, 8, size), 1)
    warm = await span.forward('warmup', await head.embed(randomIds(1)), { tokens: 1 })
    await head.logits(warm, 1)
    await span.closeSession('warmup')

    await span.openSession('bench', promptTokens + decodeTokens)
    const prompt = randomIds(promptTokens)
    t = performance.now()
    const embedded = await head.embed(prompt)
    const embedMs = performance.now() - t
    t = performance.now()
    const hidden = await span.forward('bench', embedded, { tokens: promptTokens })
    const prefillSpanMs = performance.now() - t
    t = performance.now()
    let logits = await head.logits(lastRow(hidden, promptTokens, size), 1)
    const logitsMs = performance.now() - t
    const prefillMs = embedMs + prefillSpanMs + logitsMs
    log(`prefill ${promptTokens} tokens: ${(prefillMs / 1000).toFixed(2)} s`)

    let finite = logits.every(Number.isFinite)
    const generated: number[] = []
    let spanMs = 0
    let headMs = 0
    for (let i = 0; i < decodeTokens; i++) {
      const next = argmax(logits)
      generated.push(next)
      t = performance.now()
      const x = await head.embed([next])
      const t1 = performance.now()
      const y = await span.forward('bench', x, { tokens: 1 })
      const t2 = performance.now()
      logits = await head.logits(y, 1)
      const t3 = performance.now()
      spanMs += t2 - t1
      headMs += (t1 - t) + (t3 - t2)
      finite &&= logits.every(Number.isFinite)
    }
    const decodeMs = spanMs + headMs
    log(`decode ${decodeTokens} tokens: ${(decodeMs / 1000).toFixed(2)} s`)
    await span.closeSession('bench')

    return {
      kind: 'perf',
      quant,
      threads,
      promptTokens,
      decodeTokens,
      spanLoadMs,
      headLoadMs,
      bytesRead: span.bytesRead,
      rssAfterLoadBytes,
      peakRssBytes: procStatus('VmHWM'),
      prefill: { embedMs, spanMs: prefillSpanMs, logitsMs, totalMs: prefillMs, tokensPerSecond: promptTokens / (prefillMs / 1000) },
      decode: {
        spanMsPerToken: spanMs / decodeTokens,
        headMsPerToken: headMs / decodeTokens,
        totalMs: decodeMs,
        tokensPerSecond: decodeTokens / (decodeMs / 1000)
      },
      logitsFinite: finite,
      generated
    }
  } finally {
    await Promise.all([span.close(), head.close()])
  }
}

/** Runs `ids` through the span in one prefill and returns the logits of every position. */
async function teacherForced (span: SpanExecutor, head: ClientHead, ids: number[]): Promise<Float32Array> {
  await span.openSession('tf', ids.length)
  try {
    const hidden = await span.forward('tf', await head.embed(ids), { tokens: ids.length })
    return await head.logits(hidden, ids.length)
  } finally {
    await span.closeSession('tf')
  }
}

function rowArgmax (logits: Float32Array, vocab: number, row: number): number {
  return argmax(logits.subarray(row * vocab, (row + 1) * vocab))
}

async function runAgreement (modelDir: string, quants: Quantization[], threads: number): Promise<AgreementResult> {
  const config = loadModelConfig(modelDir)
  const vocab = config.vocabSize
  const head = await createClientHead({ modelDir, headQuant: 'none', threads }) // compare the layers' quantization alone
  const open = async (quant: Quantization): Promise<SpanExecutor> =>
    await createSpanExecutor({ modelDir, start: 0, end: config.numLayers, quant, threads })
  try {
    // The f32 greedy continuation, decoded token by token.
    const f32 = await open('none')
    const sequence = [...STORIES_PROMPT]
    let reference: Float32Array
    try {
      await f32.openSession('greedy', STORIES_PROMPT.length + AGREEMENT_POSITIONS)
      let hidden = await f32.forward('greedy', await head.embed(sequence), { tokens: sequence.length })
      let logits = await head.logits(lastRow(hidden, sequence.length, config.hiddenSize), 1)
      while (sequence.length < STORIES_PROMPT.length + AGREEMENT_POSITIONS) {
        sequence.push(argmax(logits))
        hidden = await f32.forward('greedy', await head.embed([sequence[sequence.length - 1]]), { tokens: 1 })
        logits = await head.logits(hidden, 1)
      }
      await f32.closeSession('greedy')
      reference = await teacherForced(f32, head, sequence)
    } finally {
      await f32.close()
    }

    // Positions prompt-1 … end-2 each predict the next token of the sequence: 200 of them.
    const positions = Array.from({ length: AGREEMENT_POSITIONS }, (_, i) => STORIES_PROMPT.length - 1 + i)
    const f32SelfAgreement = positions.filter(p => rowArgmax(reference, vocab, p) === sequence[p + 1]).length

    const results: AgreementResult['quants'] = []
    for (const quant of quants) {
      const span = await open(quant)
      try {
        const { agree, meanKl } = agreementWith(reference, await teacherForced(span, head, sequence), vocab, positions)
        results.push({ quant, agree, rate: agree / positions.length, meanKl })
      } finally {
        await span.close()
      }
    }

    let text = ''
    try {
      text = loadTokenizer(modelDir, config).decode(sequence)
    } catch {} // the text is only for the report
    return { kind: 'agreement', modelDir, positions: positions.length, sequence, text, f32SelfAgreement, quants: results }
  } finally {
    await head.close()
  }
}

// ---------------------------------------------------------------------------------------------
// The parent: builds the checkpoint, spawns one child per measurement, prints the report.

interface Options {
  quants: Quantization[]
  startQuants: Quantization[]
  /** Span workers of the start measurement; empty: the default count of each quantization. */
  startWorkers: number[]
  startRepeats: number
  perf: boolean
  promptTokens: number
  decodeTokens: number
  threads: number
  json: boolean
  agreement: boolean
  rebuild: boolean
  timeoutS: number
}

const USAGE = `usage: pnpm bench:engine [options]
  --quant none,int8,int4   quantizations to measure (default all three)
  --prompt-tokens N        prefill length (default 128)
  --decode-tokens N        greedy decode steps (default 32)
  --threads N              ORT intra-op threads per worker (default 2)
  --skip-agreement         skip the stories260k top-1 agreement check
  --start-quant int8,int4  node start (minga serve, cold and warm) of [0, 22) at these (default int8,int4)
  --start-workers 1,2      node start with these span worker counts (default: the default of each quantization)
  --start-repeats N        warm starts (and baseline starts) in a row; the table shows the median (default 3)
  --skip-start             skip the node start measurement
  --skip-perf              skip the per-quantization load/prefill/decode children
  --rebuild                rebuild the random checkpoint even if a complete one is cached
  --timeout S              give up on a child process after S seconds (default 900)
  --json                   print one JSON object instead of the table`

function positiveInt (value: string | undefined, name: string, fallback: number): number {
  if (value == null) return fallback
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${value}\n${USAGE}`)
  return n
}

function parseOptions (args: string[]): Options & { child?: string, modelDir?: string } {
  const { values } = parseArgs({
    args,
    options: {
      quant: { type: 'string' },
      'prompt-tokens': { type: 'string' },
      'decode-tokens': { type: 'string' },
      threads: { type: 'string' },
      'skip-agreement': { type: 'boolean' },
      'start-quant': { type: 'string' },
      'start-workers': { type: 'string' },
      'start-repeats': { type: 'string' },
      'skip-start': { type: 'boolean' },
      'skip-perf': { type: 'boolean' },
      rebuild: { type: 'boolean' },
      timeout: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean' },
      child: { type: 'string' }, // internal: 'perf' or 'agreement'
      'model-dir': { type: 'string' } // internal
    }
  })
  if (values.help === true) {
    process.stdout.write(USAGE + '\n')
    process.exit(0)
  }
  const quants = (values.quant ?? QUANTIZATIONS.join(',')).split(',').map(q => q.trim()).filter(q => q !== '')
  for (const q of quants) {
    if (!(QUANTIZATIONS as string[]).includes(q)) throw new Error(`unknown quantization ${q} (${QUANTIZATIONS.join(', ')})\n${USAGE}`)
  }
  const options = {
    quants: [...new Set(quants)] as Quantization[],
    promptTokens: positiveInt(values['prompt-tokens'], 'prompt-tokens', 128),
    decodeTokens: positiveInt(values['decode-tokens'], 'decode-tokens', 32),
    threads: positiveInt(values.threads, 'threads', 2),
    json: values.json === true,
    agreement: values['skip-agreement'] !== true,
    startQuants: values['skip-start'] === true ? [] : (values['start-quant'] ?? 'int8,int4').split(',').map(q => q.trim()).filter(q => q !== '') as Quantization[],
    startWorkers: (values['start-workers'] ?? '').split(',').filter(w => w.trim() !== '').map(w => positiveInt(w.trim(), 'start-workers', 1)),
    startRepeats: positiveInt(values['start-repeats'], 'start-repeats', 3),
    perf: values['skip-perf'] !== true,
    rebuild: values.rebuild === true,
    timeoutS: positiveInt(values.timeout, 'timeout', 900),
    child: values.child,
    modelDir: values['model-dir']
  }
  if (options.quants.length === 0) throw new Error(`--quant lists no quantization\n${USAGE}`)
  if (options.promptTokens + options.decodeTokens > TINYLLAMA_SHAPE.maxPositionEmbeddings) {
    throw new Error(`--prompt-tokens + --decode-tokens must fit the model's ${TINYLLAMA_SHAPE.maxPositionEmbeddings} positions`)
  }
  return options
}

interface ChildRun<T> { result: T | ChildFailure, wallMs: number, loadBefore: number, loadAfter: number }

/** Runs this file again in a fresh Node process and reads back its one result line. */
async function runChild<T> (args: string[], timeoutS: number): Promise<ChildRun<T>> {
  const loadBefore = loadavg()[0]
  const started = performance.now()
  const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), ...args], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'inherit']
  })
  let stdout = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (chunk: string) => { stdout += chunk })
  const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutS * 1000)
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (c, s) => { resolve([c, s]) })
  }).finally(() => { clearTimeout(timer) })
  const wallMs = performance.now() - started
  const line = stdout.split('\n').reverse().find(l => l.startsWith(RESULT_PREFIX))
  let result: T | ChildFailure
  if (line != null) {
    result = JSON.parse(line.slice(RESULT_PREFIX.length)) as T | ChildFailure
  } else {
    const how = signal != null ? `was killed by ${signal}${signal === 'SIGKILL' ? ' (out of memory, or --timeout)' : ''}` : `exited with code ${code}`
    result = { kind: 'error', message: `child process ${how} without a result` }
  }
  return { result, wallMs, loadBefore, loadAfter: loadavg()[0] }
}

async function childMain (options: ReturnType<typeof parseOptions>): Promise<void> {
  let result: PerfResult | AgreementResult | ChildFailure
  try {
    if (options.child === 'perf') {
      result = await runPerf(options.modelDir!, options.quants[0], options.threads, options.promptTokens, options.decodeTokens)
    } else if (options.child === 'agreement') {
      result = await runAgreement(options.modelDir!, options.quants, options.threads)
    } else {
      throw new Error(`unknown child mode ${options.child}`)
    }
  } catch (err: any) {
    result = { kind: 'error', message: `${err?.name ?? 'Error'}: ${err?.message ?? String(err)}` }
  }
  process.stdout.write(RESULT_PREFIX + JSON.stringify(result) + '\n') // synchronous on a pipe
  process.exit(result.kind === 'error' ? 1 : 0) // a failed load may leave a worker thread running
}

const gib = (bytes: number): string => `${(bytes / 2 ** 30).toFixed(2)} GiB`

async function main (): Promise<void> {
  const options = parseOptions(process.argv.slice(2))
  if (options.child != null) return await childMain(options)

  const note = (msg: string): void => { process.stderr.write(msg + '\n') }
  const startedAt = new Date().toISOString()
  const loadAtStart = loadavg()
  note(`checkpoint: ${defaultCheckpointDir()}`)
  let checkpoint: CheckpointInfo
  try {
    checkpoint = ensureRandomCheckpoint(defaultCheckpointDir(), REPO_ROOT, TINYLLAMA_SHAPE, 1234, options.rebuild)
  } catch (err: any) {
    throw new Error(`could not build the random checkpoint: ${err?.message ?? String(err)}`)
  }
  note(checkpoint.reused
    ? `  reusing the cached checkpoint (${gib(checkpoint.bytes)})`
    : `  built ${gib(checkpoint.bytes)} of random BF16 weights in ${(checkpoint.buildMs / 1000).toFixed(1)} s`)

  const common = ['--threads', String(options.threads), '--prompt-tokens', String(options.promptTokens), '--decode-tokens', String(options.decodeTokens)]
  const perf: Array<ChildRun<PerfResult>> = []
  for (const quant of options.perf ? options.quants : []) {
    note(`measuring quant=${quant} in a fresh process…`)
    perf.push(await runChild<PerfResult>(['--child', 'perf', '--model-dir', checkpoint.dir, '--quant', quant, ...common], options.timeoutS))
  }

  const start = await measureStarts(options, checkpoint, note)

  const compared = options.quants.filter(q => q !== 'none')
  let agreement: ChildRun<AgreementResult> | undefined
  if (options.agreement && compared.length > 0) {
    note(`top-1 agreement of ${compared.join(', ')} with f32 on ${STORIES}…`)
    agreement = await runChild<AgreementResult>(['--child', 'agreement', '--model-dir', STORIES, '--quant', compared.join(','), '--threads', String(options.threads)], options.timeoutS)
  }

  const report = {
    startedAt,
    machine: { cores: availableParallelism(), loadAverageAtStart: loadAtStart },
    checkpoint: { ...checkpoint, shape: TINYLLAMA_SHAPE, dtype: 'BF16' },
    options: { quants: options.quants, promptTokens: options.promptTokens, decodeTokens: options.decodeTokens, threads: options.threads },
    perf: perf.map(run => ({ ...run.result, wallMs: run.wallMs, loadAverageBefore: run.loadBefore, loadAverageAfter: run.loadAfter })),
    agreement: agreement == null ? null : { ...agreement.result, wallMs: agreement.wallMs },
    start
  }
  if (options.json) {
    process.stdout.write(JSON.stringify(report) + '\n')
  } else {
    process.stdout.write(formatReport(options, checkpoint, perf, agreement) + '\n')
    if (start != null) process.stdout.write('\n' + formatStart(start) + '\n')
  }
  const failed = perf.some(r => r.result.kind === 'error') || agreement?.result.kind === 'error' || start?.error != null
  process.exitCode = failed ? 1 : 0
}

interface StartReport {
  /** A stories260k node per worker count the spans use: Node + libp2p + onnxruntime in that many span workers. */
  baselines: Record<number, StartRun>
  runs: Array<NodeStartResult & { workers: number }>
  error?: string
}

/**
 * `minga serve --blocks 0:22` cold and warm per quantization, in the span workers it takes by
 * default, plus the baseline of each worker count: a node serving stories260k (f32, a few hundred KB
 * of weights) in as many workers.
 */
async function measureStarts (options: Options, checkpoint: CheckpointInfo, note: (msg: string) => void): Promise<StartReport | undefined> {
  if (options.startQuants.length === 0) return undefined
  const cacheDir = join(dirname(checkpoint.dir), 'prepared-start')
  const startOptions = { threads: options.threads, cacheMb: 64, timeoutMs: options.timeoutS * 1000 }
  const report: StartReport = { baselines: {}, runs: [] }
  const config = loadModelConfig(checkpoint.dir)
  try {
    rmSync(cacheDir, { recursive: true, force: true })
    for (const quant of options.startQuants) {
      for (const workers of options.startWorkers.length > 0 ? options.startWorkers : [defaultSpanWorkers(config, quant, TINYLLAMA_SHAPE.numLayers)]) {
        const withWorkers = { ...startOptions, extraArgs: ['--workers', String(workers)] }
        if (report.baselines[workers] == null) {
          note(`node start: baseline (stories260k, f32, ${workers} span worker${workers === 1 ? '' : 's'}) × ${options.startRepeats}…`)
          await startServe(STORIES, [0, 5], 'none', cacheDir, withWorkers) // prepares it
          report.baselines[workers] = (await medianStart(options.startRepeats, async () => await startServe(STORIES, [0, 5], 'none', cacheDir, withWorkers))).median
        }
        note(`node start: [0, ${TINYLLAMA_SHAPE.numLayers}) at ${quant} in ${workers} span worker${workers === 1 ? '' : 's'}, cold then warm × ${options.startRepeats}…`)
        report.runs.push({ ...await measureNodeStart(checkpoint.dir, [0, TINYLLAMA_SHAPE.numLayers], quant, cacheDir, withWorkers, options.startRepeats), workers })
      }
    }
  } catch (err: any) {
    report.error = err?.message ?? String(err)
  } finally {
    rmSync(cacheDir, { recursive: true, force: true })
  }
  return report
}

function formatStart (start: StartReport): string {
  const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(0)} MiB`
  const lines = [`node start: minga serve --blocks 0:${TINYLLAMA_SHAPE.numLayers} --cache-mb 64 --throughput 1 --workers W (the default here), spawn → ready line; peak RSS = VmHWM at ready, anon / file = RssAnon / RssFile at ready`]
  for (const [workers, base] of Object.entries(start.baselines)) {
    lines.push(`  baseline, ${workers} span worker${workers === '1' ? '' : 's'} (Node + libp2p + onnxruntime: a node serving stories260k f32): peak RSS ${mib(base.peakRssBytes)} (anon ${mib(base.rssAnonBytes)}, file ${mib(base.rssFileBytes)}), ready in ${(base.readyMs / 1000).toFixed(2)} s`)
  }
  lines.push('  warm s: the median of the warm starts in a row (each run after it); baseline: the median of as many')
  lines.push('  warm − baseline s: what the span itself adds to a warm start (the rest is Node, module loading and libp2p)')
  lines.push(...table(['quant', 'W', 'prepared', 'cold s', 'warm s (each)', 'warm − baseline s', 'peak RSS cold', 'peak RSS warm', 'anon / file warm', '(warm − baseline) / prepared', '(cold − baseline) / prepared', 'anon ratio'], start.runs.map(r => {
    const base = start.baselines[r.workers]
    return [
      r.quant, String(r.workers), mib(r.preparedBytes), (r.cold.readyMs / 1000).toFixed(1),
      `${(r.warm.readyMs / 1000).toFixed(2)} (${r.warmReadyMs.map(ms => (ms / 1000).toFixed(2)).join(', ')})`, ((r.warm.readyMs - base.readyMs) / 1000).toFixed(1),
      mib(r.cold.peakRssBytes), mib(r.warm.peakRssBytes), `${mib(r.warm.rssAnonBytes)} / ${mib(r.warm.rssFileBytes)}`,
      ((r.warm.peakRssBytes - base.peakRssBytes) / r.preparedBytes).toFixed(3), ((r.cold.peakRssBytes - base.peakRssBytes) / r.preparedBytes).toFixed(3),
      ((r.warm.rssAnonBytes - base.rssAnonBytes) / r.preparedBytes).toFixed(3)
    ]
  })))
  if (start.error != null) lines.push(`  FAILED: ${start.error}`)
  return lines.join('\n')
}

function formatReport (options: Options, checkpoint: CheckpointInfo, perf: Array<ChildRun<PerfResult>>, agreement: ChildRun<AgreementResult> | undefined): string {
  const s = TINYLLAMA_SHAPE
  const lines: string[] = []
  lines.push(`minga engine benchmark — random TinyLlama-1.1B-shaped checkpoint (${(checkpoint.parameters / 1e9).toFixed(2)} B params, BF16 on disk)`)
  lines.push(`  ${checkpoint.dir}`)
  lines.push(`  hidden ${s.hiddenSize}, ${s.numLayers} layers, ${s.numHeads}/${s.numKvHeads} heads, FFN ${s.intermediateSize}, vocab ${s.vocabSize}; one span [0, ${s.numLayers}) + client head (f32), ${options.threads} threads each, ${availableParallelism()} cores`)
  lines.push('')
  const header = ['quant', 'load s', '(span+head)', `prefill tok/s (${options.promptTokens})`, `decode tok/s (${options.decodeTokens})`, 'span ms/tok', 'head ms/tok', 'peak RSS', 'load avg']
  const rows: string[][] = []
  const errors: string[] = []
  for (const run of perf) {
    const r = run.result
    if (r.kind === 'error') {
      rows.push([String(options.quants[perf.indexOf(run)]), 'FAILED', '', '', '', '', '', '', run.loadBefore.toFixed(2)])
      errors.push(`  ${options.quants[perf.indexOf(run)]}: ${r.message}`)
      continue
    }
    rows.push([
      r.quant + (r.logitsFinite ? '' : ' (NaN!)'),
      ((r.spanLoadMs + r.headLoadMs) / 1000).toFixed(1),
      `${(r.spanLoadMs / 1000).toFixed(1)}+${(r.headLoadMs / 1000).toFixed(1)}`,
      r.prefill.tokensPerSecond.toFixed(1),
      r.decode.tokensPerSecond.toFixed(2),
      r.decode.spanMsPerToken.toFixed(1),
      r.decode.headMsPerToken.toFixed(1),
      gib(r.peakRssBytes),
      `${run.loadBefore.toFixed(2)}→${run.loadAfter.toFixed(2)}`
    ])
  }
  lines.push(...table(header, rows))
  if (errors.length > 0) lines.push('', 'failures:', ...errors)
  if (agreement != null) {
    lines.push('')
    const a = agreement.result
    if (a.kind === 'error') {
      lines.push(`top-1 agreement on stories260k: FAILED — ${a.message}`)
    } else {
      lines.push(`top-1 agreement with f32 on stories260k, ${a.positions} teacher-forced positions of f32's greedy continuation of ${JSON.stringify(STORIES_PROMPT)}`)
      lines.push(`  (f32 teacher-forced vs its own greedy decode: ${a.f32SelfAgreement}/${a.positions}; the head stays f32)`)
      lines.push(...table(['quant', 'agree', 'rate', 'mean KL(f32‖q) nats'], a.quants.map(q => [q.quant, `${q.agree}/${a.positions}`, `${(100 * q.rate).toFixed(1)}%`, q.meanKl.toExponential(2)])))
      if (a.text !== '') lines.push(`  text: ${JSON.stringify(a.text.length > 100 ? a.text.slice(0, 100) + '…' : a.text)}`)
    }
  }
  return lines.join('\n')
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`)
  process.exitCode = 1
})
