// Client head benchmark: what the part of the model a client keeps (embeddings, final norm, LM head)
// costs per token and in memory, per head quantization, on the TinyLlama-1.1B-shaped random
// checkpoint (vocab 32000 × hidden 2048, untied head) that bench:engine builds.
//
//   pnpm bench:head [--quant none,int8,int4] [--tokens 64] [--threads 2] [--repeats 3] [--cold] [--json]
//
// A quantization may name a block format instead of the head's own (HEAD_QUANT_FORMATS), e.g.
// `--quant int8,int8:b128` to compare the per-row int8 head with block 128 in one run.
// Each configuration runs in its own child process, so its RSS is its own. The runtime baseline is
// the same child holding stories260k's head (38 KB of weights): Node, a worker thread, onnxruntime.
// --cold adds a run per quantization that prepares its head first, in a new cache folder, as a
// client's first start on a machine does.
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { createClientHead, createLogitsBuffer, QUANTIZATIONS, ROW_INT7, ROW_INT8, seededRandom, type BlockFormat, type QuantFormat, type Quantization } from '../src/index.ts'
import { defaultCheckpointDir, ensureRandomCheckpoint } from './random-checkpoint.ts'
import { median } from './bench-helpers.ts'

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const STORIES = fileURLToPath(new URL('../../../../shared/models/stories260k', import.meta.url))
const RESULT_PREFIX = '@@minga-head-bench '

interface HeadResult {
  model: string
  /** The quantization, with a block format if one was named (`int8:b128`). */
  head: string
  /** Whether the head was prepared by this run (--cold). */
  cold: boolean
  loadMs: number
  preparedBytes: number
  /** embed one token + final norm + LM head on one hidden state, mean over the measured steps. */
  msPerToken: number
  embedMsPerToken: number
  /** RSS just before the head is created: Node, tsx and this script, the same in every child. */
  startRssBytes: number
  rssBytes: number
  peakRssBytes: number
}

function procStatus (field: 'VmHWM' | 'VmRSS'): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'))
  return match == null ? NaN : Number(match[1]) * 1024
}

/** `int8`, `int8:b128` (a block format with zero points instead of the head's own), `int8:rows` or `int8:rows7`. */
function parseHeadSpec (spec: string): { headQuant: Quantization, headFormat?: QuantFormat } {
  const [quant, block] = spec.split(':')
  if (!(QUANTIZATIONS as string[]).includes(quant)) throw new RangeError(`--quant: ${JSON.stringify(quant)} is not one of ${QUANTIZATIONS.join(', ')}`)
  const headQuant = quant as Quantization
  if (block == null) return { headQuant }
  if (headQuant === 'int8' && block === 'rows') return { headQuant, headFormat: ROW_INT8 }
  if (headQuant === 'int8' && block === 'rows7') return { headQuant, headFormat: ROW_INT7 }
  const blockSize = Number(block.replace(/^b/, ''))
  if (headQuant === 'none' || ![16, 32, 64, 128, 256].includes(blockSize)) throw new RangeError(`--quant: ${JSON.stringify(spec)} is not int8|int4:bBLOCK (e.g. int8:b128), int8:rows or int8:rows7`)
  return { headQuant, headFormat: { bits: headQuant === 'int4' ? 4 : 8, blockSize: blockSize as BlockFormat['blockSize'], zeroPoints: true } }
}

async function measure (modelDir: string, spec: string, tokens: number, threads: number, cacheDir?: string): Promise<HeadResult> {
  const { headQuant, headFormat } = parseHeadSpec(spec)
  const startRssBytes = procStatus('VmRSS')
  let t = performance.now()
  const head = await createClientHead({ modelDir, headQuant, headFormat, threads, cacheDir })
  const loadMs = performance.now() - t
  try {
    const { vocabSize, hiddenSize } = head.config
    const random = seededRandom(1)
    const hidden = (): Float32Array => Float32Array.from({ length: hiddenSize }, () => random() * 2 - 1)
    const id = (): number => Math.floor(random() * vocabSize)
    // as a generation does: logits into one buffer, reused from token to token
    const logits = createLogitsBuffer(head.config)
    for (let i = 0; i < 4; i++) { await head.embed([id()]); await head.logits(hidden(), 1, logits) } // warm-up
    let embedMs = 0
    let totalMs = 0
    for (let i = 0; i < tokens; i++) {
      const input = hidden()
      t = performance.now()
      await head.embed([id()])
      const t1 = performance.now()
      await head.logits(input, 1, logits)
      embedMs += t1 - t
      totalMs += performance.now() - t
    }
    return {
      model: modelDir,
      head: spec,
      cold: cacheDir != null,
      loadMs,
      preparedBytes: head.preparedBytes,
      msPerToken: totalMs / tokens,
      embedMsPerToken: embedMs / tokens,
      startRssBytes,
      rssBytes: procStatus('VmRSS'),
      peakRssBytes: procStatus('VmHWM')
    }
  } finally {
    await head.close()
  }
}

async function runChild (args: string[]): Promise<HeadResult> {
  const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
  let stdout = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  const code = await new Promise(resolve => child.on('close', resolve))
  const line = stdout.split('\n').find(l => l.startsWith(RESULT_PREFIX))
  if (line == null) throw new Error(`head bench child ${args.join(' ')} exited (${String(code)}) without a result`)
  return JSON.parse(line.slice(RESULT_PREFIX.length))
}

const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      quant: { type: 'string', default: QUANTIZATIONS.join(',') },
      tokens: { type: 'string', default: '64' },
      threads: { type: 'string', default: '2' },
      json: { type: 'boolean', default: false },
      cold: { type: 'boolean', default: false },
      repeats: { type: 'string', default: '3' },
      child: { type: 'string' },
      'model-dir': { type: 'string' },
      'cache-dir': { type: 'string' }
    }
  })
  const tokens = Number(values.tokens)
  const threads = Number(values.threads)
  const repeats = Number(values.repeats)
  if (!(Number.isInteger(repeats) && repeats >= 1)) throw new RangeError(`--repeats must be a whole number ≥ 1, got ${values.repeats}`)
  if (values.child != null) {
    const result = await measure(values['model-dir']!, values.child, tokens, threads, values['cache-dir'])
    process.stdout.write(RESULT_PREFIX + JSON.stringify(result) + '\n')
    return
  }
  const checkpoint = ensureRandomCheckpoint(defaultCheckpointDir(), REPO_ROOT)
  const common = ['--tokens', String(tokens), '--threads', String(threads)]
  const quants = values.quant.split(',')
  for (const quant of quants) parseHeadSpec(quant) // a bad --quant fails before any child runs
  const configs = quants.flatMap(quant => values.cold ? [{ quant, cold: false }, { quant, cold: true }] : [{ quant, cold: false }])
  // Rounds alternate the baseline with every configuration: the baseline alone moves by several MiB
  // from run to run, so each configuration is compared with its own round's baseline.
  const rounds: Array<{ baseline: HeadResult, results: HeadResult[] }> = []
  for (let round = 1; round <= repeats; round++) {
    process.stderr.write(`round ${round}/${repeats}: baseline (stories260k int8 head)\n`)
    const baseline = await runChild(['--child', 'int8', '--model-dir', STORIES, ...common])
    const results: HeadResult[] = []
    for (const { quant, cold } of configs) {
      process.stderr.write(`round ${round}/${repeats}: TinyLlama-shaped head, ${quant}${cold ? ', prepared first' : ''}\n`)
      results.push(cold ? await coldChild(['--child', quant, '--model-dir', checkpoint.dir, ...common]) : await runChild(['--child', quant, '--model-dir', checkpoint.dir, ...common]))
    }
    rounds.push({ baseline, results })
  }
  if (values.json) {
    process.stdout.write(JSON.stringify({ rounds }) + '\n')
    return
  }
  const baselines = rounds.map(r => r.baseline)
  process.stdout.write(`runtime baseline (stories260k head, ${baselines[0].preparedBytes} B of weights), median of ${repeats}: RSS ${mib(median(baselines.map(b => b.rssBytes)))}, peak ${mib(median(baselines.map(b => b.peakRssBytes)))}, before the head ${mib(median(baselines.map(b => b.startRssBytes)))}\n`)
  process.stdout.write('over = growth since the child\'s start − the baseline\'s growth in the same round − prepared bytes\n')
  process.stdout.write('head           load s  ms/token (embed)  prepared    RSS        peak RSS   over (each round)                        peak over\n')
  for (const [i, { quant, cold }] of configs.entries()) {
    const runs = rounds.map(r => r.results[i])
    const m = (f: (r: HeadResult) => number): number => median(runs.map(f))
    // growth from each child's own start: what runs before the head is the same code in every child,
    // yet its RSS moves by a few MiB from process to process, which would otherwise swamp the figure
    const grown = (r: HeadResult, bytes: number): number => bytes - r.startRssBytes
    const over = rounds.map(({ baseline, results }) => grown(results[i], results[i].rssBytes) - grown(baseline, baseline.rssBytes) - results[i].preparedBytes)
    const peakOver = rounds.map(({ baseline, results }) => grown(results[i], results[i].peakRssBytes) - grown(baseline, baseline.peakRssBytes) - results[i].preparedBytes)
    const overText = `${mib(median(over))} (${over.map(b => (b / 2 ** 20).toFixed(1)).join(', ')})`
    process.stdout.write(`${(quant + (cold ? ' cold' : '')).padEnd(14)} ${(m(r => r.loadMs) / 1000).toFixed(1).padStart(6)}  ${m(r => r.msPerToken).toFixed(2).padStart(8)} (${m(r => r.embedMsPerToken).toFixed(2)})   ${mib(runs[0].preparedBytes).padEnd(10)}  ${mib(m(r => r.rssBytes)).padEnd(10)} ${mib(m(r => r.peakRssBytes)).padEnd(10)} ${overText.padEnd(40)} ${mib(median(peakOver))}\n`)
  }
}

/** A child that prepares its head first, in a new cache folder, as a client's first start does. */
async function coldChild (args: string[]): Promise<HeadResult> {
  const cacheDir = mkdtempSync(join(tmpdir(), 'minga-head-bench-'))
  try {
    return await runChild([...args, '--cache-dir', cacheDir])
  } finally {
    rmSync(cacheDir, { recursive: true, force: true })
  }
}

await main()
