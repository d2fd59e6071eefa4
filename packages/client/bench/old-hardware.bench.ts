// Old hardware: a Llama-2-7B-shaped random checkpoint (BF16 ≈ 13.5 GB) served int4 by four
// `minga serve` processes of 8 layers each, every one inside its own 1.5 GiB cgroup memory limit,
// plus a client in this process. Reports per node: time to ready (cold: preparing its layers;
// warm: loading them), peak RSS and cgroup peak, OOM kills; and prefill/decode speed through the
// four-node swarm, cold and warm.
//
//   pnpm bench:old-hardware [--limit-mb 1536] [--cache-mb 96] [--prompt-tokens 32] [--decode-tokens 16] [--threads N] [--json]
//
// Needs root (cgroups), ≈ 15 GB of disk for the checkpoint and ≈ 4.5 GB for the prepared spans.
import '@minga/p2p/polyfill'
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, loadavg } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { seededRandom, untilDone } from '@minga/engine'
import { defaultCheckpointDir, ensureRandomCheckpoint, ensureTokenizer, LLAMA2_7B_SHAPE } from '../../engine/bench/random-checkpoint.ts'
import { startNode, type NodeProcess } from '@minga/cli/processes'
import { createClient, type SwarmGenerationResult } from '../src/index.ts'

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const NODES = 4

const { values } = parseArgs({
  options: {
    'limit-mb': { type: 'string', default: '1536' },
    'cache-mb': { type: 'string', default: '96' },
    'prompt-tokens': { type: 'string', default: '32' },
    'decode-tokens': { type: 'string', default: '16' },
    // every node may use all cores: a single stream runs one node at a time
    threads: { type: 'string', default: String(availableParallelism()) },
    json: { type: 'boolean' }
  }
})
const limitBytes = Number(values['limit-mb']) * 2 ** 20
const note = (msg: string): void => { process.stderr.write(msg + '\n') }

/** A memory cgroup per node: v2 (memory.max) where the machine has it, else v1 (memory.limit_in_bytes). */
interface Cgroup { dir: string, version: 1 | 2, wrap: string[], peak: () => number, oomKills: () => number, remove: () => void }

function createCgroup (name: string): Cgroup {
  const v2 = existsSync('/sys/fs/cgroup/cgroup.controllers')
  const dir = v2 ? `/sys/fs/cgroup/${name}` : `/sys/fs/cgroup/memory/${name}`
  mkdirSync(dir, { recursive: true })
  const read = (file: string): string => { try { return readFileSync(join(dir, file), 'utf8') } catch { return '' } }
  if (v2) {
    writeFileSync(join(dir, 'memory.max'), String(limitBytes))
    if (existsSync(join(dir, 'memory.swap.max'))) writeFileSync(join(dir, 'memory.swap.max'), '0')
  } else {
    writeFileSync(join(dir, 'memory.limit_in_bytes'), String(limitBytes))
    try { writeFileSync(join(dir, 'memory.max_usage_in_bytes'), '0') } catch {}
  }
  return {
    dir,
    version: v2 ? 2 : 1,
    // the shell joins the cgroup, then becomes the node: everything it allocates is counted
    wrap: ['sh', '-c', `echo $$ > ${join(dir, 'cgroup.procs')} && exec "$@"`, 'sh'],
    peak: () => Number((v2 ? read('memory.peak') : read('memory.max_usage_in_bytes')).trim() || NaN),
    oomKills: () => Number((v2 ? /^oom_kill (\d+)/m.exec(read('memory.events')) : /^oom_kill (\d+)/m.exec(read('memory.oom_control')))?.[1] ?? 0),
    remove: () => { try { rmdirSync(dir) } catch {} }
  }
}

interface NodeReport { blocks: [number, number], readyMs: number, peakRssBytes: number, cgroupPeakBytes: number, oomKills: number, exit?: number | string }

function vmHwm (pid: number | undefined): number {
  try {
    return Number(/^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) * 1024
  } catch {
    return NaN
  }
}

async function phase (label: string, modelDir: string, cacheDir: string, bootstrapAddr: string): Promise<{ nodes: NodeReport[], generation?: { prefillTokensPerSecond: number, decodeTokensPerSecond: number, prefillMs: number, tokens: number }, error?: string }> {
  const perNode = LLAMA2_7B_SHAPE.numLayers / NODES
  const cgroups = Array.from({ length: NODES }, (_, i) => createCgroup(`minga-old-hardware-${i}`))
  const nodes: Array<NodeProcess | undefined> = []
  const reports: NodeReport[] = []
  try {
    const started = performance.now()
    const readyAt: number[] = []
    const results = await Promise.allSettled(cgroups.map(async (cgroup, i) => {
      const blocks = `${i * perNode}:${(i + 1) * perNode}`
      const node = await startNode(['serve', '--model', modelDir, '--blocks', blocks, '--quant', 'int4', '--cache-mb', values['cache-mb']!,
        '--cache-dir', cacheDir, '--bootstrap', bootstrapAddr, '--throughput', '1', '--threads', values.threads!],
      { label: `${label} node ${blocks}`, timeoutMs: 3_600_000, prefix: cgroup.wrap, onLog: line => { note(`  [${blocks}] ${line}`) } })
      readyAt[i] = performance.now() - started
      nodes[i] = node
    }))
    const failed = results.find(r => r.status === 'rejected') as PromiseRejectedResult | undefined
    let generation
    let error: string | undefined
    if (failed == null) {
      let client: Awaited<ReturnType<typeof createClient>> | undefined
      try {
        client = await createClient({ modelDir, bootstrap: [bootstrapAddr], threads: 2 })
        const random = seededRandom(7)
        const prompt = [1, ...Array.from({ length: Number(values['prompt-tokens']) - 1 }, () => 3 + Math.floor(random() * (LLAMA2_7B_SHAPE.vocabSize - 3)))]
        const result: SwarmGenerationResult = await untilDone(client.generate(prompt, { maxNewTokens: Number(values['decode-tokens']), temperature: 0 }))
        generation = { prefillMs: result.prefillMs, prefillTokensPerSecond: prompt.length / (result.prefillMs / 1000), decodeTokensPerSecond: result.tokensPerSecond, tokens: result.ids.length }
      } catch (err: any) {
        error = `generation failed: ${err?.message ?? err}`
      } finally {
        await client?.close()
      }
    } else {
      error = `a node failed to start: ${failed.reason?.message ?? failed.reason}`
    }
    for (let i = 0; i < NODES; i++) {
      const node = nodes[i]
      reports.push({
        blocks: [i * perNode, (i + 1) * perNode],
        readyMs: readyAt[i] ?? NaN,
        peakRssBytes: vmHwm(node?.child.pid),
        cgroupPeakBytes: cgroups[i].peak(),
        oomKills: cgroups[i].oomKills()
      })
    }
    return { nodes: reports, generation, error }
  } finally {
    // (stopped even when the phase failed before its reports were written)
    await Promise.all(nodes.map(async (node, i) => { const exit = await node?.stop(); if (reports[i] != null) reports[i].exit = exit }))
    for (const cgroup of cgroups) cgroup.remove()
  }
}

async function main (): Promise<void> {
  const benchDir = dirname(defaultCheckpointDir())
  const modelDir = join(benchDir, 'llama2-7b-random')
  const cacheDir = join(benchDir, 'prepared-7b')
  note(`checkpoint: ${modelDir} (built once, ≈ 13.5 GB)`)
  const checkpoint = ensureRandomCheckpoint(modelDir, REPO_ROOT, LLAMA2_7B_SHAPE, 4321)
  note(checkpoint.reused ? '  reusing it' : `  built in ${(checkpoint.buildMs / 1000).toFixed(0)} s`)
  if (ensureTokenizer(modelDir, LLAMA2_7B_SHAPE.vocabSize)) note('  wrote a generated tokenizer (the client loads one)')
  const bootstrap = await startNode(['bootstrap'], { label: 'bootstrap' })
  const report: Record<string, unknown> = { startedAt: new Date().toISOString(), cores: availableParallelism(), limitBytes, loadAverageAtStart: loadavg() }
  try {
    note('cold: four nodes prepare their 8 layers (int4) and start…')
    rmSync(cacheDir, { recursive: true, force: true }) // (a run before left its prepared layers: cold starts from none)
    report.cold = await phase('cold', modelDir, cacheDir, bootstrap.ready.addrs[0])
    note('warm: the same four nodes start from their prepared layers…')
    report.warm = await phase('warm', modelDir, cacheDir, bootstrap.ready.addrs[0])
  } finally {
    await bootstrap.stop()
  }
  report.loadAverageAtEnd = loadavg()
  if (values.json === true) {
    process.stdout.write(JSON.stringify(report) + '\n')
    return
  }
  const mib = (b: number): string => `${(b / 2 ** 20).toFixed(0)} MiB`
  const lines = [`old hardware: Llama-2-7B-shaped random checkpoint, int4, ${NODES} nodes × 8 layers, each in a ${mib(limitBytes)} cgroup (--cache-mb ${values['cache-mb']}), ${availableParallelism()} cores`]
  for (const name of ['cold', 'warm'] as const) {
    const p = report[name] as Awaited<ReturnType<typeof phase>>
    lines.push(`${name}:`)
    for (const n of p.nodes) lines.push(`  [${n.blocks[0]}, ${n.blocks[1]}) ready ${(n.readyMs / 1000).toFixed(1)} s, peak RSS ${mib(n.peakRssBytes)}, cgroup peak ${mib(n.cgroupPeakBytes)}, OOM kills ${n.oomKills}, exit ${n.exit}`)
    if (p.generation != null) lines.push(`  prefill ${p.generation.prefillTokensPerSecond.toFixed(2)} tok/s (${values['prompt-tokens']} tokens), decode ${p.generation.decodeTokensPerSecond.toFixed(2)} tok/s (${p.generation.tokens} tokens)`)
    if (p.error != null) lines.push(`  FAILED: ${p.error}`)
  }
  process.stdout.write(lines.join('\n') + '\n')
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`)
  process.exitCode = 1
})
