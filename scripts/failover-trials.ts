// Failover trials: a swarm with two replicas of every span (separate processes); in each trial a
// server on the client's current route is killed (SIGKILL) at a random decoding step, and the
// generation must finish with exactly the uninterrupted output. `pnpm failover-trials [--trials 50]`
// prints the count and the time from a server's death to the next token; the test suite runs 20.
import '@minga/p2p/polyfill'
import { parseArgs } from 'node:util'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { createClient, type MingaClient, type SwarmGenerateOptions } from '@minga/client'
import { createLocalModel, untilDone } from '@minga/engine'
import { REPO_ROOT, startNode, type NodeProcess } from '@minga/cli/processes'

export interface TrialResult {
  trial: number
  sampled: boolean
  killedAtStep: number
  killedSpan: [number, number]
  identical: boolean
  failovers: number
  /** From the kill to the next token reaching the client. */
  deathToNextTokenMs: number
}

export interface TrialsInit {
  modelDir: string
  trials: number
  seed?: number
  maxNewTokens?: number
  log?: (line: string) => void
}

const SPANS: Array<[number, number]> = [[0, 2], [2, 4], [4, 5]]

export async function runFailoverTrials (init: TrialsInit): Promise<TrialResult[]> {
  const log = init.log ?? (() => {})
  const random = lcg(init.seed ?? 1)
  const maxNewTokens = init.maxNewTokens ?? 40
  const prompt = 'Once upon a time'
  const runs: Record<'greedy' | 'sampled', SwarmGenerateOptions> = {
    greedy: { maxNewTokens, temperature: 0 },
    sampled: { maxNewTokens, temperature: 0.8, topK: 40, seed: 7 }
  }
  const expected = new Map<string, number[]>()
  const local = await createLocalModel({ modelDir: init.modelDir, quant: 'none' })
  try {
    for (const [name, options] of Object.entries(runs)) expected.set(name, (await untilDone(local.generate(prompt, options))).ids)
  } finally {
    await local.close()
  }

  const bootstrap = await startNode(['bootstrap'], { label: 'bootstrap' })
  const bootstrapAddr = bootstrap.ready.addrs[0]
  const servers = new Set<NodeProcess>()
  // Generous bounds, not expectations: on a starved machine renewals and lookups run late, and the
  // client skips a killed server's stale entry after one failed dial anyway.
  const startServer = async (span: [number, number]): Promise<NodeProcess> => {
    const server = await startNode(['serve', '--model', init.modelDir, '--quant', 'none', '--blocks', `${span[0]}:${span[1]}`, '--bootstrap', bootstrapAddr, '--announce-ttl', '30', '--threads', '1'], { label: `serve ${span}` })
    servers.add(server)
    return server
  }
  const results: TrialResult[] = []
  const client = await createClient({ modelDir: init.modelDir, bootstrap: [bootstrapAddr], failoverTimeoutMs: 60_000 })
  try {
    for (const span of [...SPANS, ...SPANS]) await startServer(span)
    await visible(client, [...servers].map(s => s.ready.peerId))
    for (let trial = 0; trial < init.trials; trial++) {
      const sampled = trial % 2 === 1
      const killAt = 1 + Math.floor(random() * (maxNewTokens - 2))
      let route: Array<{ peerId: string, blocks: [number, number] }> = []
      const stream = client.generate(prompt, { ...runs[sampled ? 'sampled' : 'greedy'], onRoute: r => { route = r } })
      let victim: NodeProcess | undefined
      let killedAt = 0
      let deathToNextTokenMs = NaN
      let steps = 0
      let step = await stream.next()
      while (step.done !== true) {
        steps++
        if (victim != null && Number.isNaN(deathToNextTokenMs)) deathToNextTokenMs = performance.now() - killedAt
        if (steps === killAt) {
          const hop = route[Math.floor(random() * route.length)]
          victim = [...servers].find(s => s.ready.peerId === hop.peerId)!
          killedAt = performance.now()
          await victim.kill()
          servers.delete(victim)
        }
        step = await stream.next()
      }
      const result: TrialResult = {
        trial,
        sampled,
        killedAtStep: killAt,
        killedSpan: victim!.ready.blocks!,
        identical: JSON.stringify(step.value.ids) === JSON.stringify(expected.get(sampled ? 'sampled' : 'greedy')),
        failovers: step.value.events.failovers,
        deathToNextTokenMs
      }
      results.push(result)
      log(`trial ${trial + 1}/${init.trials}: killed [${result.killedSpan}] at step ${killAt}, ${result.identical ? 'identical' : 'DIFFERENT'} output, ${result.failovers} failover(s), next token ${deathToNextTokenMs.toFixed(0)} ms after the kill`)
      const replacement = await startServer(result.killedSpan) // back to two replicas per span
      await visible(client, [replacement.ready.peerId])
    }
  } finally {
    await client.close()
    await Promise.all([...servers].map(async s => await s.stop()))
    await bootstrap.stop()
  }
  return results
}

/** Waits until the DHT shows these servers (on a busy machine announcements take a while to spread). */
async function visible (client: MingaClient, peerIds: string[]): Promise<void> {
  const deadline = Date.now() + 60_000
  for (;;) {
    const status = await client.status().catch(() => undefined)
    const seen = new Set(status?.servers.map(s => s.peerId))
    if (peerIds.every(p => seen.has(p))) return
    if (Date.now() > deadline) throw new Error(`servers ${peerIds.filter(p => !seen.has(p)).join(', ')} never appeared in the DHT`)
    await new Promise(resolve => setTimeout(resolve, 300))
  }
}

export function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

function lcg (seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0
    return state / 2 ** 32
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({ options: { trials: { type: 'string', default: '50' }, seed: { type: 'string', default: '1' }, model: { type: 'string' }, json: { type: 'boolean' } } })
  const modelDir = values.model ?? join(REPO_ROOT, 'models/stories260k')
  const results = await runFailoverTrials({ modelDir, trials: Number(values.trials), seed: Number(values.seed), log: line => process.stderr.write(line + '\n') })
  const identical = results.filter(r => r.identical).length
  const summary = { trials: results.length, identical, medianDeathToNextTokenMs: median(results.map(r => r.deathToNextTokenMs)), maxDeathToNextTokenMs: Math.max(...results.map(r => r.deathToNextTokenMs)) }
  process.stdout.write(values.json === true ? JSON.stringify({ summary, results }) + '\n' : `${identical}/${results.length} trials identical to the uninterrupted run; time from a server's death to the next token: median ${summary.medianDeathToNextTokenMs.toFixed(0)} ms, max ${summary.maxDeathToNextTokenMs.toFixed(0)} ms\n`)
  process.exitCode = identical === results.length ? 0 : 1
}
