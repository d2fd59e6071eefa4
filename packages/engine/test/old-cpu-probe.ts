// Run by old-cpu.spec.ts natively and under qemu-user's CPU emulation, where onnxruntime picks
// other kernels (no AVX2, or no AVX-512). Prints one JSON line (ProbeResult) on stdout.
//
//   node --import tsx packages/engine/test/old-cpu-probe.ts --tokens 40 [--generate none,int8,int4]
//     [--teacher-int4 ID,ID,...] [--matmul-case DIR] [--rows-case DIR]
//
// --generate: greedy stories260k ids per quantization (layers and head both at that quantization).
// --teacher-int4: the int4 model's top-1 at each step of decoding that sequence one token at a time.
// --matmul-case: run the int4 MatMulNBits written by writeMatmulCase (real layer width, M = 1).
// --rows-case: run the per-row int8 linears (uint8 and int7 weights) written by writeRowsCase.
// Everything expensive in JavaScript (random weights, quantizing, the reference matmul) is done by
// the host in writeMatmulCase: under emulation only onnxruntime's kernels run.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import * as ort from 'onnxruntime-node'
import { argmax, createLocalModel, seededRandom, untilDone, type Quantization } from '../src/index.ts'
import { matMulNBits } from '../src/graph/matmul-nbits.ts'
import { GraphBuilder } from '../src/graph/onnx.ts'
import { QUANT_FORMATS, quantizeBlockwise, quantizedLayout, quantizePerRow, type BlockFormat, type QuantizedWeight } from '../src/quantize.ts'
import { sessionOptions } from '../src/worker/ort-options.ts'
import { rowsLinearModel, STORIES, STORIES_PROMPT_IDS } from './helpers.ts'

export interface ProbeResult {
  ids: Partial<Record<Quantization, number[]>>
  teacherInt4?: number[]
  matmul?: { k: number, n: number, bits: number, y: number[], relativeError: number }
  /** The per-row int8 linears' outputs for two rows (M = 2): integer arithmetic, so equal on every CPU. */
  rows?: { uint8: number[], int7: number[] }
}

interface MatmulMeta { k: number, n: number, format: BlockFormat, blocksPerRow: number }

/** A TinyLlama-width projection (hidden 2048 → FFN 5632), int4 in its format (with zero points: issue #29853), one token. */
export function writeMatmulCase (dir: string, k = 2048, n = 5632, format: BlockFormat = QUANT_FORMATS.int4): void {
  const random = seededRandom(7)
  const weight = Float32Array.from({ length: n * k }, () => (random() * 2 - 1) * 0.05 + 0.01)
  const x = Float32Array.from({ length: k }, () => random() * 2 - 1 + 0.2)
  const q = quantizeBlockwise(weight, n, k, format)
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'meta.json'), JSON.stringify({ k, n, format, blocksPerRow: q.blocksPerRow } satisfies MatmulMeta))
  for (const [name, array] of Object.entries({ data: q.data, scales: q.scales, zeroPoints: q.zeroPoints ?? new Uint8Array(0), x, reference: dequantizedMatmul(q, x) })) {
    writeFileSync(join(dir, name), new Uint8Array(array.buffer, array.byteOffset, array.byteLength))
  }
}

async function runMatmulCase (dir: string): Promise<NonNullable<ProbeResult['matmul']>> {
  const meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8')) as MatmulMeta
  const bytes = (name: string): Uint8Array => new Uint8Array(readFileSync(join(dir, name)))
  const floats = (name: string): Float32Array => { const b = bytes(name); return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4) }
  const q: QuantizedWeight = { ...meta, data: bytes('data'), scales: floats('scales'), zeroPoints: meta.format.zeroPoints ? bytes('zeroPoints') : undefined }
  const reference = floats('reference')
  const g = new GraphBuilder()
  g.input('x', 'float32', [1, meta.k])
  g.node('Identity', [matMulNBits(g, 'proj', 'x', q)], {}, { outputs: ['y'] })
  g.output('y', 'float32', [1, meta.n])
  const session = await ort.InferenceSession.create(g.toBytes('matmul_case'), sessionOptions(1))
  const y = (await session.run({ x: new ort.Tensor('float32', floats('x'), [1, meta.k]) })).y.data as Float32Array
  await session.release()
  let worst = 0
  let scale = 0
  for (let i = 0; i < meta.n; i++) {
    worst = Math.max(worst, Math.abs(y[i] - reference[i]))
    scale = Math.max(scale, Math.abs(reference[i]))
  }
  return { k: meta.k, n: meta.n, bits: meta.format.bits, y: Array.from(y), relativeError: worst / scale }
}

/**
 * Per-row int8 linears at TinyLlama width (hidden 2048 → FFN 5632), with uint8 weights (the client's
 * int8 head) and int7 ones (int8 layers), and two input rows, written for runRowsCase.
 */
export function writeRowsCase (dir: string, k = 2048, n = 5632): void {
  const random = seededRandom(8)
  const weight = Float32Array.from({ length: n * k }, () => (random() * 2 - 1) * 0.05 + 0.01)
  const x = Float32Array.from({ length: 2 * k }, () => random() * 2 - 1 + 0.2)
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'meta.json'), JSON.stringify({ k, n }))
  for (const int7 of [false, true]) {
    const rows = quantizePerRow(weight, n, k, { data: new Uint8Array(n * k), scales: new Float32Array(n), zeroPoints: new Uint8Array(n) }, int7)
    writeFileSync(join(dir, int7 ? 'int7.onnx' : 'uint8.onnx'), rowsLinearModel(rows, k, n, 2, int7))
  }
  writeFileSync(join(dir, 'x'), new Uint8Array(x.buffer))
}

async function runRowsCase (dir: string): Promise<NonNullable<ProbeResult['rows']>> {
  const { k } = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8')) as { k: number }
  const x = new Uint8Array(readFileSync(join(dir, 'x')))
  const run = async (model: string): Promise<number[]> => {
    const session = await ort.InferenceSession.create(join(dir, model), sessionOptions(1))
    const y = (await session.run({ x: new ort.Tensor('float32', new Float32Array(x.buffer, x.byteOffset, x.byteLength / 4), [2, k]) })).y.data as Float32Array
    await session.release()
    return Array.from(y)
  }
  return { uint8: await run('uint8.onnx'), int7: await run('int7.onnx') }
}

/** x · dequantized(W)ᵀ, accumulated in f64: what MatMulNBits approximates. */
function dequantizedMatmul (q: QuantizedWeight, x: Float32Array): Float32Array {
  const out = new Float32Array(q.n)
  const { bits, blockSize } = q.format
  const { blobBytes: blob, zeroPointBytesPerRow: zpPerRow } = quantizedLayout(q.format, q.k)
  for (let row = 0; row < q.n; row++) {
    let sum = 0
    for (let block = 0; block < q.blocksPerRow; block++) {
      const scale = q.scales[row * q.blocksPerRow + block]
      const zpByte = q.zeroPoints?.[row * zpPerRow + (bits === 8 ? block : block >> 1)]
      const zero = zpByte == null ? 1 << (bits - 1) : bits === 8 ? zpByte : (zpByte >> ((block & 1) * 4)) & 15
      const base = (row * q.blocksPerRow + block) * blob
      for (let i = 0; i < blockSize && block * blockSize + i < q.k; i++) {
        const v = bits === 8 ? q.data[base + i] : (q.data[base + (i >> 1)] >> ((i & 1) * 4)) & 15
        sum += (v - zero) * scale * x[block * blockSize + i]
      }
    }
    out[row] = sum
  }
  return out
}

/** The model's top-1 after the prompt and after each token of `ids`, decoding one token at a time. */
async function teacherForced (quant: Quantization, ids: number[]): Promise<number[]> {
  const model = await createLocalModel({ modelDir: STORIES, quant, headQuant: quant, threads: 1 })
  try {
    const chain = await model.openChain(STORIES_PROMPT_IDS.length + ids.length)
    const top1: number[] = []
    let hidden = await chain.forward(await model.head.embed(STORIES_PROMPT_IDS), STORIES_PROMPT_IDS.length)
    hidden = hidden.slice(hidden.length - model.config.hiddenSize)
    for (const id of ids.slice(0, -1)) {
      top1.push(argmax(await model.head.logits(hidden, 1)))
      hidden = await chain.forward(await model.head.embed([id]), 1)
    }
    top1.push(argmax(await model.head.logits(hidden, 1)))
    await chain.close()
    return top1
  } finally {
    await model.close()
  }
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      tokens: { type: 'string', default: '40' },
      generate: { type: 'string', default: '' },
      'teacher-int4': { type: 'string' },
      'matmul-case': { type: 'string' },
      'rows-case': { type: 'string' }
    }
  })
  const result: ProbeResult = { ids: {} }
  for (const quant of values.generate.split(',').filter(q => q !== '') as Quantization[]) {
    const model = await createLocalModel({ modelDir: STORIES, quant, headQuant: quant, threads: 1 })
    try {
      result.ids[quant] = (await untilDone(model.generate(STORIES_PROMPT_IDS, { maxNewTokens: Number(values.tokens), temperature: 0 }))).ids
    } finally {
      await model.close()
    }
  }
  if (values['teacher-int4'] != null) result.teacherInt4 = await teacherForced('int4', values['teacher-int4'].split(',').map(Number))
  if (values['matmul-case'] != null) result.matmul = await runMatmulCase(values['matmul-case'])
  if (values['rows-case'] != null) result.rows = await runRowsCase(values['rows-case'])
  process.stdout.write(JSON.stringify(result) + '\n')
}

if (process.argv[1] === import.meta.filename) await main()
