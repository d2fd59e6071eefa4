// Across NAT, for real: a bootstrap/relay in a "public" network namespace, two homes each behind its
// own NAT router (iptables MASQUERADE) with a server each, and a client in a third home. The servers
// find out they cannot be dialled back, reserve relay slots, announce relayed addresses, and the
// client generates through both: the output equals the local engine's.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLocalModel, untilDone } from '@minga/engine'
import { runMingaWith, startNode, type NodeProcess } from '@minga/cli/processes'
import { STORIES } from '../packages/engine/test/helpers.ts'
import { createNatLab, natLabUnavailable, removeLeftovers, type NatLab } from './netns.ts'

const PROMPT = 'Once upon a time'
const MAX_NEW_TOKENS = 20
const unavailable = natLabUnavailable()
if (unavailable !== undefined) console.warn(`nat.spec.ts skipped: cannot make network namespaces (${unavailable})`)

describe.skipIf(unavailable !== undefined)('a swarm across NAT (network namespaces)', () => {
  let lab: NatLab
  const nodes: NodeProcess[] = []
  let bootstrapId: string
  let bootstrapPort: string
  let expected: number[]

  beforeAll(async () => {
    const local = await createLocalModel({ modelDir: STORIES })
    try {
      expected = (await untilDone(local.generate(PROMPT, { maxNewTokens: MAX_NEW_TOKENS, temperature: 0 }))).ids
    } finally {
      await local.close()
    }
    removeLeftovers()
    lab = createNatLab(3)
    const relay = await startNode(['bootstrap', '--relay', '--listen', '/ip4/0.0.0.0/tcp/0'], { label: 'bootstrap/relay', prefix: lab.exec(lab.publicNs), timeoutMs: 180_000 })
    nodes.push(relay)
    bootstrapId = relay.ready.peerId
    bootstrapPort = relay.ready.addrs[0].split('/tcp/')[1].split('/')[0]
    for (const [i, blocks] of ['0:3', '3:5'].entries()) {
      const home = lab.homes[i]
      nodes.push(await startNode([
        'serve', '--model', STORIES, '--blocks', blocks, '--listen', `/ip4/${home.addr}/tcp/0`, '--bootstrap', bootstrapAddr(i)
      ], { label: `home ${i + 1} serve ${blocks}`, prefix: lab.exec(home.ns), timeoutMs: 180_000 }))
    }
  }, 600_000) // three processes one after another: slow on a loaded machine

  afterAll(async () => {
    await Promise.all(nodes.map(async n => await n.stop()))
    lab?.destroy()
  })

  /** The bootstrap's address as home i reaches it (its address on that home's uplink). */
  function bootstrapAddr (home: number): string {
    return `/ip4/${lab.homes[home].publicAddr}/tcp/${bootstrapPort}/p2p/${bootstrapId}`
  }

  it('servers behind NAT serve through relay slots, and a client in a third home gets the local output', async () => {
    for (const server of nodes.slice(1)) {
      expect(server.ready.addrs.some(a => a.includes(`/p2p/${bootstrapId}/p2p-circuit`)), server.log()).toBe(true)
      expect(server.log()).toMatch(/not reachable from outside: serving through a relay/)
    }
    const client = lab.homes[2]
    const result = await runMingaWith({ prefix: lab.exec(client.ns) },
      'generate', '--model', STORIES, '--bootstrap', bootstrapAddr(2), '--prompt', PROMPT, '--max-new-tokens', String(MAX_NEW_TOKENS), '--json')
    expect(result.code, result.stderr).toBe(0)
    const output = JSON.parse(result.stdout) as { ids: number[], route: Array<{ peerId: string, blocks: [number, number] }> }
    expect(output.ids).toEqual(expected)
    expect(output.route).toEqual([
      { peerId: nodes[1].ready.peerId, blocks: [0, 3] },
      { peerId: nodes[2].ready.peerId, blocks: [3, 5] }
    ])
  })
})
