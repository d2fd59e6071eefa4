// Where does a swarm hop's time go? Standalone probes, each measuring one layer of the path of a
// decode step, with the public APIs only (no change to the packages):
//
//   tcp      plain Node TCP echo between two processes (noDelay), 256 B and 8 KiB
//   channel  minga channel (libp2p TCP + noise + yamux + frames) echo between two processes
//   worker   worker_threads postMessage round trip with a transferred 256 B / 8 KiB Float32Array
//   span     createSpanExecutor forward of 1 token in this process (worker + ORT), stories [0,2)
//   head     createClientHead embed + logits of 1 token (stories)
//   server   a child process running handleChannel → span executor (the server's path, with
//            server-side timers); client-side round trip vs. server-side handler time
//   serve    a real `minga serve --blocks 0:2` process, driven over a direct channel (no head)
//
//   node --import tsx packages/client/bench/hop.probe.ts [--only tcp,channel,...] [--iterations N]
//     [--warmup W] [--threads T] [--json]
//
// Each probe reports median / p10 / p90 in ms. See README.md next to this file.
import '@minga/p2p/polyfill'
import { spawn, type ChildProcess } from 'node:child_process'
import { createServer as createTcpServer, connect, type AddressInfo, type Socket } from 'node:net'
import { availableParallelism, loadavg } from 'node:os'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Worker } from 'node:worker_threads'
import { createClientHead, createSpanExecutor } from '@minga/engine'
import {
  createMingaNode, DType, FrameType, handleChannel, INFERENCE_PROTOCOL, newSessionId, openChannel, sessionIdToHex, tensorF32,
  type Channel, type Frame, type FrameInit
} from '@minga/p2p'

const SELF = fileURLToPath(import.meta.url)
const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const CLI = fileURLToPath(new URL('../../cli/bin/minga.mjs', import.meta.url))
const STORIES = fileURLToPath(new URL('../../../../shared/models/stories260k', import.meta.url))

const log = (msg: string): void => { process.stderr.write(`${msg}\n`) }

interface Dist { n: number, median: number, p10: number, p90: number, mean: number }

function dist (xs: number[]): Dist {
  const s = [...xs].sort((a, b) => a - b)
  const q = (p: number): number => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  const r = (x: number): number => Number(x.toFixed(4))
  return { n: s.length, median: r(q(0.5)), p10: r(q(0.1)), p90: r(q(0.9)), mean: r(s.reduce((a, b) => a + b, 0) / s.length) }
}

/** Runs body n times after `warm` untimed runs; body may return its own duration (to leave set-up out). */
async function timeLoop (n: number, warm: number, body: (i: number) => Promise<number | void>): Promise<number[]> {
  for (let i = 0; i < warm; i++) await body(i)
  const out: number[] = []
  for (let i = 0; i < n; i++) {
    const t = performance.now()
    const own = await body(i)
    out.push(typeof own === 'number' ? own : performance.now() - t)
  }
  return out
}

/** Untimed iterations before each measurement (--warmup): V8 needs a few thousand round trips to optimize libp2p's code. */
let WARM = 2000

/** A CLOSE_SESSION with this flag bit asks the probe server for its timings (and resets them). */
const STATS_FLAG = 0x80

/** stories260k's context: probes that decode many steps reopen their session every CONTEXT tokens. */
const CONTEXT = 512

// ---------------------------------------------------------------------------------------------
// Child roles: each prints one JSON line when ready, then serves until stdin closes / SIGTERM.

async function childTcpEcho (): Promise<void> {
  const server = createTcpServer({ noDelay: true }, socket => {
    socket.setNoDelay(true)
    socket.on('data', chunk => { socket.write(chunk) })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  process.stdout.write(JSON.stringify({ port: (server.address() as AddressInfo).port }) + '\n')
}

/** CLOSE_SESSION answers with this process's CPU time (µs) and frames since the previous CLOSE_SESSION. */
function cpuReporter (): { count: () => void, report: () => Uint8Array } {
  let n = 0
  let since = process.cpuUsage()
  return {
    count: () => { n++ },
    report: () => {
      const used = process.cpuUsage(since)
      const out = new TextEncoder().encode(JSON.stringify({ n, cpuUs: used.user + used.system }))
      n = 0
      since = process.cpuUsage()
      return out
    }
  }
}

async function childChannelEcho (): Promise<void> {
  const node = await createMingaNode()
  const cpu = cpuReporter()
  await handleChannel(node, INFERENCE_PROTOCOL, (frame: Frame): FrameInit => {
    if (frame.type === FrameType.CLOSE_SESSION) return { type: FrameType.ACK, payload: cpu.report() }
    cpu.count()
    return { type: FrameType.RESULT, dtype: frame.dtype, tokens: frame.tokens, hiddenSize: frame.hiddenSize, payload: frame.payload }
  })
  process.stdout.write(JSON.stringify({ addrs: node.addrs() }) + '\n')
}

/** The server's path without the DHT: channel → decode → span executor → RESULT, with timers. */
async function childSpanServer (threads: number): Promise<void> {
  const executor = await createSpanExecutor({ modelDir: STORIES, start: 0, end: 2, threads })
  const node = await createMingaNode()
  const handlerMs: number[] = []
  const forwardMs: number[] = []
  const gapMs: number[] = [] // reply written → next frame handed to the handler
  let lastReply = 0
  let forwards = 0
  let cpuStart = process.cpuUsage()
  await handleChannel(node, INFERENCE_PROTOCOL, async (frame: Frame): Promise<FrameInit> => {
    const t0 = performance.now()
    if (lastReply > 0) gapMs.push(t0 - lastReply)
    const id = sessionIdToHex(frame.sessionId)
    if (frame.type === FrameType.OPEN_SESSION) {
      await executor.openSession(id, frame.maxLength)
      return { type: FrameType.ACK }
    }
    if (frame.type === FrameType.CLOSE_SESSION && (frame.flags & STATS_FLAG) !== 0) {
      // gaps also include the client's session reopenings (every CONTEXT steps)
      const used = process.cpuUsage(cpuStart)
      const stats = JSON.stringify({
        handlerMs: dist(handlerMs), forwardMs: dist(forwardMs), gapMs: dist(gapMs),
        cpuUsPerForward: Math.round((used.user + used.system) / Math.max(1, forwards))
      })
      handlerMs.length = forwardMs.length = gapMs.length = 0
      forwards = 0
      cpuStart = process.cpuUsage()
      lastReply = 0
      return { type: FrameType.ACK, payload: new TextEncoder().encode(stats) }
    }
    if (frame.type === FrameType.CLOSE_SESSION) {
      await executor.closeSession(id)
      return { type: FrameType.ACK }
    }
    forwards++
    const hidden = new Float32Array(frame.tokens * frame.hiddenSize)
    new Uint8Array(hidden.buffer).set(frame.payload)
    const t1 = performance.now()
    const out = await executor.forward(id, hidden, { tokens: frame.tokens, position: frame.position })
    const t2 = performance.now()
    forwardMs.push(t2 - t1)
    handlerMs.push(t2 - t0)
    lastReply = performance.now()
    return {
      type: FrameType.RESULT, dtype: DType.F32, tokens: frame.tokens, hiddenSize: frame.hiddenSize, position: frame.position,
      startBlock: 0, endBlock: 2, payload: new Uint8Array(out.buffer, out.byteOffset, out.byteLength)
    }
  })
  process.stdout.write(JSON.stringify({ addrs: node.addrs() }) + '\n')
}

// ---------------------------------------------------------------------------------------------
// Parent side

const children = new Set<ChildProcess>()
process.on('exit', () => { for (const c of children) c.kill('SIGKILL') })

async function startChild (args: string[]): Promise<{ child: ChildProcess, ready: any }> {
  // PROBE_CPU_PROF=DIR: write a CPU profile of each child into DIR (NODE_OPTIONS cannot carry --cpu-prof)
  const prof = process.env.PROBE_CPU_PROF != null ? ['--cpu-prof', '--cpu-prof-dir', process.env.PROBE_CPU_PROF] : []
  const child = spawn(process.execPath, [...prof, '--import', 'tsx', ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  children.add(child)
  const stderr: string[] = []
  createInterface({ input: child.stderr! }).on('line', line => { stderr.push(line); if (stderr.length > 30) stderr.shift() })
  child.on('exit', () => children.delete(child))
  const ready = await new Promise<any>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`child ${args.join(' ')} not ready:\n${stderr.join('\n')}`)) }, 120_000)
    createInterface({ input: child.stdout! }).on('line', line => {
      try { clearTimeout(timer); resolve(JSON.parse(line)) } catch {}
    })
    child.on('exit', code => { clearTimeout(timer); reject(new Error(`child exited (${code}):\n${stderr.join('\n')}`)) })
  })
  return { child, ready }
}

async function stopChild (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>(resolve => child.once('exit', () => { resolve() }))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
  await exited
  clearTimeout(timer)
}

const SIZES = [64, 2048] // floats: stories' hidden size (256 B), TinyLlama's (8 KiB)

async function probeTcp (n: number): Promise<Record<string, Dist>> {
  const { child, ready } = await startChild([SELF, '--role', 'tcp-echo'])
  const socket: Socket = connect({ port: ready.port, host: '127.0.0.1', noDelay: true })
  await new Promise<void>(resolve => socket.once('connect', resolve))
  let want = 0
  let got = 0
  let done: (() => void) | undefined
  socket.on('data', chunk => { got += chunk.length; if (got >= want) done?.() })
  const out: Record<string, Dist> = {}
  for (const floats of SIZES) {
    const msg = Buffer.alloc(floats * 4 + 64, 1)
    out[`${msg.length} B`] = dist(await timeLoop(n, WARM, async () => {
      got = 0
      want = msg.length
      await new Promise<void>(resolve => { done = resolve; socket.write(msg) })
    }))
  }
  socket.destroy()
  await stopChild(child)
  return out
}

async function channelLoop (ch: Channel, n: number, floats: number, warm: number, session = newSessionId()): Promise<number[]> {
  const payload = new Uint8Array(floats * 4)
  return await timeLoop(n, warm, async () => {
    await ch.request({ type: FrameType.FORWARD, dtype: DType.F32, sessionId: session, tokens: 1, hiddenSize: floats, startBlock: 0, endBlock: 2, payload })
  })
}

async function probeChannel (n: number): Promise<Record<string, Dist | number>> {
  const { child, ready } = await startChild([SELF, '--role', 'channel-echo'])
  const node = await createMingaNode()
  const ch = await openChannel(node, ready.addrs[0])
  const out: Record<string, Dist | number> = {}
  const serverCpu = async (): Promise<{ n: number, cpuUs: number }> =>
    JSON.parse(new TextDecoder().decode((await ch.request({ type: FrameType.CLOSE_SESSION, sessionId: newSessionId() })).payload))
  for (const floats of SIZES) {
    await channelLoop(ch, 0, floats, WARM) // warm-up only
    await serverCpu()
    const since = process.cpuUsage()
    out[`${floats * 4} B payload`] = dist(await channelLoop(ch, n, floats, 0))
    const used = process.cpuUsage(since)
    const server = await serverCpu()
    out[`${floats * 4} B client CPU µs/rt`] = Math.round((used.user + used.system) / n)
    out[`${floats * 4} B server CPU µs/rt`] = Math.round(server.cpuUs / server.n)
  }
  await ch.close()
  await node.stop()
  await stopChild(child)
  return out
}

async function probeWorker (n: number): Promise<Record<string, Dist>> {
  const code = `
    const { parentPort } = require('node:worker_threads')
    parentPort.on('message', m => {
      if (m.immediate) setImmediate(() => parentPort.postMessage(m, [m.buf.buffer]))
      else parentPort.postMessage(m, [m.buf.buffer])
    })`
  const worker = new Worker(code, { eval: true })
  let resolveReply: ((m: any) => void) | undefined
  worker.on('message', m => resolveReply?.(m))
  const out: Record<string, Dist> = {}
  for (const floats of SIZES) {
    for (const immediate of [false, true]) {
      out[`${floats * 4} B${immediate ? ' + setImmediate' : ''}`] = dist(await timeLoop(n, WARM, async () => {
        const buf = new Float32Array(floats)
        await new Promise(resolve => { resolveReply = resolve; worker.postMessage({ buf, immediate }, [buf.buffer]) })
      }))
    }
  }
  await worker.terminate()
  return out
}

async function probeSpan (n: number, threads: number): Promise<Record<string, Dist>> {
  const out: Record<string, Dist> = {}
  for (const [start, end] of [[0, 2], [0, 5]]) {
    const span = await createSpanExecutor({ modelDir: STORIES, start, end, threads })
    let session = 0
    let position = CONTEXT
    out[`[${start},${end}) forward 1 token`] = dist(await timeLoop(n, WARM, async () => {
      if (position >= CONTEXT) { // stories' context is 512 tokens: start a new session (not timed)
        if (session > 0) await span.closeSession(`p${session}`)
        await span.openSession(`p${++session}`, CONTEXT)
        position = 0
      }
      const t = performance.now()
      await span.forward(`p${session}`, new Float32Array(64).fill(0.1), { tokens: 1 })
      position++
      return performance.now() - t
    }))
    await span.close()
  }
  return out
}

async function probeHead (n: number, threads: number): Promise<Record<string, Dist>> {
  const head = await createClientHead({ modelDir: STORIES, threads })
  const out: Record<string, Dist> = {}
  out['embed 1 token'] = dist(await timeLoop(n, WARM, async () => { await head.embed([42]) }))
  out['logits 1 token'] = dist(await timeLoop(n, WARM, async () => { await head.logits(new Float32Array(64).fill(0.1), 1) }))
  await head.close()
  return out
}

async function sessionRun (ch: Channel, n: number, start: number, end: number, stats: boolean): Promise<{ rtt: number[], server?: any }> {
  let sessionId = newSessionId()
  let position = CONTEXT
  let opened = false
  let hidden = new Float32Array(64).fill(0.1)
  const step = async (): Promise<number> => {
    if (position >= CONTEXT) { // not timed
      if (opened) await ch.request({ type: FrameType.CLOSE_SESSION, sessionId })
      sessionId = newSessionId()
      await ch.request({ type: FrameType.OPEN_SESSION, sessionId, startBlock: start, endBlock: end, maxLength: CONTEXT })
      opened = true
      position = 0
    }
    const t = performance.now()
    const reply = await ch.request({
      type: FrameType.FORWARD, dtype: DType.F32, sessionId, tokens: 1, hiddenSize: 64, startBlock: start, endBlock: end, position,
      payload: new Uint8Array(hidden.buffer, hidden.byteOffset, hidden.byteLength)
    })
    const ms = performance.now() - t
    position++
    hidden = tensorF32(reply).slice()
    return ms
  }
  const statsRequest = async (): Promise<any> => {
    const ack = await ch.request({ type: FrameType.CLOSE_SESSION, sessionId: newSessionId(), flags: STATS_FLAG })
    return JSON.parse(new TextDecoder().decode(ack.payload))
  }
  await timeLoop(0, WARM, step)
  if (stats) await statsRequest() // resets the server's timings: only the measured steps count
  const rtt = await timeLoop(n, 0, step)
  const server = stats ? await statsRequest() : undefined
  await ch.request({ type: FrameType.CLOSE_SESSION, sessionId })
  return { rtt, server }
}

async function probeServer (n: number, threads: number): Promise<Record<string, unknown>> {
  const { child, ready } = await startChild([SELF, '--role', 'span-server', '--threads', String(threads)])
  const node = await createMingaNode()
  const ch = await openChannel(node, ready.addrs[0])
  const { rtt, server } = await sessionRun(ch, n, 0, 2, true)
  await ch.close()
  await node.stop()
  await stopChild(child)
  return {
    'client round trip': dist(rtt),
    'server handler': server.handlerMs,
    'server executor.forward': server.forwardMs,
    'server idle between frames': server.gapMs,
    'server CPU µs/forward': server.cpuUsPerForward
  }
}

async function probeServe (n: number, threads: number): Promise<Record<string, Dist>> {
  const boot = await startChild([CLI, 'bootstrap', '--json'])
  const serve = await startChild([CLI, 'serve', '--model', STORIES, '--blocks', '0:2', '--bootstrap', boot.ready.addrs[0], '--json', '--threads', String(threads)])
  const node = await createMingaNode()
  const ch = await openChannel(node, serve.ready.addrs[0])
  const { rtt } = await sessionRun(ch, n, 0, 2, false)
  await ch.close()
  await node.stop()
  await stopChild(serve.child)
  await stopChild(boot.child)
  return { 'client round trip': dist(rtt) }
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      role: { type: 'string' },
      only: { type: 'string', default: 'tcp,channel,worker,span,head,server,serve' },
      iterations: { type: 'string', default: '2000' },
      warmup: { type: 'string', default: '2000' },
      threads: { type: 'string', default: '1' },
      json: { type: 'boolean', default: false }
    }
  })
  const threads = Number(values.threads)
  // children exit normally on SIGTERM, so that --cpu-prof (e.g. through NODE_OPTIONS) writes a profile
  if (values.role != null) process.once('SIGTERM', () => process.exit(0))
  if (values.role === 'tcp-echo') return await childTcpEcho()
  if (values.role === 'channel-echo') return await childChannelEcho()
  if (values.role === 'span-server') return await childSpanServer(threads)

  const n = Number(values.iterations)
  WARM = Number(values.warmup)
  const probes: Record<string, () => Promise<Record<string, unknown>>> = {
    tcp: async () => await probeTcp(n),
    channel: async () => await probeChannel(n),
    worker: async () => await probeWorker(n),
    span: async () => await probeSpan(n, threads),
    head: async () => await probeHead(n, threads),
    server: async () => await probeServer(n, threads),
    serve: async () => await probeServe(n, threads)
  }
  const results: Record<string, unknown> = {}
  log(`hop probes: ${availableParallelism()} cores, ${WARM} warm-up + ${n} timed iterations, threads=${threads}, load ${loadavg().map(x => x.toFixed(2)).join(' ')}`)
  for (const name of values.only!.split(',')) {
    const probe = probes[name]
    if (probe == null) throw new Error(`unknown probe ${name}`)
    const before = loadavg()[0]
    const result = await probe()
    results[name] = { ...result, load1: [Number(before.toFixed(2)), Number(loadavg()[0].toFixed(2))] }
    if (!values.json) {
      log(`${name}  (load ${before.toFixed(2)} → ${loadavg()[0].toFixed(2)})`)
      for (const [k, v] of Object.entries(result)) {
        if (typeof v === 'number') { log(`  ${k.padEnd(28)} ${v}`); continue }
        const d = v as Dist
        log(`  ${k.padEnd(28)} median ${d.median.toFixed(3)} ms   p10 ${d.p10.toFixed(3)}   p90 ${d.p90.toFixed(3)}   mean ${d.mean.toFixed(3)}`)
      }
    }
  }
  if (values.json) process.stdout.write(JSON.stringify(results) + '\n')
}

await main()
