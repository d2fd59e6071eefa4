// What the wire's tensor encodings cost in quality, on the real stories260k checkpoint split as the
// swarm benchmark splits it ([0,2) [2,4) [4,5)): every hop's input and output goes through
// encode → decode of the dtype, exactly as on the wire (client → hop 1 → hop 2 → hop 3 → client).
//
// - top-1 agreement and mean KL over 200 teacher-forced positions (f32's own greedy continuation of
//   the prompt, run as one prefill), against the same spans with no encoding;
// - the greedy decode: how many of the first 200 new tokens equal f32's.
//
//   node --import tsx packages/client/bench/wire.bench.ts [--json] [--positions N]
import '@minga/p2p/polyfill'
import { parseArgs } from 'node:util'
import { join } from 'node:path'
import { argmax, createClientHead, createSpanExecutor, loadModelConfig, type ClientHead, type SpanExecutor } from '@minga/engine'
import { DType, encodeTensor, tensorF32, type Frame } from '@minga/p2p'
import { fileURLToPath } from 'node:url'
import { klDivergence } from '../../engine/bench/bench-helpers.ts'

const STORIES = join(fileURLToPath(new URL('.', import.meta.url)), '../../../../shared/models/stories260k')
const PROMPT = [1, 403, 407, 261, 378] // "Once upon a time"
const SPANS: Array<[number, number]> = [[0, 2], [2, 4], [4, 5]]
const WIRES = { f32: DType.F32, f16: DType.F16, q8: DType.Q8 } as const
type Wire = keyof typeof WIRES

const { values } = parseArgs({ options: { json: { type: 'boolean' }, positions: { type: 'string', default: '200' } } })
const POSITIONS = Number(values.positions)
const config = loadModelConfig(STORIES)
const vocab = config.vocabSize
const hidden = config.hiddenSize

/** encode → decode of one tensor, as a receiver sees it. */
function wire (values: Float32Array, tokens: number, dtype: DType): Float32Array {
  if (dtype === DType.F32) return values
  const frame = { dtype, tokens, hiddenSize: hidden, stack: 1, payload: encodeTensor(values, dtype) } as unknown as Frame
  return tensorF32(frame)
}

const head = await createClientHead({ modelDir: STORIES, threads: 1 })
const spans: SpanExecutor[] = []
for (const [start, end] of SPANS) spans.push(await createSpanExecutor({ modelDir: STORIES, start, end, threads: 1 }))

let sessions = 0
/** A chain of the spans as one session; each step's hidden states cross the wire between hops. */
async function chain (dtype: DType, maxLength: number): Promise<{ step: (x: Float32Array, tokens: number) => Promise<Float32Array>, close: () => Promise<void> }> {
  const id = `s${sessions++}`
  for (const span of spans) await span.openSession(id, maxLength)
  return {
    step: async (x, tokens) => {
      let h = x
      for (const span of spans) h = await span.forward(id, wire(h, tokens, dtype).slice(), { tokens })
      return wire(h, tokens, dtype)
    },
    close: async () => { for (const span of spans) await span.closeSession(id) }
  }
}

async function greedy (dtype: DType, newTokens: number): Promise<number[]> {
  const c = await chain(dtype, PROMPT.length + newTokens)
  try {
    const ids = [...PROMPT]
    let h = await c.step(await head.embed(ids), ids.length)
    let logits = await head.logits(h.slice((ids.length - 1) * hidden), 1)
    while (ids.length < PROMPT.length + newTokens) {
      ids.push(argmax(logits))
      if (ids.length === PROMPT.length + newTokens) break
      h = await c.step(await head.embed([ids[ids.length - 1]]), 1)
      logits = await head.logits(h, 1)
    }
    return ids.slice(PROMPT.length)
  } finally {
    await c.close()
  }
}

async function teacherForced (dtype: DType, ids: number[]): Promise<Float32Array> {
  const c = await chain(dtype, ids.length)
  try {
    return await head.logits(await c.step(await head.embed(ids), ids.length), ids.length)
  } finally {
    await c.close()
  }
}

try {
  const reference = await greedy(DType.F32, POSITIONS)
  const sequence = [...PROMPT, ...reference]
  const refLogits = await teacherForced(DType.F32, sequence)
  const positions = Array.from({ length: POSITIONS }, (_, i) => PROMPT.length - 1 + i)
  const rows = new Map<Wire, { agree: number, rate: number, meanKl: number, greedySame: number, greedyPrefix: number, bytesPerValue: number }>()
  for (const name of Object.keys(WIRES) as Wire[]) {
    const dtype = WIRES[name]
    const logits = await teacherForced(dtype, sequence)
    let agree = 0
    let kl = 0
    for (const p of positions) {
      const ref = refLogits.subarray(p * vocab, (p + 1) * vocab)
      const got = logits.subarray(p * vocab, (p + 1) * vocab)
      if (argmax(ref) === argmax(got)) agree++
      kl += klDivergence(ref, got)
    }
    const ids = await greedy(dtype, POSITIONS)
    let prefix = 0
    while (prefix < ids.length && ids[prefix] === reference[prefix]) prefix++
    rows.set(name, {
      agree,
      rate: agree / positions.length,
      meanKl: kl / positions.length,
      greedySame: ids.filter((id, i) => id === reference[i]).length,
      greedyPrefix: prefix,
      bytesPerValue: encodeTensor(new Float32Array(hidden), dtype).length / hidden
    })
  }
  if (values.json === true) {
    process.stdout.write(JSON.stringify({ model: STORIES, spans: SPANS, positions: POSITIONS, wires: Object.fromEntries(rows) }) + '\n')
  } else {
    const lines = [
      `wire encodings on stories260k, spans ${SPANS.map(s => `[${s[0]},${s[1]})`).join(' ')}, ${POSITIONS} teacher-forced positions of f32's greedy continuation of "Once upon a time"`,
      '| wire | bytes/value | top-1 agreement | mean KL | greedy: same ids / first difference at |',
      '| --- | --- | --- | --- | --- |'
    ]
    for (const [name, r] of rows) {
      lines.push(`| ${name} | ${r.bytesPerValue.toFixed(4)} | ${r.agree}/${POSITIONS} (${(100 * r.rate).toFixed(1)}%) | ${r.meanKl.toExponential(2)} | ${r.greedySame}/${POSITIONS}, ${r.greedyPrefix === POSITIONS ? 'none' : `token ${r.greedyPrefix}`} |`)
    }
    process.stdout.write(lines.join('\n') + '\n')
  }
} finally {
  await Promise.all([head.close(), ...spans.map(async s => { await s.close() })])
}
