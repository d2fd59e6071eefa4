// Private swarms: `minga keygen` writes a pre-shared key; nodes started with `--swarm-key` form a
// swarm that works exactly like an open one for whoever has the key, and that nobody else can join
// (no key, or another key: a clear error, not a hang).
import { readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '@minga/cli'
import { createClient } from '@minga/client'
import { computeModelId, createLocalModel, untilDone } from '@minga/engine'
import { createMingaNode, loadSwarmKey, writeSwarmKey } from '@minga/p2p'
import { createServer } from '@minga/server'
import { startNode, type NodeProcess } from '@minga/cli/processes'
import { STORIES, tempDir } from '../packages/engine/test/helpers.ts'

/** The CLI in this process (the servers it talks to are separate processes). */
async function minga (...args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  let stdout = ''
  let stderr = ''
  const sink = (append: (s: string) => void): Writable => new Writable({ write (chunk, _encoding, done) { append(String(chunk)); done() } })
  const code = await runCli(['node', 'minga', ...args], { stdout: sink(s => { stdout += s }), stderr: sink(s => { stderr += s }) })
  return { code, stdout, stderr }
}

const PROMPT = 'Once upon a time'
const OPTIONS = { maxNewTokens: 20, temperature: 0 }
const KEY_FILE = /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}$/
// What a node without the swarm's key, or with another one, is told (see p2p/src/node.ts).
const NO_KEY = /^cannot join the swarm through \/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/\w+: the connection failed during the handshake \(.+\) — if that swarm is private, this node needs its key \(--swarm-key FILE\)$/
const OTHER_KEY = /^cannot join the swarm through \/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/\w+: the connection failed during the private-network handshake \(.+\) — do both sides use the same --swarm-key\? \(this node has a swarm key; the other side may have a different one or none\)$/

const dir = tempDir('private-swarm')
afterAll(() => { dir.remove() })

describe('minga keygen', () => {
  it('writes a libp2p swarm key with mode 0600, and replaces a file only with --force', async () => {
    const file = join(dir.path, 'keygen.key')
    const first = await minga('keygen', '--swarm-key', file)
    expect(first.code).toBe(0)
    expect(first.stdout).toContain(`wrote a new swarm key to ${file}`)
    const key = readFileSync(file, 'utf8')
    expect(key).toMatch(KEY_FILE)
    expect(statSync(file).mode & 0o777).toBe(0o600)

    const again = await minga('keygen', '--swarm-key', file)
    expect(again.code).toBe(1)
    expect(again.stderr.trim().split('\n')).toEqual([`minga: error: ${file} already exists; not replacing it (use --force to overwrite: every node of the swarm would then need the new key)`])
    expect(readFileSync(file, 'utf8')).toBe(key)

    const forced = await minga('keygen', '--swarm-key', file, '--force')
    expect(forced.code).toBe(0)
    expect(readFileSync(file, 'utf8')).toMatch(KEY_FILE)
    expect(readFileSync(file, 'utf8')).not.toBe(key)
    expect(statSync(file).mode & 0o777).toBe(0o600)
  })

  it('a missing or malformed key file is a one-line error', async () => {
    const missing = join(dir.path, 'missing.key')
    const bad = join(dir.path, 'bad.key')
    writeFileSync(bad, '/key/swarm/psk/1.0.0/\n/base16/\nnot-hex\n')
    const [a, b] = await Promise.all([
      minga('status', '--bootstrap', '/ip4/127.0.0.1/tcp/1/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq', '--swarm-key', missing),
      minga('bootstrap', '--swarm-key', bad)
    ])
    expect(a.code).toBe(1)
    expect(a.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^minga: error: swarm key file .*missing\.key does not exist \(create one with `minga keygen --swarm-key .*missing\.key`/)])
    expect(b.code).toBe(1)
    expect(b.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^minga: error: swarm key file .*bad\.key is not a swarm key: expected the lines "\/key\/swarm\/psk\/1\.0\.0\/", "\/base16\/" and 64 hex digits/)])
  })
})

describe('a private swarm', () => {
  const keyFile = join(dir.path, 'swarm.key')
  const otherFile = join(dir.path, 'other.key')
  const nodes: NodeProcess[] = []
  let bootstrapAddr: string
  let expected: number[]
  beforeAll(async () => {
    await Promise.all([writeSwarmKey(keyFile), writeSwarmKey(otherFile)])
    const local = createLocalModel({ modelDir: STORIES, quant: 'none' })
    const bootstrap = await startNode(['bootstrap', '--swarm-key', keyFile], { label: 'bootstrap (private)' })
    nodes.push(bootstrap)
    bootstrapAddr = bootstrap.ready.addrs[0]
    nodes.push(...await Promise.all(['0:3', '3:5'].map(async blocks =>
      await startNode(['serve', '--model', STORIES, '--quant', 'none', '--blocks', blocks, '--bootstrap', bootstrapAddr, '--swarm-key', keyFile, '--throughput', '100'], { label: `serve ${blocks} (private)` }))))
    const model = await local
    try {
      expected = (await untilDone(model.generate(PROMPT, OPTIONS))).ids
    } finally {
      await model.close()
    }
  })
  afterAll(async () => { await Promise.all(nodes.map(async n => await n.stop())) })

  it('a client with the key generates through it exactly as the local engine does', async () => {
    const client = await createClient({ modelDir: STORIES, bootstrap: [bootstrapAddr], swarmKey: await loadSwarmKey(keyFile) })
    try {
      const result = await untilDone(client.generate(PROMPT, OPTIONS))
      expect(result.ids).toEqual(expected)
      expect(result.route).toEqual([{ peerId: nodes[1].ready.peerId, blocks: [0, 3] }, { peerId: nodes[2].ready.peerId, blocks: [3, 5] }])
    } finally {
      await client.close()
    }
  })

  it('`minga generate` and `minga status` with --swarm-key work', async () => {
    const [generated, status] = await Promise.all([
      minga('generate', '--model', STORIES, '--prompt', PROMPT, '--max-new-tokens', '20', '--bootstrap', bootstrapAddr, '--swarm-key', keyFile, '--json'),
      minga('status', '--bootstrap', bootstrapAddr, '--swarm-key', keyFile, '--json')
    ])
    expect(generated.code).toBe(0)
    expect(JSON.parse(generated.stdout).ids).toEqual(expected)
    expect(status.code).toBe(0)
    const { models } = JSON.parse(status.stdout)
    expect(models).toHaveLength(1)
    expect(models[0].modelId).toBe(computeModelId(STORIES))
    expect(models[0].servers.map((s: any) => [s.start, s.end]).sort()).toEqual([[0, 3], [3, 5]])
    expect(models[0].coverage.map((c: any) => c.servers)).toEqual([1, 1, 1, 1, 1])
  })

  it('without the key, or with another one, clients, servers and `minga status` cannot join, and say why', async () => {
    const other = await loadSwarmKey(otherFile)
    const open = await createMingaNode({}) // an open swarm, for a node with a key to fail to join
    const failure = async (p: Promise<{ close?: () => Promise<void>, stop?: () => Promise<void> }>): Promise<string> => {
      const result = await p.then(async joined => {
        await (joined.close ?? joined.stop)?.()
        return new Error('it joined')
      }, (err: Error) => err)
      expect(result.name).toBe('BootstrapError')
      return result.message
    }
    // Any node of the swarm is a way in. Spread over all three: libp2p refuses more than 5 inbound
    // connections per second from one host (all of ours come from 127.0.0.1).
    const [via0, via1, via2] = nodes.map(n => n.ready.addrs[0])
    const [noKeyClient, otherKeyClient, noKeyServer, otherKeyServer, noKeyStatus, otherKeyStatus, keyToOpen] = await Promise.all([
      failure(createClient({ modelDir: STORIES, bootstrap: [via0] })),
      failure(createClient({ modelDir: STORIES, bootstrap: [via1], swarmKey: other })),
      failure(createServer({ modelDir: STORIES, blocks: { start: 0, end: 5 }, bootstrap: [via2], throughput: 100 })),
      failure(createServer({ modelDir: STORIES, blocks: { start: 0, end: 5 }, bootstrap: [via0], throughput: 100, swarmKey: other })),
      minga('status', '--bootstrap', via1),
      minga('status', '--bootstrap', via2, '--swarm-key', otherFile),
      failure(createMingaNode({ bootstrap: open.addrs(), swarmKey: other })).finally(async () => { await open.stop() })
    ])
    expect(keyToOpen).toMatch(OTHER_KEY)
    expect(noKeyClient).toMatch(NO_KEY)
    expect(noKeyServer).toMatch(NO_KEY)
    expect(otherKeyClient).toMatch(OTHER_KEY)
    expect(otherKeyServer).toMatch(OTHER_KEY)
    for (const [result, message] of [[noKeyStatus, NO_KEY], [otherKeyStatus, OTHER_KEY]] as const) {
      expect(result.code).toBe(1)
      const lines = result.stderr.trim().split('\n')
      expect(lines).toHaveLength(1)
      expect(lines[0].replace(/^minga: error: /, '')).toMatch(message)
    }
  })
})
