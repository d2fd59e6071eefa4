// 50-node benchmark: a loopback swarm of DHT-only nodes and stories260k servers with small spans,
// several nodes per process (swarm50-host.ts). Measures how long until every server's record is
// visible, DHT lookup latency for one block and for a whole model, how long a fresh client takes to
// find its route, and a churn run: servers crash and new ones join during continuous generation,
// and every generation must equal the local engine's output.
//
//   node --import tsx packages/client/bench/swarm50.bench.ts [--nodes 50] [--servers 20]
//     [--processes 5] [--lookups 100] [--churn 10] [--tokens 16] [--json]
//
// See README.md next to this file.
import '@minga/p2p/polyfill'
import { fork, type ChildProcess } from 'node:child_process'
import { availableParallelism, loadavg } from 'node:os'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { computeModelId, createLocalModel, loadModelConfig, untilDone } from '@minga/engine'
import { createMingaNode, findBlockServers, findSpans, type ServerEntry } from '@minga/p2p'
import { createClient, planRoute } from '../src/index.ts'
import type { HostCommand, HostReply } from './swarm50-host.ts'

const STORIES = fileURLToPath(new URL('../../../../shared/models/stories260k', import.meta.url))
const HOST = fileURLToPath(new URL('./swarm50-host.ts', import.meta.url))
const PROMPTS = ['Once upon a time', 'Tom and his dog went to the', 'The little bird was sad because', 'One day, a girl named Lily']
const TTL_MS = 60_000

const { values: flags } = parseArgs({
  options: {
    nodes: { type: 'string', default: '50' },
    servers: { type: 'string', default: '20' },
    processes: { type: 'string', default: '5' },
    lookups: { type: 'string', default: '100' },
    churn: { type: 'string', default: '10' },
    tokens: { type: 'string', default: '16' },
    json: { type: 'boolean', default: false }
  }
})
const NODES = Number(flags.nodes)
const SERVERS = Number(flags.servers)
const PROCESSES = Number(flags.processes)
const LOOKUPS = Number(flags.lookups)
const CHURN = Number(flags.churn)
const TOKENS = Number(flags.tokens)

const log = (msg: string): void => { process.stderr.write(`${msg}\n`) }
const round = (x: number, d = 1): number => Number(x.toFixed(d))
const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]
}
const stats = (xs: number[]): { n: number, p50: number, p95: number, max: number } =>
  ({ n: xs.length, p50: round(quantile(xs, 0.5)), p95: round(quantile(xs, 0.95)), max: round(Math.max(...xs)) })

/** A process hosting nodes; requests are answered in any order, matched by id. */
class Host {
  private readonly child: ChildProcess
  private readonly pending = new Map<number, (r: HostReply) => void>()
  private next = 1
  constructor () {
    this.child = fork(HOST, [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
    this.child.on('message', (r: HostReply) => { this.pending.get(r.id)?.(r); this.pending.delete(r.id) })
  }

  async request (req: HostCommand): Promise<Extract<HostReply, { ok: true }>> {
    const id = this.next++
    const reply = await new Promise<HostReply>(resolve => {
      this.pending.set(id, resolve)
      this.child.send({ ...req, id })
    })
    if (!reply.ok) throw new Error(`${req.cmd} failed: ${reply.error}`)
    return reply
  }

  async close (): Promise<void> {
    const exited = new Promise(resolve => this.child.once('exit', resolve))
    this.child.disconnect()
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 20_000)
    await exited
    clearTimeout(timer)
  }
}

interface Started { host: Host, peerId: string, blocks?: [number, number] }

async function mapLimit<T, R> (items: T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) { const i = next++; out[i] = await fn(items[i], i) }
  }))
  return out
}

async function main (): Promise<void> {
  const config = loadModelConfig(STORIES)
  const modelId = computeModelId(STORIES)
  const numBlocks = config.numLayers
  const options = { maxNewTokens: TOKENS, temperature: 0 }
  const expected = new Map<string, number[]>()
  const local = await createLocalModel({ modelDir: STORIES })
  for (const p of PROMPTS) expected.set(p, (await untilDone(local.generate(p, options))).ids)
  await local.close()

  const hosts = Array.from({ length: PROCESSES }, () => new Host())
  const t0 = performance.now()
  const boot = await hosts[0].request({ cmd: 'dht', bootstrap: [] })
  const bootstrap = [boot.addrs[0]]
  const dhtNodes = NODES - 1 - SERVERS
  log(`swarm: 1 bootstrap + ${dhtNodes} DHT-only nodes + ${SERVERS} servers of stories260k in ${PROCESSES} processes`)
  // each node joins through the bootstrap and two random nodes that joined before, so that joins
  // do not all land on one node
  const joined: string[] = []
  const joinVia = (): string[] => [...bootstrap, ...[...joined].sort(() => Math.random() - 0.5).slice(0, 2)]
  await mapLimit(Array.from({ length: dhtNodes }), 2, async (_, i) => {
    joined.push((await hosts[(i + 1) % PROCESSES].request({ cmd: 'dht', bootstrap: joinVia() })).addrs[0])
    if (joined.length % 10 === 0) log(`${joined.length} DHT-only nodes up after ${round((performance.now() - t0) / 1000)} s`)
  })
  const tDht = performance.now()
  // small spans: 1 or 2 blocks, spread over the 5 blocks
  const spans = Array.from({ length: SERVERS }, (_, i) => {
    const start = i % numBlocks
    return { start, end: Math.min(numBlocks, start + 1 + (Math.floor(i / numBlocks) % 2)) }
  })
  const servers: Started[] = await mapLimit(spans, 2, async (blocks, i) => {
    const host = hosts[i % PROCESSES]
    const r = await host.request({ cmd: 'serve', bootstrap: joinVia(), modelDir: STORIES, blocks, ttlMs: TTL_MS })
    if ((i + 1) % 5 === 0) log(`server ${i + 1} of ${SERVERS} up after ${round((performance.now() - t0) / 1000)} s`)
    return { host, peerId: r.peerId, blocks: r.blocks }
  })
  const tServers = performance.now()
  log(`started in ${round((tServers - t0) / 1000)} s (DHT nodes ${round((tDht - t0) / 1000)} s, servers ${round((tServers - tDht) / 1000)} s)`)

  // 1. every record visible to a newcomer
  const observer = await createMingaNode({ listen: [], bootstrap })
  let seen: ServerEntry[] = []
  const tJoin = performance.now()
  // a swarm that never shows every record is a result too: the count is reported, the run goes on
  let visibleMs: number | null = null
  for (;;) {
    seen = await findSpans(observer, modelId, numBlocks)
    if (servers.every(s => seen.some(e => e.peerId === s.peerId))) { visibleMs = performance.now() - tJoin; break }
    if (performance.now() - tJoin > 120_000) break
  }
  const visible = servers.filter(s => seen.some(e => e.peerId === s.peerId)).length
  log(visibleMs != null
    ? `all ${SERVERS} records visible ${round(visibleMs)} ms after a newcomer joined (${round((performance.now() - tServers))} ms after the last server announced)`
    : `only ${visible} of ${SERVERS} records visible 120 s after a newcomer joined`)

  // 2. DHT lookups
  const blockLookups: number[] = []
  for (let i = 0; i < LOOKUPS; i++) {
    const t = performance.now()
    await findBlockServers(observer, modelId, i % numBlocks)
    blockLookups.push(performance.now() - t)
  }
  const spanLookups: number[] = []
  for (let i = 0; i < Math.max(5, LOOKUPS / 10); i++) {
    const t = performance.now()
    await findSpans(observer, modelId, numBlocks)
    spanLookups.push(performance.now() - t)
  }
  log(`lookup of one block: ${JSON.stringify(stats(blockLookups))} ms; of all ${numBlocks} blocks (findSpans): ${JSON.stringify(stats(spanLookups))} ms`)

  // 3. route: the planner alone, and a fresh client until its route is up (DHT read, pings, sessions opened)
  const planUs: number[] = []
  for (let i = 0; i < 1000; i++) {
    const t = performance.now()
    planRoute(numBlocks, seen, () => 1)
    planUs.push((performance.now() - t) * 1000)
  }
  const routeMs: number[] = []
  for (let i = 0; i < 3; i++) {
    const client = await createClient({ modelDir: STORIES, bootstrap, threads: 1 })
    try {
      const t = performance.now()
      let found = NaN
      await untilDone(client.generate(PROMPTS[0], { maxNewTokens: 1, onRoute: () => { if (Number.isNaN(found)) found = performance.now() - t } }))
      routeMs.push(found)
    } finally {
      await client.close()
    }
  }
  log(`route planning over ${seen.length} servers: p50 ${round(quantile(planUs, 0.5))} µs; fresh client until its route is open: ${routeMs.map(m => round(m)).join(', ')} ms`)
  await observer.stop()

  // 4. churn during continuous generation
  const client = await createClient({ modelDir: STORIES, bootstrap, threads: 1 })
  const live = [...servers]
  let churning = true
  const generations: Array<{ ok: boolean, ms: number, failovers: number }> = []
  const generating = (async () => {
    for (let i = 0; churning || i < 1; i++) {
      const prompt = PROMPTS[i % PROMPTS.length]
      const t = performance.now()
      const result = await untilDone(client.generate(prompt, options))
      generations.push({ ok: JSON.stringify(result.ids) === JSON.stringify(expected.get(prompt)), ms: performance.now() - t, failovers: result.events.failovers })
    }
  })()
  const churnLog: string[] = []
  let kills = 0
  try {
    for (let k = 0; k < CHURN; k++) {
      await new Promise(resolve => setTimeout(resolve, 1000 + Math.random() * 1000))
      // a random live server, but never the last one of a block: churn, not an outage
      const holders = (b: number): number => live.filter(s => s.blocks![0] <= b && b < s.blocks![1]).length
      const candidates = live.filter(s => Array.from({ length: s.blocks![1] - s.blocks![0] }, (_, j) => s.blocks![0] + j).every(b => holders(b) > 1))
      const victim = candidates[Math.floor(Math.random() * candidates.length)]
      if (victim != null) {
        live.splice(live.indexOf(victim), 1)
        await victim.host.request({ cmd: 'stop', node: victim.peerId, crash: true })
        kills++
      }
      const host = hosts[k % PROCESSES]
      const r = await host.request({ cmd: 'serve', bootstrap: joinVia(), modelDir: STORIES, blocks: 'auto', numBlocks: 1 + (k % 2), ttlMs: TTL_MS })
      live.push({ host, peerId: r.peerId, blocks: r.blocks })
      churnLog.push(`killed ${victim?.blocks?.join(':') ?? '-'}, started ${r.blocks!.join(':')}`)
    }
  } finally {
    churning = false
  }
  await generating
  await client.close()
  const okCount = generations.filter(g => g.ok).length
  log(`churn: ${kills} servers crashed and ${CHURN} joined (${churnLog.join('; ')}); ${generations.length} generations of ${TOKENS} tokens, ${okCount} exact, ${generations.reduce((s, g) => s + g.failovers, 0)} failovers, durations ${JSON.stringify(stats(generations.map(g => g.ms)))} ms`)

  const report = {
    nodes: NODES,
    servers: SERVERS,
    processes: PROCESSES,
    startSeconds: round((tServers - t0) / 1000),
    allRecordsVisibleMs: visibleMs != null ? round(visibleMs) : null,
    recordsVisible: visible,
    blockLookupMs: stats(blockLookups),
    findSpansMs: stats(spanLookups),
    planRouteUsP50: round(quantile(planUs, 0.5), 2),
    freshClientRouteMs: routeMs.map(m => round(m)),
    churn: { crashed: kills, joined: CHURN, generations: generations.length, exact: okCount, failovers: generations.reduce((s, g) => s + g.failovers, 0), generationMs: stats(generations.map(g => g.ms)) },
    goals: { routeFoundUnder1s: routeMs.every(m => m <= 1000), lookupP95Under100ms: quantile(blockLookups, 0.95) <= 100 },
    machine: { cpus: availableParallelism(), model: /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1], load1: round(loadavg()[0], 2) }
  }
  if (flags.json === true) process.stdout.write(JSON.stringify(report) + '\n')
  else process.stdout.write(JSON.stringify(report, null, 2) + '\n')
  await Promise.all(hosts.map(async h => { await h.close() }))
  if (okCount !== generations.length) process.exitCode = 1
}

await main()
