// Quantization formats: MatMulNBits block size and zero points (asymmetric) or none (symmetric),
// per format: span-only prefill and decode speed of the TinyLlama-shaped [0, 22) and top-1 agreement
// with f32 over 200 teacher-forced positions on stories260k (and, with --tinyllama-agreement, on the
// random TinyLlama checkpoint over 200 random tokens). All formats are prepared first, then measured
// round-robin (--rounds N, the median is reported), so a change in the machine's load hits every format
// alike. The prepared spans live in a temporary cache folder, removed at the end, or in --cache-dir,
// kept (~0.6 GB per int4 format, ~1.2 GB per int8 one), so that later runs only measure.
//
//   pnpm bench:quant [--formats int4:32:zp,int4:128:sym,…] [--rounds 3] [--cache-dir DIR]
//                    [--skip-perf] [--skip-agreement] [--tinyllama-agreement]
//
// Run it under `flock /tmp/minga-bench.lock`. See README.md next to this file.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import {
  argmax, createClientHead, createSpanExecutor, formatLabel, loadModelConfig, prepareSpan, ROW_INT7, ROW_INT8, seededRandom,
  type BlockFormat, type ClientHead, type QuantFormat, type Quantization, type SpanExecutor
} from '../src/index.ts'
import { agreementWith, median, textTable } from './bench-helpers.ts'
import { defaultCheckpointDir, ensureRandomCheckpoint, TINYLLAMA_SHAPE } from './random-checkpoint.ts'

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const STORIES = fileURLToPath(new URL('../../../../shared/models/stories260k', import.meta.url))
/** "Once upon a time" in stories260k's tokenizer, with BOS. */
const STORIES_PROMPT = [1, 403, 407, 261, 378]
const POSITIONS = 200

interface Variant { quant: Exclude<Quantization, 'none'>, format: QuantFormat }

const ALL_FORMATS = ['int4', 'int8'].flatMap(q => [32, 64, 128].flatMap(b => [`${q}:${b}:zp`, `${q}:${b}:sym`])).join(',')

function parseVariant (text: string): Variant {
  const [quant, block, zp] = text.split(':')
  if (quant === 'int8' && block === 'rows' && zp == null) return { quant, format: ROW_INT8 }
  if (quant === 'int8' && block === 'rows7' && zp == null) return { quant, format: ROW_INT7 }
  const blockSize = Number(block)
  if (!(quant === 'int4' || quant === 'int8') || ![16, 32, 64, 128, 256].includes(blockSize) || !(zp === 'zp' || zp === 'sym')) {
    throw new Error(`--formats: ${JSON.stringify(text)} is not QUANT:BLOCK:zp|sym (e.g. int4:128:sym) or int8:rows|rows7`)
  }
  return { quant, format: { bits: quant === 'int4' ? 4 : 8, blockSize: blockSize as BlockFormat['blockSize'], zeroPoints: zp === 'zp' } }
}

const name = (v: Variant): string => `${v.quant} ${formatLabel(v.format)}`

interface Perf { prefillTokPerS: number, decodeTokPerS: number, decodeMsPerToken: number, preparedBytes: number }
interface Agreement { agree: number, meanKl: number }

async function measurePerf (modelDir: string, v: Variant, cacheDir: string, promptTokens: number, decodeTokens: number): Promise<Perf> {
  const config = loadModelConfig(modelDir)
  const span = await createSpanExecutor({ modelDir, start: 0, end: config.numLayers, quant: v.quant, format: v.format, cacheDir, threads: 2 })
  try {
    const random = seededRandom(42)
    const rows = (n: number): Float32Array => Float32Array.from({ length: n * config.hiddenSize }, () => (random() * 2 - 1) * 0.05)
    await span.openSession('warmup', 16) // ORT's first-run allocations stay out of the figures
    await span.forward('warmup', rows(8), { tokens: 8 })
    await span.forward('warmup', rows(1), { tokens: 1 })
    await span.closeSession('warmup')
    await span.openSession('bench', promptTokens + decodeTokens)
    const prompt = rows(promptTokens)
    let t = performance.now()
    await span.forward('bench', prompt, { tokens: promptTokens })
    const prefillMs = performance.now() - t
    let decodeMs = 0
    for (let i = 0; i < decodeTokens; i++) {
      const x = rows(1)
      t = performance.now()
      await span.forward('bench', x, { tokens: 1 })
      decodeMs += performance.now() - t
    }
    return { prefillTokPerS: promptTokens / (prefillMs / 1000), decodeTokPerS: decodeTokens / (decodeMs / 1000), decodeMsPerToken: decodeMs / decodeTokens, preparedBytes: span.preparedBytes }
  } finally {
    await span.close()
  }
}

/** Logits of every position of `ids`, run through the whole model in one prefill. */
async function teacherForced (span: SpanExecutor, head: ClientHead, ids: number[]): Promise<Float32Array> {
  await span.openSession('tf', ids.length)
  try {
    return await head.logits(await span.forward('tf', await head.embed(ids), { tokens: ids.length }), ids.length)
  } finally {
    await span.closeSession('tf')
  }
}

/** f32's logits over `sequence` and how each variant's top-1 compares (the head stays f32). */
async function measureAgreement (modelDir: string, sequence: (span: SpanExecutor, head: ClientHead) => Promise<number[]>, variants: Variant[], cacheDir: string, log: (m: string) => void): Promise<Agreement[]> {
  const config = loadModelConfig(modelDir)
  const vocab = config.vocabSize
  const head = await createClientHead({ modelDir, headQuant: 'none', cacheDir, threads: 2 })
  const open = async (v?: Variant): Promise<SpanExecutor> =>
    await createSpanExecutor({ modelDir, start: 0, end: config.numLayers, quant: v?.quant ?? 'none', format: v?.format, cacheDir, threads: 2 })
  try {
    const f32 = await open()
    let ids: number[]
    let reference: Float32Array
    try {
      ids = await sequence(f32, head)
      reference = await teacherForced(f32, head, ids)
    } finally {
      await f32.close()
    }
    // The last POSITIONS positions each predict the next token.
    const positions = Array.from({ length: POSITIONS }, (_, i) => ids.length - 1 - POSITIONS + i)
    const results: Agreement[] = []
    for (const v of variants) {
      const span = await open(v)
      try {
        const { agree, meanKl } = agreementWith(reference, await teacherForced(span, head, ids), vocab, positions)
        results.push({ agree, meanKl })
        log(`  ${name(v)}: ${agree}/${POSITIONS} agree with f32`)
      } finally {
        await span.close()
      }
    }
    return results
  } finally {
    await head.close()
  }
}

/** f32's greedy continuation of the stories prompt, decoded token by token. */
async function storiesGreedy (f32: SpanExecutor, head: ClientHead): Promise<number[]> {
  const ids = [...STORIES_PROMPT]
  await f32.openSession('greedy', STORIES_PROMPT.length + POSITIONS)
  try {
    let hidden = await f32.forward('greedy', await head.embed(ids), { tokens: ids.length })
    hidden = hidden.slice(hidden.length - head.config.hiddenSize)
    while (ids.length < STORIES_PROMPT.length + POSITIONS) {
      ids.push(argmax(await head.logits(hidden, 1)))
      hidden = await f32.forward('greedy', await head.embed([ids[ids.length - 1]]), { tokens: 1 })
    }
    return ids
  } finally {
    await f32.closeSession('greedy')
  }
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      formats: { type: 'string', default: ALL_FORMATS },
      'prompt-tokens': { type: 'string', default: '128' },
      'decode-tokens': { type: 'string', default: '32' },
      rounds: { type: 'string', default: '1' },
      'cache-dir': { type: 'string' },
      'skip-perf': { type: 'boolean' },
      'skip-agreement': { type: 'boolean' },
      'tinyllama-agreement': { type: 'boolean' },
      json: { type: 'boolean' }
    }
  })
  const variants = values.formats.split(',').filter(f => f !== '').map(parseVariant)
  const promptTokens = Number(values['prompt-tokens'])
  const decodeTokens = Number(values['decode-tokens'])
  const log = (m: string): void => { process.stderr.write(m + '\n') }
  const rounds = Number(values.rounds)
  const keep = values['cache-dir'] != null
  const cacheDir = keep ? values['cache-dir'] as string : mkdtempSync(join(tmpdir(), 'minga-quant-bench-'))
  mkdirSync(cacheDir, { recursive: true })
  const tinyllama = ensureRandomCheckpoint(defaultCheckpointDir(), REPO_ROOT, TINYLLAMA_SHAPE).dir
  const perf: Array<Perf | undefined> = []
  let stories: Agreement[] | undefined
  let random: Agreement[] | undefined
  try {
    if (values['skip-agreement'] !== true) {
      log(`stories260k agreement over ${POSITIONS} teacher-forced positions…`)
      stories = await measureAgreement(STORIES, storiesGreedy, variants, cacheDir, log)
    }
    if (values['tinyllama-agreement'] === true) {
      log(`TinyLlama random agreement over ${POSITIONS} random tokens (f32 prepares 4.4 GB)…`)
      const r = seededRandom(7)
      const ids = [1, ...Array.from({ length: POSITIONS }, () => 3 + Math.floor(r() * (TINYLLAMA_SHAPE.vocabSize - 3)))]
      random = await measureAgreement(tinyllama, async () => ids, variants, cacheDir, log)
    }
    const measured = values['skip-perf'] === true ? [] : variants
    for (const v of measured) {
      log(`${name(v)}: preparing [0, ${TINYLLAMA_SHAPE.numLayers}) of ${tinyllama}…`)
      await prepareSpan({ modelDir: tinyllama, start: 0, end: TINYLLAMA_SHAPE.numLayers, quant: v.quant, format: v.format, cacheDir })
    }
    const runs: Perf[][] = measured.map(() => [])
    for (let round = 0; round < rounds; round++) {
      for (const [i, v] of measured.entries()) {
        runs[i].push(await measurePerf(tinyllama, v, cacheDir, promptTokens, decodeTokens))
        log(`  round ${round + 1}, ${name(v)}: decode ${runs[i][round].decodeMsPerToken.toFixed(1)} ms/token, prefill ${runs[i][round].prefillTokPerS.toFixed(1)} tok/s`)
      }
    }
    for (const r of runs) {
      if (r.length === 0) continue // --rounds 0: only prepare
      perf.push({
        prefillTokPerS: median(r.map(x => x.prefillTokPerS)),
        decodeTokPerS: median(r.map(x => x.decodeTokPerS)),
        decodeMsPerToken: median(r.map(x => x.decodeMsPerToken)),
        preparedBytes: r[0].preparedBytes
      })
    }
  } finally {
    if (!keep) rmSync(cacheDir, { recursive: true, force: true })
  }
  const rows = variants.map((v, i) => ({ variant: name(v), ...perf[i], stories: stories?.[i], random: random?.[i] }))
  if (values.json === true) {
    process.stdout.write(JSON.stringify({ promptTokens, decodeTokens, rounds, positions: POSITIONS, rows }) + '\n')
    return
  }
  const pct = (a?: Agreement): string => a == null ? '' : `${a.agree}/${POSITIONS} (${(100 * a.agree / POSITIONS).toFixed(1)}%)`
  process.stdout.write(textTable(
    ['format', `prefill tok/s (${promptTokens}, median of ${rounds})`, `decode tok/s (${decodeTokens})`, 'span ms/tok', 'prepared MiB', 'stories260k agree', 'KL', 'TinyLlama-random agree', 'KL'],
    rows.map(r => [r.variant, r.prefillTokPerS?.toFixed(1) ?? '', r.decodeTokPerS?.toFixed(2) ?? '', r.decodeMsPerToken?.toFixed(1) ?? '',
      r.preparedBytes == null ? '' : (r.preparedBytes / 2 ** 20).toFixed(0), pct(r.stories), r.stories?.meanKl.toExponential(2) ?? '', pct(r.random), r.random?.meanKl.toExponential(2) ?? ''])
  ).join('\n') + '\n')
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  process.exitCode = 1
})
