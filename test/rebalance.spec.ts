// Self-healing coverage: three `--blocks auto` servers (processes) of three blocks each over
// stories260k's five; the server of the last blocks is killed, and another one moves its span there
// without restarting, so that every block has a server again and generation is exact once more.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createClient } from '@minga/client'
import { computeModelId, createLocalModel, loadModelConfig, untilDone } from '@minga/engine'
import { createMingaNode, findSpans, type MingaNode, type ServerEntry } from '@minga/p2p'
import { runMinga, startNode, type NodeProcess } from '@minga/cli/processes'
import { STORIES } from '../packages/engine/test/helpers.ts'

const PROMPT = 'Once upon a time'
const OPTIONS = { maxNewTokens: 20, temperature: 0 }
const MODEL = { modelId: computeModelId(STORIES), numBlocks: loadModelConfig(STORIES).numLayers }

/** Polls `probe` until it returns a value, or fails after timeoutMs naming what it waited for. */
async function waitFor<T> (what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 250))
  }
}

function covered (spans: ServerEntry[]): boolean {
  return Array.from({ length: MODEL.numBlocks }, (_, b) => b).every(b => spans.some(s => s.start <= b && b < s.end))
}

describe('--blocks auto servers heal the coverage when a server dies', () => {
  const nodes: NodeProcess[] = []
  let observer: MingaNode
  let bootstrapAddr: string
  let expected: number[]

  beforeAll(async () => {
    const local = await createLocalModel({ modelDir: STORIES })
    try {
      expected = (await untilDone(local.generate(PROMPT, OPTIONS))).ids
    } finally {
      await local.close()
    }
    const bootstrap = await startNode(['bootstrap'], { label: 'bootstrap', timeoutMs: 180_000 })
    nodes.push(bootstrap)
    bootstrapAddr = bootstrap.ready.addrs[0]
    observer = await createMingaNode({ bootstrap: [bootstrapAddr] })
    // The same announced speed everywhere, and each server starts once the previous ones are seen,
    // so block selection is deterministic: [0,3), [2,5), [0,3).
    for (let i = 0; i < 3; i++) {
      await waitFor(`${i} servers in the DHT`, 60_000, async () => (await findSpans(observer, MODEL.modelId, MODEL.numBlocks)).length >= i ? true : undefined)
      nodes.push(await startNode([
        'serve', '--model', STORIES, '--blocks', 'auto', '--num-blocks', '3', '--throughput', '100',
        '--bootstrap', bootstrapAddr, '--announce-ttl', '30', '--rebalance-interval', '1.5', '--drain-timeout', '5'
      ], { label: `auto ${i}`, timeoutMs: 180_000 }))
    }
  }, 600_000) // four processes one after another: slow on a loaded machine // four processes one after another: slow on a loaded machine

  afterAll(async () => {
    await observer?.stop()
    await Promise.all(nodes.map(async n => await n.stop()))
  })

  it('another server moves to the blocks of a killed one, and generation is exact again', async () => {
    const servers = nodes.slice(1)
    expect(servers.map(n => n.ready.blocks)).toEqual([[0, 3], [2, 5], [0, 3]])
    const victim = servers[1]
    await victim.kill()

    const healed = await waitFor('every block to have a live server other than the killed one', 150_000, async () => {
      const spans = (await findSpans(observer, MODEL.modelId, MODEL.numBlocks)).filter(s => s.peerId !== victim.ready.peerId)
      return covered(spans) ? spans : undefined
    }).catch(err => { throw new Error(`${err.message}\n${servers.map(n => `${n.label}:\n${n.log()}`).join('\n')}`) })
    const mover = servers.find(n => healed.some(s => s.peerId === n.ready.peerId && s.start === 2 && s.end === 5))
    expect(mover, JSON.stringify(healed)).toBeDefined()
    expect(mover!.child.exitCode).toBeNull() // moved in place: the same process
    expect(mover!.log()).toMatch(/rebalancing: moving to blocks \[2, 5\) because blocks 3–4 had no server/)

    const client = await createClient({ modelDir: STORIES, bootstrap: [bootstrapAddr] })
    try {
      const result = await untilDone(client.generate(PROMPT, OPTIONS)).catch(err => { throw new Error(`${err.message}\n${JSON.stringify(healed)}\n${servers.map(n => `${n.label}:\n${n.log()}`).join('\n')}`) })
      expect(result.ids).toEqual(expected)
    } finally {
      await client.close()
    }

    const status = await runMinga('status', '--bootstrap', bootstrapAddr, '--model', STORIES, '--json')
    expect(status.code, status.stderr).toBe(0)
    const shown = (JSON.parse(status.stdout) as { models: Array<{ servers: Array<{ peerId: string, lastMove?: { from: number[], to: number[], reason: string } }> }> })
      .models[0].servers.find(s => s.peerId === mover!.ready.peerId)
    expect(shown?.lastMove, status.stdout).toMatchObject({ from: [0, 3], to: [2, 5], reason: 'blocks 3–4 had no server' })
  }, 300_000)
})
