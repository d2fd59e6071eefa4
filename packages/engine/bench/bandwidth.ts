// The machine's memory read bandwidth: `threads` worker threads at once each stream a buffer far
// larger than the caches through a WebAssembly SIMD loop (16 16-byte loads per iteration into four
// accumulators, so the loop is bound by memory, not by instructions). A decode step of a model whose weights do not
// fit the caches reads every weight once: its speed is bounded by bandwidth ÷ bytes read per token.
import { Worker } from 'node:worker_threads'
import { median } from './bench-helpers.ts'

export interface Bandwidth {
  /** Median of the runs, bytes per second, all threads together. */
  bytesPerSecond: number
  runs: number[]
  bytesPerThread: number
  threads: number
}

function leb (n: number): number[] {
  const out: number[] = []
  do {
    let byte = n & 0x7f
    n >>>= 7
    if (n !== 0) byte |= 0x80
    out.push(byte)
  } while (n !== 0)
  return out
}

/** Signed LEB128 (i32.const's immediate) of a small positive number. */
function sleb (n: number): number[] {
  const out = leb(n)
  if ((out[out.length - 1] & 0x40) !== 0) { out[out.length - 1] |= 0x80; out.push(0) }
  return out
}

/** Bytes the loop reads per iteration: 16 loads in flight, spread over four accumulators. */
const STEP = 256

const section = (id: number, body: number[]): number[] => [id, ...leb(body.length), ...body]

/** A module exporting `mem` (`pages` × 64 KiB) and `sum(ptr, end)`: the i32x4 sum of [ptr, end), STEP bytes a step. */
export function readLoopModule (pages: number): Uint8Array<ArrayBuffer> {
  const SIMD = 0xfd
  const i32x4Add = [SIMD, 0xae, 0x01]
  const accumulate = (acc: number, offset: number): number[] => [
    0x20, acc, // local.get acc
    0x20, 0x00, SIMD, 0x00, 0x04, ...leb(offset), // v128.load align=16 offset
    ...i32x4Add,
    0x21, acc // local.set acc
  ]
  const code = [
    0x01, 0x04, 0x7b, // four v128 locals: 2, 3, 4, 5
    0x03, 0x40, // loop
    ...Array.from({ length: STEP / 16 }, (_, i) => accumulate(2 + (i % 4), 16 * i)).flat(),
    0x20, 0x00, 0x41, ...sleb(STEP), 0x6a, 0x22, 0x00, // ptr = ptr + STEP
    0x20, 0x01, 0x49, 0x0d, 0x00, // br_if 0 (ptr < end)
    0x0b, // end loop
    0x20, 0x02, 0x20, 0x03, ...i32x4Add, 0x20, 0x04, ...i32x4Add, 0x20, 0x05, ...i32x4Add,
    SIMD, 0x1b, 0x00, // i32x4.extract_lane 0
    0x0b
  ]
  const name = (s: string): number[] => [s.length, ...Buffer.from(s)]
  return Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [0x01, 0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7f]), // (i32, i32) → i32
    ...section(3, [0x01, 0x00]),
    ...section(5, [0x01, 0x00, ...leb(pages)]),
    ...section(7, [0x02, ...name('sum'), 0x00, 0x00, ...name('mem'), 0x02, 0x00]),
    ...section(10, [0x01, ...leb(code.length), ...code])
  ])
}

// Each worker fills its memory (untouched pages would all map the one zero page, which stays in
// cache), then on every signal sums it once and reports the time.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads')
const { module, index, control } = workerData
const { exports } = new WebAssembly.Instance(module)
const bytes = exports.mem.buffer.byteLength
new Uint8Array(exports.mem.buffer).fill(1)
// V8 runs new WebAssembly in its baseline compiler and swaps in optimized code only for later
// calls: call the loop often on a cached range first, so the measured passes run optimized code
for (let i = 0; i < 20000; i++) exports.sum(0, 16384)
const flag = new Int32Array(control)
let seen = 0
parentPort.postMessage({ ready: true })
for (;;) {
  Atomics.wait(flag, 0, seen)
  seen = Atomics.load(flag, 0)
  if (seen < 0) break
  const t = performance.now()
  exports.sum(0, bytes)
  parentPort.postMessage({ ms: performance.now() - t, index })
}
`

/** Median read bandwidth of `runs` passes of `threads` threads over `mibPerThread` MiB each (after one untimed pass). */
export async function measureReadBandwidth (threads: number, mibPerThread = 256, runs = 7): Promise<Bandwidth> {
  const pages = (mibPerThread * 2 ** 20) / 65536
  const module = new WebAssembly.Module(readLoopModule(pages))
  const control = new SharedArrayBuffer(4)
  const flag = new Int32Array(control)
  const workers = Array.from({ length: threads }, (_, index) => new Worker(WORKER, { eval: true, workerData: { module, index, control } }))
  const next = (): Promise<Array<{ ms: number }>> => Promise.all(workers.map(async w => await new Promise<any>((resolve, reject) => {
    w.once('message', resolve)
    w.once('error', reject)
  })))
  try {
    await next() // ready
    const speeds: number[] = []
    for (let run = 0; run <= runs; run++) {
      const done = next()
      Atomics.add(flag, 0, 1)
      Atomics.notify(flag, 0)
      const times = await done
      // every thread read its buffer; the slowest one bounds the pass
      if (run > 0) speeds.push((threads * mibPerThread * 2 ** 20) / (Math.max(...times.map(t => t.ms)) / 1000))
    }
    return { bytesPerSecond: median(speeds), runs: speeds, bytesPerThread: mibPerThread * 2 ** 20, threads }
  } finally {
    Atomics.store(flag, 0, -1)
    Atomics.notify(flag, 0)
    await Promise.all(workers.map(async w => await w.terminate()))
  }
}
