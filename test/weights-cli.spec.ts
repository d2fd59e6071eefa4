// The command-line contract of weights from the swarm, as processes: `minga manifest` names the id,
// `minga seed` shares a directory, `minga serve --model-id` fetches and serves, and `minga generate
// --model-id` fetches only the client's part and prints the reference ids.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { computeModelId } from '@minga/engine'
import { runMinga, startNode, type NodeProcess } from '@minga/cli/processes'
import { STORIES, STORIES_REFERENCE_IDS, tempDir } from '../packages/engine/test/helpers.ts'

const nodes: NodeProcess[] = []
const cache = tempDir('weights-cli')
const previousCache = process.env.MINGA_CACHE

beforeAll(() => { process.env.MINGA_CACHE = join(cache.path, 'client') }) // runMinga's processes inherit it
afterAll(async () => {
  await Promise.all(nodes.map(async n => await n.stop()))
  if (previousCache == null) delete process.env.MINGA_CACHE
  else process.env.MINGA_CACHE = previousCache
  cache.remove()
})

it('manifest → seed → serve --model-id → generate --model-id', async () => {
  const manifest = await runMinga('manifest', '--model', STORIES, '--json')
  expect(manifest.code).toBe(0)
  const { modelId } = JSON.parse(manifest.stdout)
  expect(modelId).toBe(computeModelId(STORIES))

  const bootstrap = await startNode(['bootstrap'], { label: 'bootstrap' })
  nodes.push(bootstrap)
  const addr = bootstrap.ready.addrs[0]
  const seed = await startNode(['seed', '--model', STORIES, '--bootstrap', addr], { label: 'seed' })
  nodes.push(seed)
  expect((seed.ready as { modelId?: string }).modelId).toBe(modelId)
  const server = await startNode(['serve', '--model-id', modelId, '--blocks', 'auto', '--bootstrap', addr, '--throughput', '100'], {
    label: 'serve --model-id', env: { MINGA_CACHE: join(cache.path, 'server') }
  })
  nodes.push(server)
  expect(server.ready.blocks).toEqual([0, 5])
  expect(server.log()).toMatch(/fetched [\d.]+ MB in \d+ chunks/)

  const result = await runMinga('generate', '--model-id', modelId, '--bootstrap', addr, '--prompt', 'Once upon a time', '--max-new-tokens', String(STORIES_REFERENCE_IDS.length), '--json')
  expect(result.stderr).not.toMatch(/error/)
  expect(result.code).toBe(0)
  expect(JSON.parse(result.stdout).ids).toEqual(STORIES_REFERENCE_IDS)
  // the client's store holds the small files and a sparse weights file
  expect(existsSync(join(cache.path, 'client', 'models', modelId, 'tokenizer.json'))).toBe(true)

  const bad = await runMinga('generate', '--model-id', 'bafkreinotanid', '--bootstrap', addr, '--prompt', 'x')
  expect(bad.code).toBe(1)
  expect(bad.stderr).toMatch(/^minga: error: "bafkreinotanid" is not a model id/)
})
