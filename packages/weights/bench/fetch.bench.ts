// Fetch benchmark: throughput of fetching a TinyLlama-1.1B-shaped span (random BF16 weights, built
// once in ~/.cache/minga/bench) over loopback from 1 and from 3 `minga seed` processes, and the disk
// and memory footprint of a client that starts with only the model id.
//
//   node --import tsx packages/weights/bench/fetch.bench.ts [--blocks 0:4] [--parallel 4]
//
// See README.md next to this file (and its results).
import '@minga/p2p/polyfill'
import { execFileSync, spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { defaultCacheDir } from '@minga/engine'
import { createMingaNode } from '@minga/p2p'
import { buildManifest, fetchModel, findWeightProviders } from '../src/index.ts'
import { defaultCheckpointDir, ensureRandomCheckpoint } from '../../engine/bench/random-checkpoint.ts'
import { startNode, type NodeProcess } from '../../cli/src/processes.ts'

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const STORIES = fileURLToPath(new URL('../../../../shared/models/stories260k', import.meta.url))

const { values: flags } = parseArgs({ options: { blocks: { type: 'string', default: '0:4' }, parallel: { type: 'string', default: '4' } } })
const [start, end] = flags.blocks.split(':').map(Number)

// The random checkpoint has no tokenizer: a directory of hard links to it plus stories260k's
// tokenizer (its ids are valid in the larger vocabulary), so a client can start from it.
const checkpoint = ensureRandomCheckpoint(defaultCheckpointDir(), REPO_ROOT)
const modelDir = join(defaultCacheDir(), 'bench-weights', 'tinyllama')
mkdirSync(modelDir, { recursive: true })
for (const f of ['config.json', 'generation_config.json', 'model.safetensors']) if (!existsSync(join(modelDir, f))) linkSync(join(checkpoint.dir, f), join(modelDir, f))
for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(STORIES, f), join(modelDir, f))

let t = performance.now()
const { id: modelId, manifest } = buildManifest(modelDir)
console.log(`manifest of ${(checkpoint.bytes / 1e9).toFixed(2)} GB: ${((performance.now() - t) / 1000).toFixed(1)} s (cached after the first time), model id ${modelId}`)

const nodes: NodeProcess[] = []
const bootstrap = await startNode(['bootstrap'], { label: 'bootstrap' })
nodes.push(bootstrap)
const addr = bootstrap.ready.addrs[0]
const stores: string[] = []
try {
  for (let i = 0; i < 3; i++) nodes.push(await startNode(['seed', '--model', modelDir, '--bootstrap', addr], { label: `seed ${i}`, timeoutMs: 300_000 }))
  const node = await createMingaNode({ bootstrap: [addr] })
  try {
    t = performance.now()
    const found = await findWeightProviders(node, modelId)
    console.log(`DHT: ${found.length} providers found in ${(performance.now() - t).toFixed(0)} ms`)
    const seeds = nodes.slice(1).map(n => found.find(p => p.toString() === n.ready.peerId)!)
    for (const count of [1, 3]) {
      const cacheDir = mkdtempSync(join(tmpdir(), 'minga-fetch-bench-'))
      stores.push(cacheDir)
      t = performance.now()
      const result = await fetchModel({ node, modelId, cacheDir, providers: seeds.slice(0, count), parallel: Number(flags.parallel), select: { blocks: { start, end } } })
      const seconds = (performance.now() - t) / 1000
      console.log(`blocks ${start}:${end} from ${count} provider${count > 1 ? 's' : ''}: ${(result.bytesFetched / 1e6).toFixed(1)} MB in ${result.chunksFetched} chunks, ${seconds.toFixed(1)} s, ${(result.bytesFetched / 1e6 / seconds).toFixed(1)} MB/s ` +
        `(by provider: ${Object.values(result.bytesByProvider).map(b => (b / 1e6).toFixed(0)).join(' / ')} MB)`)
      result.store.close()
      rmSync(cacheDir, { recursive: true, force: true })
    }
  } finally {
    await node.stop()
  }

  // a client with only the model id, in its own process: what it fetches, keeps on disk, holds in memory
  const cacheDir = mkdtempSync(join(tmpdir(), 'minga-client-bench-'))
  stores.push(cacheDir)
  const child = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./client-footprint.ts', import.meta.url)), modelId, addr, cacheDir], { cwd: REPO_ROOT, encoding: 'utf8' })
  if (child.status !== 0) throw new Error(`client footprint failed: ${child.stderr}`)
  const report = JSON.parse(child.stdout.trim().split('\n').pop()!)
  const store = join(cacheDir, 'models', modelId)
  const diskKb = Number(execFileSync('du', ['-sk', store], { encoding: 'utf8' }).split('\t')[0])
  const apparentKb = Number(execFileSync('du', ['-sk', '--apparent-size', store], { encoding: 'utf8' }).split('\t')[0])
  const wholeMb = manifest.tensors.reduce((n, x) => n + x.end - x.begin, 0) / 1e6
  console.log(`client with only the model id: fetched ${(report.bytesFetched / 1e6).toFixed(1)} MB (${report.tensors.join(', ')}) of ${wholeMb.toFixed(0)} MB in ${(report.startMs / 1000).toFixed(1)} s; ` +
    `disk ${(diskKb / 1024).toFixed(0)} MiB (sparse; apparent ${(apparentKb / 1024).toFixed(0)} MiB); RSS ${report.rssMb.toFixed(0)} MiB, peak ${report.peakRssMb.toFixed(0)} MiB`)
  console.log(`load average during the run: ${loadavg().map(l => l.toFixed(1)).join(' ')}`)
} finally {
  for (const dir of stores) rmSync(dir, { recursive: true, force: true })
  await Promise.all(nodes.map(async n => await n.stop()))
}
