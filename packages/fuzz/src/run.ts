// One fuzz run: the local reference, a real server process, the fuzzing loops and the normal client
// side by side, then the probes, a clean shutdown and the report.
import { readFileSync } from 'node:fs'
import { createClient, type MingaClient } from '@minga/client'
import { createLocalModel, loadModelConfig } from '@minga/engine'
import { FrameType, INFERENCE_PROTOCOL, createMingaNode, newSessionId, openChannel, type MingaNode } from '@minga/p2p'
import { startNode, type NodeProcess } from '@minga/cli/processes'
import { EPISODES, type Ctx } from './episodes.ts'
import type { Model } from './frame-gen.ts'
import { collect, type NormalState, generateChecked } from './normal-sessions.ts'
import { probeCapacity, probeCrossPeerClose, probeOversizeFrame, probePartialFrame, probeStarvation } from './probes.ts'
import type { FuzzOptions, FuzzReport } from './report.ts'
import { Rng } from './rng.ts'
import { Stats } from './stats.ts'

const DEFAULT_PROMPTS = ['Once upon a time', 'The little dog was', 'Lily and Ben went to the park']

export async function runFuzz (opts: FuzzOptions): Promise<FuzzReport> {
  const t0 = Date.now()
  const log = opts.log ?? (() => {})
  const seed = (opts.seed ?? 1) >>> 0
  const workers = Math.max(1, opts.workers ?? 8)
  const modelDir = opts.modelDir
  const prompts = opts.prompts ?? DEFAULT_PROMPTS
  const maxNewTokens = opts.maxNewTokens ?? 40
  const timeoutMs = opts.replyTimeoutMs ?? 15_000
  const maxSessions = opts.maxSessions ?? 16
  const config = loadModelConfig(modelDir)
  const m: Model = { hiddenSize: config.hiddenSize, numLayers: config.numLayers, maxPositions: config.maxPositionEmbeddings }
  const stats = new Stats()

  // the reference: the same prompts, greedy, through the local engine
  log('local reference…')
  const local = await createLocalModel({ modelDir, quant: 'none', threads: 1 })
  const reference: number[][] = []
  try {
    for (const p of prompts) reference.push((await collect(local.generate(p, { maxNewTokens, temperature: 0 }))).ids)
  } finally {
    await local.close()
  }

  const suspicious: string[] = []
  let logLines = 0
  log('starting `minga serve`…')
  const server: NodeProcess = await startNode(
    ['serve', '--model', modelDir, '--quant', 'none', '--blocks', `0:${m.numLayers}`, '--listen', '/ip4/127.0.0.1/tcp/0', '--throughput', '1000', '--threads', '1', '--max-sessions', String(maxSessions)],
    {
      label: 'minga serve',
      onLog: line => {
        logLines++
        if (/unhandled|uncaught|fatal|TypeError|RangeError|ReferenceError|heap|INTERNAL|worker (failed|exited)|SIGINT|SIGTERM|stopped/i.test(line) && suspicious.length < 20) suspicious.push(line.slice(0, 300))
      }
    })
  const serverAddr = server.ready.addrs[0]
  log(`server ${server.ready.peerId} at ${serverAddr}`)
  let crashed = false
  let stopping = false
  let exit: { code: number | null, signal: string | null } | null = null
  server.child.once('exit', (code, signal) => {
    exit = { code, signal }
    if (!stopping) {
      crashed = true
      log(`SERVER EXITED: code ${code} signal ${signal}`)
    }
  })
  const cpuMsOf = (): number => {
    try {
      // utime and stime, in clock ticks (100 Hz on Linux), fields 14 and 15 of /proc/<pid>/stat
      const fields = readFileSync(`/proc/${server.child.pid}/stat`, 'utf8').split(') ')[1].split(' ')
      return (Number(fields[11]) + Number(fields[12])) * 10
    } catch {
      return 0
    }
  }
  const rssOf = (): number | undefined => {
    try {
      const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${server.child.pid}/status`, 'utf8'))?.[1]
      return kb == null ? undefined : Number(kb) * 1024
    } catch {
      return undefined
    }
  }

  const nodes: MingaNode[] = []
  let client: MingaClient | undefined
  const normal: NormalState = { generations: 0, rounds: 0, busyRetries: 0, longestGenerationMs: 0, failures: [], checks: [] }
  const heartbeat = { sent: 0, failed: 0, latencies: [] as number[] }
  const probes: FuzzReport['probes'] = { oversizeFrame: 'not run', partialFrameHeld: 'not run', crossPeerClose: 'not run', starvation: 'not run', capacityAfter: { wanted: maxSessions, opened: 0, waitedMs: 0 } }
  const final: FuzzReport['final'] = { equal: false, checks: [] }
  let rssStart: number | undefined
  let rssPeak = 0
  let fuzzMs = 0
  let serverCpuMs = 0
  const rssTimeline: Array<[number, number]> = []
  let fuzzerCpuMs = 0
  let overlapped = false
  try {
    for (let i = 0; i < 4; i++) nodes.push(await createMingaNode({ listen: [] }))
    const [nodeA, nodeB, nodeP, nodeN] = nodes
    const anchor = await openChannel(nodeA, serverAddr, INFERENCE_PROTOCOL, { timeoutMs })
    const serverPeer = anchor.remotePeer
    // connect the other nodes by address; later streams and channels dial the peer id
    for (const n of [nodeB, nodeP, nodeN]) await openChannel(n, serverAddr, INFERENCE_PROTOCOL, { timeoutMs }).then(async c => { await c.close() })

    client = await createClient({ modelDir, bootstrap: [serverAddr], requestTimeoutMs: 60_000, threads: 1 })
    rssStart = rssOf()

    let fuzzing = true
    const ctx: Ctx = { m, stats, server: serverPeer, timeoutMs, stopped: () => crashed || Date.now() - t0 > (opts.deadlineMs ?? 15 * 60_000) }

    // the normal session: rounds of the prompts for as long as the fuzz runs (at least one)
    const normalRun = (async () => {
      for (let round = 0; round < 10_000; round++) {
        for (const [i, prompt] of prompts.entries()) {
          if (crashed) return
          if (fuzzing) overlapped = true
          const check = await generateChecked(client!, prompt, reference[i], maxNewTokens, normal, 60_000)
          if (check !== undefined && (normal.checks.length < prompts.length || !check.equal)) normal.checks.push(check)
          if (check === undefined || !check.equal) return // a failure ends the normal run: it is reported
          if (!fuzzing && round > 0) return
        }
        normal.rounds++
        if (!fuzzing) return
      }
    })()

    const sampler = setInterval(() => { rssPeak = Math.max(rssPeak, rssOf() ?? 0) }, 250)
    const beat = setInterval(() => {
      if (anchor.closed || crashed) return
      const sentAt = Date.now()
      heartbeat.sent++
      anchor.request({ type: FrameType.CLOSE_SESSION, sessionId: newSessionId() }, { timeoutMs }).then(
        () => { heartbeat.latencies.push(Date.now() - sentAt) },
        () => { heartbeat.failed++ }
      )
    }, 200)

    const fuzzStart = Date.now()
    const serverCpuStart = cpuMsOf()
    const ownCpuStart = process.cpuUsage()
    let progress = 0
    const ticker = setInterval(() => {
      const rss = rssOf()
      if (rss !== undefined) rssTimeline.push([stats.framesSent, Math.round(rss / 1048576)])
      if (stats.framesSent - progress >= 1) log(`  ${stats.framesSent} frames, ${((stats.framesSent * 1000) / (Date.now() - fuzzStart)).toFixed(0)}/s, ${normal.generations} normal generations, ${stats.timeouts} timeouts`)
      progress = stats.framesSent
    }, 5000)
    probes.crossPeerClose = await probeCrossPeerClose(ctx, nodeA, nodeB)
    const probeRun = Promise.all([
      probeOversizeFrame(ctx, nodeB).then(s => { probes.oversizeFrame = s }),
      probePartialFrame(ctx, nodeB, 3000).then(s => { probes.partialFrameHeld = s })
    ])
    const weights = Object.fromEntries(Object.entries(EPISODES).filter(([k]) => opts.kinds?.includes(k) ?? true).map(([k, e]) => [k, e.weight])) as Record<string, number>
    if (Object.keys(weights).length === 0) throw new Error(`no episode kinds among ${opts.kinds?.join(', ')}: choose from ${Object.keys(EPISODES).join(', ')}`)
    const share = Math.floor(opts.frames / workers)
    await Promise.all(Array.from({ length: workers }, async (_, w) => {
      const rng = new Rng(seed, w + 1)
      let left = share + (w < opts.frames - share * workers ? 1 : 0)
      const node = w % 2 === 0 ? nodeA : nodeB
      let idle = 0
      while (left > 0 && !ctx.stopped() && idle < 50) {
        const kind = rng.weighted(weights)
        const e = EPISODES[kind]
        const sent = await e.run(ctx, e.node === 'parallel' ? nodeP : node, new Rng(rng.u32(), rng.u32()), left)
        stats.episode(kind, sent)
        left -= sent
        idle = sent === 0 ? idle + 1 : 0
      }
    }))
    await probeRun
    fuzzMs = Date.now() - fuzzStart
    serverCpuMs = cpuMsOf() - serverCpuStart
    const own = process.cpuUsage(ownCpuStart)
    fuzzerCpuMs = Math.round((own.user + own.system) / 1000)
    fuzzing = false
    clearInterval(ticker)
    clearInterval(beat)
    log(`fuzz done: ${stats.framesSent} frames in ${fuzzMs} ms; waiting for the normal session…`)
    await normalRun
    clearInterval(sampler)
    await anchor.close({ timeoutMs: 2000 })

    if (!crashed) {
      // the server must still serve: a fresh generation, then every session slot at full length
      const after = { ...normal, failures: [] }
      const check = await generateChecked(client, prompts[0], reference[0], maxNewTokens, after, 30_000)
      if (check === undefined) final.error = after.failures.join('; ')
      else final.checks.push(check)
      final.equal = check?.equal === true
      await client.close()
      client = undefined
      probes.starvation = await probeStarvation(ctx, [nodeA, nodeB], nodeN, maxSessions)
      await new Promise(resolve => setTimeout(resolve, 300))
      probes.capacityAfter = await probeCapacity(ctx, nodes, maxSessions, 15_000)
    }
  } catch (err) {
    stopping = true
    await server.stop(5000)
    throw err
  } finally {
    await client?.close().catch(() => {})
    for (const n of nodes) await n.stop().catch(() => {})
  }
  const rssEnd = rssOf()
  stopping = true
  const crashedBeforeStop = crashed || exit !== null
  const started = Date.now()
  const stopped = await server.stop(15_000)
  const stopKilled = stopped === 'SIGKILL' || Date.now() - started >= 15_000
  const lat = [...heartbeat.latencies].sort((a, b) => a - b)
  const mib = (b: number | undefined): number | null => b === undefined || b === 0 ? null : Math.round(b / 1048576)
  const normalEqual = normal.failures.length === 0 && normal.generations >= prompts.length && normal.checks.every(c => c.equal)
  const report: FuzzReport = {
    ok: false,
    seed,
    framesRequested: opts.frames,
    framesSent: stats.framesSent,
    bytesSent: stats.bytesSent,
    fuzzMs,
    serverCpuMs,
    fuzzerCpuMs,
    totalMs: Date.now() - t0,
    framesPerSecond: fuzzMs > 0 ? Math.round(stats.framesSent * 1000 / fuzzMs) : 0,
    episodes: stats.episodes,
    replies: Object.fromEntries(Object.entries(stats.replies).sort((a, b) => b[1] - a[1])),
    timeouts: stats.timeouts,
    missingReplies: stats.missingReplies,
    violations: stats.violations,
    violationSamples: stats.violationSamples,
    internalErrors: stats.internalErrors,
    channelFailures: { dialFailed: stats.dialFailed, refusedStreams: stats.refusedStreams, resetByServer: stats.resetByServer, closedDuringRequest: stats.closedDuringRequest },
    crashes: crashedBeforeStop ? 1 : 0,
    server: {
      exit,
      stoppedCleanly: !crashedBeforeStop && !stopKilled && stopped === 0,
      rssStartMiB: mib(rssStart),
      rssPeakMiB: mib(rssPeak),
      rssEndMiB: mib(rssEnd),
      rssTimeline,
      stderrLines: logLines,
      stderrTail: server.log().trimEnd().split('\n').slice(-5),
      suspiciousLogLines: suspicious
    },
    heartbeat: { sent: heartbeat.sent, failed: heartbeat.failed, p50Ms: lat[Math.floor(lat.length / 2)] ?? 0, maxMs: lat[lat.length - 1] ?? 0 },
    probes,
    normal: {
      generations: normal.generations,
      rounds: normal.rounds,
      overlappedFuzz: overlapped,
      busyRetries: normal.busyRetries,
      longestGenerationMs: normal.longestGenerationMs,
      failures: normal.failures,
      equal: normalEqual,
      checks: normal.checks
    },
    final,
    errorSamples: stats.errorSamples
  }
  report.ok = report.crashes === 0 && report.server.stoppedCleanly && normalEqual && final.equal &&
    report.timeouts === 0 && report.missingReplies === 0 && report.violations === 0 && report.internalErrors === 0 &&
    probes.capacityAfter.opened === probes.capacityAfter.wanted
  return report
}
