// Batching benchmark: aggregate decode tok/s of 1 session vs N concurrent sessions on one span
// executor holding a whole TinyLlama-1.1B-shaped model (random weights), int4 by default. Only the
// span runs (no head, no network): what one server delivers. 1 and N alternate, medians are printed.
//
//   pnpm bench:batch [--quant int4] [--sessions 8] [--decode-tokens 32] [--prompt-tokens 16]
//                    [--rounds 3] [--threads 2] [--batch-wait 50] [--rows | --rows7] [--workers N] [--json]
//
// --rows runs int8 layers in the per-row format (ROW_INT8) instead of MatMulNBits' blocks, --rows7
// in its 7-bit uint8 × int8 form (ROW_INT7);
// --workers splits the span into N workers instead of defaultSpanWorkers' choice.
// See README.md next to this file.
import { join } from 'node:path'
import { homedir, loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { createSpanExecutor, DEFAULT_BATCH_WAIT_MS, defaultSpanWorkers, formatLabel, loadModelConfig, QUANTIZATIONS, ROW_INT7, ROW_INT8, seededRandom, type Quantization, type SpanExecutor } from '../src/index.ts'
import { quantFormat } from '../src/quantize.ts'
import { cpuInfo, median } from './bench-helpers.ts'
import { defaultCheckpointDir, ensureRandomCheckpoint } from './random-checkpoint.ts'

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))

const { values: flags } = parseArgs({
  options: {
    quant: { type: 'string', default: 'int4' },
    sessions: { type: 'string', default: '8' },
    'decode-tokens': { type: 'string', default: '32' },
    'prompt-tokens': { type: 'string', default: '16' },
    rounds: { type: 'string', default: '3' },
    threads: { type: 'string', default: '2' },
    'batch-wait': { type: 'string', default: String(DEFAULT_BATCH_WAIT_MS) },
    rows: { type: 'boolean', default: false },
    rows7: { type: 'boolean', default: false },
    workers: { type: 'string' },
    json: { type: 'boolean', default: false }
  }
})

const quant = flags.quant as Quantization
if (!QUANTIZATIONS.includes(quant)) throw new Error(`--quant ${flags.quant} is not one of ${QUANTIZATIONS.join(', ')}`)
if ((flags.rows || flags.rows7) && quant !== 'int8') throw new Error(`--rows and --rows7 are formats of int8, not of ${quant}`)
const format = flags.rows7 ? ROW_INT7 : flags.rows ? ROW_INT8 : undefined
const FORMAT_LABEL = formatLabel(quantFormat(quant, format))
const count = (name: keyof typeof flags): number => {
  const value = Number(flags[name])
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} must be a positive integer, not ${String(flags[name])}`)
  return value
}
const SESSIONS = count('sessions')
const DECODE = count('decode-tokens')
const PROMPT = count('prompt-tokens')
const ROUNDS = count('rounds')
const THREADS = count('threads')
const BATCH_WAIT = Number(flags['batch-wait'])
const WORKERS = flags.workers == null ? undefined : count('workers')

const log = (message: string): void => { process.stderr.write(`${message}\n`) }

interface Run { sessions: number, tokens: number, seconds: number, tokensPerSecond: number, meanBatch: number }

/** `sessions` sessions decode DECODE tokens each at once (after a PROMPT-token prefill); decode tok/s of all. */
async function decodeTogether (span: SpanExecutor, sessions: number, round: number, random: () => number): Promise<Run> {
  const { hiddenSize } = span.config
  const rows = (tokens: number): Float32Array => Float32Array.from({ length: tokens * hiddenSize }, () => (random() - 0.5) * 0.1)
  const ids = Array.from({ length: sessions }, (_, i) => `r${round}-n${sessions}-s${i}`)
  for (const id of ids) await span.openSession(id, PROMPT + DECODE)
  try {
    // prefills stay out of the measurement: they run first, one after another
    for (const id of ids) await span.forward(id, rows(PROMPT), { tokens: PROMPT, position: 0 })
    const before = await span.stats()
    const started = performance.now()
    await Promise.all(ids.map(async id => {
      for (let step = 0; step < DECODE; step++) await span.forward(id, rows(1), { tokens: 1, position: PROMPT + step })
    }))
    const seconds = (performance.now() - started) / 1000
    const after = await span.stats()
    const tokens = sessions * DECODE
    return { sessions, tokens, seconds, tokensPerSecond: tokens / seconds, meanBatch: (after.steps - before.steps) / (after.batches - before.batches) }
  } finally {
    for (const id of ids) await span.closeSession(id)
  }
}

const checkpoint = ensureRandomCheckpoint(defaultCheckpointDir(), REPO_ROOT)
const config = loadModelConfig(checkpoint.dir)
const machine = cpuInfo()
const loadBefore = loadavg()
log(`${checkpoint.reused ? 'reusing' : 'built'} ${checkpoint.dir}; ${machine.model}, ${machine.cores} cores, ${machine.flags.join(' ')}; load ${loadBefore.map(l => l.toFixed(2)).join(' ')}`)
// its own prepared cache: preparing the layers once, kept for the next run
const cacheDir = join(process.env.MINGA_CACHE ?? join(homedir(), '.cache', 'minga'), 'bench', 'batch-cache')
let started = performance.now()
const span = await createSpanExecutor({
  modelDir: checkpoint.dir,
  cacheDir,
  start: 0,
  end: config.numLayers,
  quant,
  format,
  workers: WORKERS,
  threads: THREADS,
  maxSessions: SESSIONS + 1,
  batchWaitMs: BATCH_WAIT,
  onPrepareProgress: p => { log(`  prepared layer ${p.layer} (${p.done}/${p.total})`) }
})
log(`span [0, ${config.numLayers}) ${quant} ${FORMAT_LABEL} loaded in ${((performance.now() - started) / 1000).toFixed(1)} s`)
const runs: Run[] = []
try {
  const random = seededRandom(7)
  await decodeTogether(span, Math.min(2, SESSIONS), -1, random) // warm-up: ORT's first runs
  for (let round = 0; round < ROUNDS; round++) {
    for (const sessions of SESSIONS === 1 ? [1] : [1, SESSIONS]) {
      started = performance.now()
      const run = await decodeTogether(span, sessions, round, random)
      runs.push(run)
      log(`  round ${round + 1}/${ROUNDS}: ${sessions} session(s): ${run.tokensPerSecond.toFixed(1)} tok/s (mean batch ${run.meanBatch.toFixed(2)})`)
    }
  }
} finally {
  await span.close()
}
const loadAfter = loadavg()

const summary = (sessions: number): { sessions: number, tokensPerSecond: number, meanBatch: number, runs: number[] } => {
  const own = runs.filter(r => r.sessions === sessions)
  return { sessions, tokensPerSecond: median(own.map(r => r.tokensPerSecond)), meanBatch: median(own.map(r => r.meanBatch)), runs: own.map(r => r.tokensPerSecond) }
}
const one = summary(1)
const many = summary(SESSIONS)
const result = {
  model: `TinyLlama-1.1B-shaped, random weights (${checkpoint.dir})`,
  quant,
  format: FORMAT_LABEL,
  workers: WORKERS ?? defaultSpanWorkers(config, quant, config.numLayers, format),
  threads: THREADS,
  batchWaitMs: BATCH_WAIT,
  promptTokens: PROMPT,
  decodeTokens: DECODE,
  rounds: ROUNDS,
  machine: { ...machine, loadBefore, loadAfter },
  one,
  many,
  speedup: many.tokensPerSecond / one.tokensPerSecond
}
if (flags.json) {
  process.stdout.write(JSON.stringify(result, null, 2) + '\n')
} else {
  const row = (s: typeof one): string => `| ${s.sessions} | ${s.tokensPerSecond.toFixed(1)} | ${(s.tokensPerSecond / s.sessions).toFixed(1)} | ${s.meanBatch.toFixed(2)} | ${s.runs.map(r => r.toFixed(1)).join(', ')} |`
  process.stdout.write([
    `Batching, ${result.model}, ${quant} ${result.format}, ${result.workers} worker(s), ${THREADS} threads, batch wait ${BATCH_WAIT} ms, ${DECODE} decode tokens per session after ${PROMPT}-token prefills, median of ${ROUNDS}`,
    `CPU: ${machine.model}, ${machine.cores} cores, flags ${machine.flags.join(' ')}`,
    `load average before: ${loadBefore.map(l => l.toFixed(2)).join(' ')}; after: ${loadAfter.map(l => l.toFixed(2)).join(' ')}`,
    '',
    '| sessions | aggregate decode tok/s | per session tok/s | mean batch | runs (tok/s) |',
    '|---|---|---|---|---|',
    row(one),
    ...(SESSIONS === 1 ? [] : [row(many)]),
    '',
    `${SESSIONS} sessions ÷ 1 session: ${result.speedup.toFixed(2)}×`,
    ''
  ].join('\n'))
}
