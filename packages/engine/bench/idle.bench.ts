// Idle benchmark: how long one decode step of a span takes right after the previous one, and after
// the node sat idle for a while. In a chain of N servers each one idles while the others run, so a
// step arrives after (N − 1) spans' time; where a machine is slower to resume after idling, a
// swarm on it loses more than its network hops. Only the span runs (no head, no network).
//
//   pnpm bench:idle [--quant int4] [--blocks 0:8] [--threads 2] [--idle 0,10,20,40,80] [--steps 40] [--rounds 2]
//
// Idle values alternate within each round; medians per idle value are printed. See README.md.
import { loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { createSpanExecutor, loadModelConfig, QUANTIZATIONS, seededRandom, type Quantization } from '../src/index.ts'
import { cpuInfo, median } from './bench-helpers.ts'
import { defaultCheckpointDir, ensureRandomCheckpoint } from './random-checkpoint.ts'

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))

const { values: flags } = parseArgs({
  options: {
    quant: { type: 'string', default: 'int4' },
    blocks: { type: 'string', default: '0:8' },
    threads: { type: 'string', default: '2' },
    idle: { type: 'string', default: '0,10,20,40,80' },
    steps: { type: 'string', default: '40' },
    rounds: { type: 'string', default: '2' }
  }
})

const quant = flags.quant as Quantization
if (!QUANTIZATIONS.includes(quant)) throw new Error(`--quant ${flags.quant} is not one of ${QUANTIZATIONS.join(', ')}`)
const positive = (name: 'threads' | 'steps' | 'rounds'): number => {
  const value = Number(flags[name])
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} must be a positive integer, not ${String(flags[name])}`)
  return value
}
const THREADS = positive('threads')
const STEPS = positive('steps')
const ROUNDS = positive('rounds')
const IDLE_MS = flags.idle.split(',').map(Number)
if (IDLE_MS.some(ms => !Number.isFinite(ms) || ms < 0)) throw new Error(`--idle must list milliseconds ≥ 0, not ${flags.idle}`)
const blocks = /^(\d+):(\d+)$/.exec(flags.blocks)
if (blocks == null) throw new Error(`--blocks must be START:END, not ${flags.blocks}`)
const [start, end] = [Number(blocks[1]), Number(blocks[2])]

const log = (message: string): void => { process.stderr.write(`${message}\n`) }
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

const checkpoint = ensureRandomCheckpoint(defaultCheckpointDir(), REPO_ROOT)
const config = loadModelConfig(checkpoint.dir)
if (!(start < end && end <= config.numLayers)) throw new Error(`--blocks ${flags.blocks} is not within the model's ${config.numLayers} layers`)
const machine = cpuInfo()
const loadBefore = loadavg()
log(`${machine.model}, ${machine.cores} cores, ${machine.flags.join(' ')}; load ${loadBefore.map(l => l.toFixed(2)).join(' ')}`)
log(`loading [${start}, ${end}) ${quant} of ${checkpoint.dir}, ${THREADS} threads, one worker…`)
const span = await createSpanExecutor({ modelDir: checkpoint.dir, start, end, quant, threads: THREADS, workers: 1 })
const random = seededRandom(7)
const rows = (tokens: number): Float32Array => Float32Array.from({ length: tokens * config.hiddenSize }, () => (random() - 0.5) * 0.1)

/** ms of each of STEPS decode steps, each after `idleMs` of nothing. */
async function stepsAfterIdle (idleMs: number, id: string): Promise<number[]> {
  await span.openSession(id, 16 + STEPS)
  try {
    await span.forward(id, rows(16), { tokens: 16, position: 0 })
    const times: number[] = []
    for (let step = 0; step < STEPS; step++) {
      const hidden = rows(1)
      if (idleMs > 0) await sleep(idleMs)
      const started = performance.now()
      await span.forward(id, hidden, { tokens: 1, position: 16 + step })
      times.push(performance.now() - started)
    }
    return times
  } finally {
    await span.closeSession(id)
  }
}

const byIdle = new Map<number, number[]>(IDLE_MS.map(ms => [ms, []]))
try {
  await stepsAfterIdle(0, 'warm-up')
  for (let round = 1; round <= ROUNDS; round++) {
    for (const ms of IDLE_MS) {
      const times = await stepsAfterIdle(ms, `r${round}-idle${ms}`)
      byIdle.get(ms)!.push(...times)
      log(`round ${round}/${ROUNDS}, idle ${ms} ms: median step ${median(times).toFixed(2)} ms`)
    }
  }
} finally {
  await span.close()
}

const back = median(byIdle.get(IDLE_MS[0])!)
process.stdout.write([
  `minga bench:idle — [${start}, ${end}) ${quant} of the TinyLlama-shaped checkpoint, ${THREADS} threads, ${STEPS} decode steps × ${ROUNDS} rounds per idle value`,
  `CPU: ${machine.model}, ${machine.cores} cores, flags ${machine.flags.join(' ')}; load ${loadBefore.map(l => l.toFixed(2)).join(' ')} → ${loadavg().map(l => l.toFixed(2)).join(' ')}`,
  '',
  '| idle before each step, ms | median step ms | p90 ms | × the first row |',
  '|---|---|---|---|',
  ...IDLE_MS.map(ms => {
    const times = [...byIdle.get(ms)!].sort((a, b) => a - b)
    const p90 = times[Math.min(times.length - 1, Math.floor(times.length * 0.9))]
    return `| ${ms} | ${median(times).toFixed(2)} | ${p90.toFixed(2)} | ${(median(times) / back).toFixed(2)} |`
  }),
  ''
].join('\n'))
