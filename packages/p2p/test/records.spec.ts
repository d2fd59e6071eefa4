import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  announceSpan, blockKey, createMingaNode, decodeBlockRecord, encodeBlockRecord, findBlockServers, findSpans,
  loadOrCreateIdentity, readBlockEntries, selectMingaRecord, signEntry, startAnnouncer, validateMingaRecord,
  withdrawSpan, type BlockRecord, type MingaNode, type ServerEntry, type SpanInfo
} from '../src/index.ts'
import { until } from '../../../test/fixtures/until.ts'

const MODEL = 'test-org/tiny-llama'
const TTL = 60_000

function info (start: number, end: number, throughput: number): SpanInfo {
  return { modelId: MODEL, start, end, throughput, freeSessions: 4, freeCacheTokens: 8192, version: '0.1.0' }
}

async function stopAll (nodes: Array<MingaNode | undefined>): Promise<void> {
  await Promise.all(nodes.map(async n => await n?.stop()))
}

const utf8 = new TextEncoder()

describe('DHT span records', () => {
  let boot: MingaNode
  let a: MingaNode
  let b: MingaNode
  let c: MingaNode
  let entryA: ServerEntry

  beforeAll(async () => {
    boot = await createMingaNode()
    ;[a, b] = await Promise.all([
      createMingaNode({ bootstrap: boot.addrs() }),
      createMingaNode({ bootstrap: boot.addrs() })
    ])
    c = await createMingaNode({ bootstrap: boot.addrs() }) // the client: knows only the bootstrap address
  })

  afterAll(async () => {
    await stopAll([c, b, a, boot])
  })

  it('a client that only knows the bootstrap finds every announced span, per block', async () => {
    const t0 = performance.now()
    const [ra, rb] = await Promise.all([
      announceSpan(a, info(0, 4, 10), TTL),
      announceSpan(b, info(2, 6, 25), TTL)
    ])
    const tAnnounce = performance.now() - t0
    entryA = ra.entry
    expect(ra.blocks.map(r => r.block)).toEqual([0, 1, 2, 3])
    expect(ra.blocks.every(r => r.stored > 0)).toBe(true)
    expect(rb.entry.addrs.every(addr => addr.includes('/p2p/' + b.peerId.toString()))).toBe(true)
    // two announcers raced on blocks 2 and 3; each re-announces (startAnnouncer does so every ttl/3),
    // after which both entries are certain to be there
    await announceSpan(a, info(0, 4, 10), TTL)
    await announceSpan(b, info(2, 6, 25), TTL)

    const t1 = performance.now()
    const spans = await findSpans(c, MODEL, 6)
    const tFind = performance.now() - t1
    expect(spans.map(s => [s.peerId, s.start, s.end])).toEqual([
      [a.peerId.toString(), 0, 4],
      [b.peerId.toString(), 2, 6]
    ])
    const perBlock: string[][] = []
    for (let block = 0; block < 6; block++) perBlock.push((await findBlockServers(c, MODEL, block)).map(e => e.peerId))
    const A = a.peerId.toString()
    const B = b.peerId.toString()
    // fastest first on shared blocks
    expect(perBlock).toEqual([[A], [A], [B, A], [B, A], [B], [B]])
    console.log(`dht: 2 concurrent span announcements (4 blocks each) ${tAnnounce.toFixed(0)} ms; findSpans over 6 blocks ${tFind.toFixed(0)} ms (4 nodes, loopback)`)
  })

  it('two servers that each put a value holding only their own entry (a lost race) both stay visible', async () => {
    // what a read-merge-put race leaves: each announcer read the block before the other's put
    const block = 7
    const now = Date.now()
    const own = async (node: MingaNode): Promise<ServerEntry> => await signEntry(node.privateKey, {
      ...info(block, block + 1, 5), addrs: node.addrs(), issued: now, expires: now + TTL
    })
    for (const node of [a, b]) {
      const value = encodeBlockRecord({ v: 1, modelId: MODEL, block, entries: [await own(node)] })
      for await (const ev of node.libp2p.services.dht.put(blockKey(MODEL, block), value)) void ev
    }
    // every holder merged the second put into the first instead of replacing it
    expect((await findBlockServers(c, MODEL, block)).map(e => e.peerId).sort()).toEqual([a.peerId.toString(), b.peerId.toString()].sort())
    await withdrawSpan(a, MODEL, a.peerId.toString(), [block])
    await withdrawSpan(b, MODEL, b.peerId.toString(), [block])
  })

  it('the validator rejects expired, malformed and forged records', async () => {
    const key = blockKey(MODEL, 1)
    const good: BlockRecord = { v: 1, modelId: MODEL, block: 1, entries: [entryA] }
    await expect(validateMingaRecord(key, encodeBlockRecord(good))).resolves.toBeUndefined()

    const now = Date.now()
    const signedBy = async (fields: Partial<ServerEntry>, key = a.privateKey): Promise<ServerEntry> => {
      return await signEntry(key, { ...entryA, issued: now, expires: now + TTL, ...fields })
    }
    const record = (entries: unknown[], over: Record<string, unknown> = {}): Uint8Array => utf8.encode(JSON.stringify({ v: 1, modelId: MODEL, block: 1, entries, ...over }))
    const x = await generateKeyPair('Ed25519')

    const cases: Array<[string, Uint8Array, RegExp]> = [
      ['not JSON', utf8.encode('{"v":1,'), /not UTF-8 JSON/],
      ['not UTF-8', Uint8Array.of(0xff, 0xfe), /not UTF-8 JSON/],
      ['array', utf8.encode('[]'), /not a JSON object/],
      ['wrong version', record([entryA], { v: 2 }), /version/],
      ['other model', record([entryA], { modelId: 'other' }), /modelId does not match/],
      ['other block', record([entryA], { block: 2 }), /block does not match/],
      ['no entries', record([]), /1\.\.64 entries/],
      ['extra field', record([entryA], { extra: 1 }), /unknown field/],
      ['entry wrong type', record([{ ...entryA, start: '0' }]), /start\/end/],
      ['entry start >= end', record([await signedBy({ start: 3, end: 3 })]), /is empty/],
      ['block not in span', record([await signedBy({ start: 2, end: 4 })]), /does not hold block 1/],
      ['expired', record([await signedBy({ issued: now - 2 * TTL, expires: now - TTL })]), /expired/],
      ['lives too long', record([await signedBy({ expires: now + 2 * 3600_000 })]), /more than/],
      ['issued in the future', record([await signedBy({ issued: now + 3600_000, expires: now + 3600_000 + TTL })]), /future/],
      ['duplicate peer', record([entryA, await signedBy({ throughput: 99 })]), /twice/],
      ['bad address', record([await signedBy({ addrs: ['not a multiaddr'] })]), /not a multiaddr/],
      ['empty weights', record([{ ...(await signedBy({})), weights: '' }]), /weights must be/],
      ['weights added after signing', record([{ ...entryA, weights: 'int4-b128-v3' }]), /bad signature/],
      // forgeries
      ['tampered after signing', record([{ ...entryA, throughput: 1e9 }]), /bad signature/],
      ['signed by another key', record([{ ...(await signedBy({}, x)), peerId: a.peerId.toString() }]), /another peer's public key|bad signature/],
      ['another key, claimed peer', record([{ ...(await signedBy({}, x)), pubKey: entryA.pubKey }]), /another peer's public key|bad signature/],
      ['garbage signature', record([{ ...entryA, sig: 'AAAA' }]), /bad signature|unreadable/]
    ]
    // what a server's weights are is signed with the rest; entries without it (older servers) still verify
    const withWeights = await signedBy({ weights: 'int8-rows7-v3' })
    expect((await decodeBlockRecord(key, record([withWeights]))).entries[0].weights).toBe('int8-rows7-v3')
    expect(entryA.weights).toBeUndefined()
    for (const [name, value, message] of cases) {
      const err = await validateMingaRecord(key, value).then(() => undefined, (e: Error) => e)
      expect(err, name).toBeDefined()
      expect(err?.name, name).toBe('InvalidRecordError')
      expect(err?.message, name).toMatch(message)
    }
    // a record holding one live entry next to an expired one is still valid (holders keep serving
    // values while their entries lapse); readers only return the live entry
    const stale = await signedBy({ issued: now - 2 * TTL, expires: now - TTL }, x)
    const mixed = await decodeBlockRecord(key, encodeBlockRecord({ v: 1, modelId: MODEL, block: 1, entries: [entryA, stale] }))
    expect(mixed.entries.length).toBe(2)
    // unknown keys are refused
    await expect(validateMingaRecord(utf8.encode('/minga/span/x/y'), encodeBlockRecord(good))).rejects.toMatchObject({ name: 'InvalidRecordError' })
  })

  it('forged and expired values put by a rogue node are refused by the other nodes', async () => {
    const rogue = await createMingaNode({ bootstrap: boot.addrs() })
    try {
      const now = Date.now()
      // an entry claiming to be b, signed by the rogue's key, next to a's genuine entry
      const forged: ServerEntry = { ...(await signEntry(rogue.privateKey, { ...entryA, start: 0, end: 9, throughput: 1e6, issued: now, expires: now + TTL })), peerId: b.peerId.toString() }
      const forgedValue = encodeBlockRecord({ v: 1, modelId: MODEL, block: 0, entries: [entryA, forged] })
      const expiredValue = encodeBlockRecord({ v: 1, modelId: MODEL, block: 1, entries: [await signEntry(rogue.privateKey, { ...entryA, issued: now - 2 * TTL, expires: now - TTL })] })
      for (const [block, value] of [[0, forgedValue], [1, expiredValue]] as const) {
        let stored = 0
        let errors = 0
        for await (const ev of rogue.libp2p.services.dht.put(blockKey(MODEL, block), value)) {
          if (ev.name === 'PEER_RESPONSE' && ev.messageName === 'PUT_VALUE') stored++
          if (ev.name === 'QUERY_ERROR') errors++
        }
        expect(stored, `block ${block}`).toBe(0)
        expect(errors, `block ${block}`).toBeGreaterThan(0)
      }
      // the client still sees exactly the genuine servers
      expect((await findBlockServers(c, MODEL, 0)).map(e => e.peerId)).toEqual([a.peerId.toString()])
      expect((await findBlockServers(c, MODEL, 1)).map(e => e.peerId)).toEqual([a.peerId.toString()])
      // ...even when asking the rogue itself, which holds the bad values locally (validated on read)
      expect((await findBlockServers(rogue, MODEL, 0)).map(e => e.peerId)).toEqual([a.peerId.toString()])
    } finally {
      await rogue.stop()
    }
  })

  it('withdraw removes an entry before it expires; only its owner can withdraw it', async () => {
    await expect(withdrawSpan(b, MODEL, a.peerId.toString(), [0])).rejects.toMatchObject({ name: 'InvalidArgumentError' })
    const results = await withdrawSpan(a, MODEL, a.peerId.toString(), { start: 0, end: 4 })
    expect(results.map(r => r.block)).toEqual([0, 1, 2, 3])
    expect((await findSpans(c, MODEL, 6)).map(s => s.peerId)).toEqual([b.peerId.toString()])
    expect(await findBlockServers(c, MODEL, 0)).toEqual([])
    expect((await findBlockServers(c, MODEL, 2)).map(e => e.peerId)).toEqual([b.peerId.toString()])
    // the record keeps a signed tombstone, so an older live copy cannot resurrect the entry
    const raw = await readBlockEntries(c, MODEL, 2)
    expect(raw.find(e => e.peerId === a.peerId.toString())?.withdrawn).toBe(true)
    // announcing again brings it back (its new entry is newer than the tombstone)
    await announceSpan(a, info(0, 4, 10), TTL)
    expect((await findBlockServers(c, MODEL, 2)).map(e => e.peerId).sort()).toEqual([a.peerId.toString(), b.peerId.toString()].sort())
  })

  it('entries expire, and an announcer keeps its entry alive and withdraws it on stop', async () => {
    const d = await createMingaNode({ bootstrap: boot.addrs() })
    try {
      // a one-off announcement with a short TTL disappears on its own
      // (the TTL leaves a slow machine time to read it back before it expires)
      const announced = Date.now()
      await announceSpan(d, { ...info(6, 8, 5) }, 8000)
      expect((await findBlockServers(c, MODEL, 6)).map(e => e.peerId)).toEqual([d.peerId.toString()])
      await until(async () => (await findBlockServers(c, MODEL, 6)).length === 0, 'the announcement has expired')
      expect(Date.now() - announced).toBeGreaterThanOrEqual(8000)

      // a periodic announcer outlives its TTL
      let announcements = 0
      const errors: unknown[] = []
      const ttlMs = 2000
      const started = Date.now()
      let span: [number, number] = [6, 8]
      const announcer = startAnnouncer(d, () => ({ ...info(span[0], span[1], 5), freeSessions: announcements }), {
        ttlMs, intervalMs: 500, onAnnounce: () => { announcements++ }, onError: err => errors.push(err)
      })
      await announcer.ready
      // poll rather than sleep a fixed time, so a loaded machine only makes this slower
      await until(() => announcements >= 3 && Date.now() - started >= ttlMs + 200, 'the announcer has renewed its entry past its TTL')
      expect(errors).toEqual([])
      const live = await findBlockServers(c, MODEL, 7)
      expect(live.map(e => e.peerId)).toEqual([d.peerId.toString()])
      expect(live[0].freeSessions).toBeGreaterThan(0) // a fresh announcement, not the first one
      // the server moves its span: the block it left is withdrawn, the new span is found
      span = [7, 9]
      // (a put that a loaded machine cut short at its deadline is repaired by the next announcement:
      // wait for what the DHT shows rather than expect it after one round)
      await announcer.announceNow()
      const spansOfD = async (): Promise<string> => JSON.stringify((await findSpans(c, MODEL, 9)).filter(e => e.peerId === d.peerId.toString()).map(e => [e.start, e.end]))
      await until(async () => (await findBlockServers(c, MODEL, 6)).length === 0 && await spansOfD() === '[[7,9]]', 'the DHT shows the moved span [7, 9) only')
      await announcer.stop()
      await until(async () => (await findBlockServers(c, MODEL, 7)).length === 0 && (await findBlockServers(c, MODEL, 8)).length === 0, 'the withdrawn span is gone')
    } finally {
      await d.stop()
    }
  })

  it('the selector prefers the value with the most live entries', async () => {
    const key = blockKey(MODEL, 2)
    const now = Date.now()
    const x = await generateKeyPair('Ed25519')
    const ex = await signEntry(x, { ...entryA, issued: now, expires: now + TTL })
    const one = encodeBlockRecord({ v: 1, modelId: MODEL, block: 2, entries: [entryA] })
    const two = encodeBlockRecord({ v: 1, modelId: MODEL, block: 2, entries: [entryA, ex].sort((p, q) => p.peerId < q.peerId ? -1 : 1) })
    expect(await selectMingaRecord(key, [one, two])).toBe(1)
    expect(await selectMingaRecord(key, [two, one])).toBe(0)
    expect(await selectMingaRecord(key, [utf8.encode('junk'), one])).toBe(1)
  })
})

describe('node setup', () => {
  it('fails to bootstrap with an error naming the unreachable address', async () => {
    const other = await generateKeyPair('Ed25519')
    const addr = `/ip4/127.0.0.1/tcp/1/p2p/${peerIdFromPrivateKey(other).toString()}`
    const t0 = Date.now()
    const err = await createMingaNode({ bootstrap: [addr], bootstrapTimeoutMs: 1500 }).then(() => undefined, (e: Error) => e)
    expect(err?.name).toBe('BootstrapError')
    expect(err?.message).toContain(addr)
    expect(Date.now() - t0).toBeLessThan(5000)
    await expect(createMingaNode({ bootstrap: ['/ip4/127.0.0.1/tcp/1'] })).rejects.toMatchObject({ name: 'InvalidArgumentError' })
  })

  it('persists the identity in a 0600 file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'minga-id-'))
    try {
      const file = join(dir, 'sub', 'identity.key')
      const k1 = await loadOrCreateIdentity(file)
      expect((await stat(file)).mode & 0o777).toBe(0o600)
      const k2 = await loadOrCreateIdentity(file)
      expect(k2.equals(k1)).toBe(true)
      const node = await createMingaNode({ privateKey: k2 })
      expect(node.peerId.equals(peerIdFromPrivateKey(k1))).toBe(true)
      await node.stop()
      await writeFile(join(dir, 'bad.key'), 'not a key')
      await expect(loadOrCreateIdentity(join(dir, 'bad.key'))).rejects.toMatchObject({ name: 'IdentityError' })
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
