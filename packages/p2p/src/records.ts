// DHT span records: which servers hold which blocks of which model.
//
// Layout (like Petals): one DHT key per (model, block), `/minga/block/<encodeURIComponent(modelId)>/<block>`,
// whose value is the *set* of servers holding that block: JSON `{ v: 1, modelId, block, entries }`,
// one ServerEntry per peer. A DHT cannot enumerate keys, so per-server keys would make "who serves
// model M?" unanswerable; per-block keys let a client ask for each block directly.
//
// Each entry is signed by its server's libp2p key (over canonicalEntryBytes, with the protobuf public
// key in the entry) so nobody can announce, alter or withdraw another peer's entry. Entries carry
// `issued` (signing time) and `expires`; for one peer the entry with the newest `issued` wins, so a
// signed *tombstone* (`withdrawn: true`, kept until the withdrawn entry would have expired) beats the
// live entry it replaces wherever both are seen.
//
// Writes: kad-dht keeps one value per key and a PUT replaces it, and nothing republishes values, so
// announcers get-merge-put: read every value the DHT returns for the key (not just the selected
// one), merge with their own entry (newest per peer, expired ones dropped) and put the union; and
// they re-announce every ttl/3 (startAnnouncer).
//
// Races: two servers announcing the same block at the same moment both read V and both put V+self.
// Every minga node's DHT store (record-store.ts) merges a block value that arrives with the one it
// holds instead of replacing it, so neither entry is lost on a holder that runs minga. Readers also
// take the union of all values they receive, and the selector (used by kad-dht to pick "the" value
// and to push it back to holders with other values) prefers the value with the most live entries.
// Without the merging store, 50-node swarms always missed a few servers' entries.
// A malicious DHT holder can still drop or hide entries (not forge them): re-announcing and querying
// several holders (kad-dht queries up to k) is the mitigation.

import { publicKeyFromProtobuf, publicKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { fromString as u8FromString } from 'uint8arrays/from-string'
import { toString as u8ToString } from 'uint8arrays/to-string'
import type { PrivateKey } from '@libp2p/interface'
import { InvalidArgumentError, InvalidRecordError } from './errors.ts'
import type { MingaNode } from './node.ts'

export const RECORD_VERSION = 1
export const RECORD_NAMESPACE = 'minga'
export const DEFAULT_TTL_MS = 3 * 60 * 1000
/** Longest lifetime of an entry (bounds replays and how long tombstones are kept). */
export const MAX_TTL_MS = 60 * 60 * 1000
/** How far in the future an entry's `issued` time may be (clock skew between peers). */
export const MAX_CLOCK_SKEW_MS = 60 * 1000
export const MAX_ENTRIES_PER_BLOCK = 64
export const MAX_BLOCK_VALUE_BYTES = 64 * 1024
export const MAX_BLOCK_INDEX = 0xffff
export const DEFAULT_DHT_TIMEOUT_MS = 10_000

const SIGNING_DOMAIN = 'minga/span-entry/v1'
const utf8 = new TextEncoder()
const utf8Decoder = new TextDecoder('utf-8', { fatal: true })

/** What a server says about itself; announceSpan adds peer id, times, public key and signature. */
export interface SpanInfo {
  modelId: string
  /** First block held. */
  start: number
  /** One past the last block held. */
  end: number
  /** Tokens per second this server pushes through its whole span. */
  throughput: number
  freeSessions: number
  freeCacheTokens: number
  /** minga version, for compatibility checks. */
  version: string
  /** A public name chosen by the operator, shown by `minga status`. */
  name?: string
  /** What its weights are: quantization and format, e.g. `int8-rows7-v3` (see ServerEntry.weights). */
  weights?: string
  /** Multiaddrs to reach the server; default: the node's addresses (with /p2p/). */
  addrs?: string[]
}

/** One server's signed entry as stored in block records. */
export interface ServerEntry {
  v: 1
  modelId: string
  peerId: string
  addrs: string[]
  start: number
  end: number
  throughput: number
  freeSessions: number
  freeCacheTokens: number
  version: string
  name?: string
  /**
   * What its weights are (quantization and format): servers with other weights compute slightly
   * other outputs, so a client verifies a server's step only on servers with the same. Absent in
   * entries of servers from before it existed.
   */
  weights?: string
  /** ms epoch when signed; for one peer the newest entry wins. */
  issued: number
  /** ms epoch after which the entry is ignored. */
  expires: number
  /** A signed withdrawal: the server no longer serves this span. */
  withdrawn?: true
  /** The peer's public key, libp2p protobuf encoding, base64. */
  pubKey: string
  /** Signature of canonicalEntryBytes(entry) by the peer's key, base64. */
  sig: string
}

/** The value stored under one block key. */
export interface BlockRecord {
  v: 1
  modelId: string
  block: number
  entries: ServerEntry[]
}

const ENTRY_KEYS = new Set(['v', 'modelId', 'peerId', 'addrs', 'start', 'end', 'throughput', 'freeSessions', 'freeCacheTokens', 'version', 'name', 'weights', 'issued', 'expires', 'withdrawn', 'pubKey', 'sig'])
const RECORD_KEYS = new Set(['v', 'modelId', 'block', 'entries'])

// ---- keys -----------------------------------------------------------------------------------

export function blockKeyString (modelId: string, block: number): string {
  checkModelId(modelId)
  if (!isInt(block, 0, MAX_BLOCK_INDEX)) throw new InvalidArgumentError(`block index ${block} out of range [0, ${MAX_BLOCK_INDEX}]`)
  return `/${RECORD_NAMESPACE}/block/${encodeURIComponent(modelId)}/${block}`
}

export function blockKey (modelId: string, block: number): Uint8Array {
  return utf8.encode(blockKeyString(modelId, block))
}

/** Parses `/minga/block/<model>/<block>`; throws InvalidRecordError. */
export function parseBlockKey (key: Uint8Array): { modelId: string, block: number } {
  let s: string
  try {
    s = utf8Decoder.decode(key)
  } catch {
    throw new InvalidRecordError('record key is not UTF-8')
  }
  const m = /^\/minga\/block\/([^/]+)\/(0|[1-9][0-9]{0,4})$/.exec(s)
  if (m === null) throw new InvalidRecordError(`unknown record key ${JSON.stringify(s.slice(0, 200))}`)
  let modelId: string
  try {
    modelId = decodeURIComponent(m[1])
  } catch {
    throw new InvalidRecordError('record key has a badly escaped model id')
  }
  const block = Number(m[2])
  if (block > MAX_BLOCK_INDEX || encodeURIComponent(modelId) !== m[1]) throw new InvalidRecordError(`record key ${JSON.stringify(s)} is not canonical`)
  return { modelId, block }
}

function checkModelId (modelId: string): void {
  if (typeof modelId !== 'string' || modelId.length === 0 || modelId.length > 256) {
    throw new InvalidArgumentError('model id must be a string of 1..256 characters')
  }
}

// ---- entries: signing and checking ----------------------------------------------------------

/** The bytes a server signs: a fixed-order JSON array of every entry field except pubKey and sig. */
export function canonicalEntryBytes (e: Omit<ServerEntry, 'pubKey' | 'sig'>): Uint8Array {
  return utf8.encode(JSON.stringify([
    SIGNING_DOMAIN, e.v, e.modelId, e.peerId, e.addrs, e.start, e.end, e.throughput,
    e.freeSessions, e.freeCacheTokens, e.version, e.issued, e.expires, e.withdrawn === true, e.name ?? null,
    // (only when present, so that entries signed before the field existed still verify)
    ...(e.weights != null ? [e.weights] : [])
  ]))
}

/** Signs an entry with the server's key (peerId is derived from the key). */
export async function signEntry (privateKey: PrivateKey, fields: Omit<ServerEntry, 'v' | 'peerId' | 'pubKey' | 'sig'>): Promise<ServerEntry> {
  const unsigned: Omit<ServerEntry, 'pubKey' | 'sig'> = {
    v: RECORD_VERSION,
    modelId: fields.modelId,
    peerId: peerIdFromPublicKey(privateKey.publicKey).toString(),
    addrs: [...fields.addrs],
    start: fields.start,
    end: fields.end,
    throughput: fields.throughput,
    freeSessions: fields.freeSessions,
    freeCacheTokens: fields.freeCacheTokens,
    version: fields.version,
    ...(fields.name != null ? { name: fields.name } : {}),
    ...(fields.weights != null ? { weights: fields.weights } : {}),
    issued: fields.issued,
    expires: fields.expires,
    ...(fields.withdrawn === true ? { withdrawn: true as const } : {})
  }
  const sig = await privateKey.sign(canonicalEntryBytes(unsigned))
  return {
    ...unsigned,
    pubKey: u8ToString(publicKeyToProtobuf(privateKey.publicKey), 'base64'),
    sig: u8ToString(sig, 'base64')
  }
}

function isInt (v: unknown, min: number, max: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max
}

function isShortString (v: unknown, min: number, max: number): v is string {
  return typeof v === 'string' && v.length >= min && v.length <= max
}

/** Checks everything about an entry except its signature. */
function checkEntryShape (e: unknown, now: number): asserts e is ServerEntry {
  if (e === null || typeof e !== 'object' || Array.isArray(e)) throw new InvalidRecordError('entry is not an object')
  const o = e as Record<string, unknown>
  for (const k of Object.keys(o)) if (!ENTRY_KEYS.has(k)) throw new InvalidRecordError(`entry has unknown field ${JSON.stringify(k.slice(0, 40))}`)
  if (o.v !== RECORD_VERSION) throw new InvalidRecordError(`entry version ${String(o.v)} is not ${RECORD_VERSION}`)
  if (!isShortString(o.modelId, 1, 256)) throw new InvalidRecordError('entry modelId must be a string of 1..256 characters')
  if (!isShortString(o.peerId, 1, 128)) throw new InvalidRecordError('entry peerId must be a string of 1..128 characters')
  if (!Array.isArray(o.addrs) || o.addrs.length > 16 || !o.addrs.every(a => isShortString(a, 1, 256))) {
    throw new InvalidRecordError('entry addrs must be at most 16 strings of 1..256 characters')
  }
  for (const a of o.addrs as string[]) {
    try {
      multiaddr(a)
    } catch {
      throw new InvalidRecordError(`entry address ${JSON.stringify(a.slice(0, 80))} is not a multiaddr`)
    }
  }
  if (!isInt(o.start, 0, MAX_BLOCK_INDEX) || !isInt(o.end, 0, MAX_BLOCK_INDEX + 1)) throw new InvalidRecordError('entry start/end must be integers in [0, 65536]')
  if (o.start >= o.end) throw new InvalidRecordError(`entry span [${o.start}, ${o.end}) is empty`)
  if (typeof o.throughput !== 'number' || !Number.isFinite(o.throughput) || o.throughput < 0) throw new InvalidRecordError('entry throughput must be a finite number ≥ 0')
  if (!isInt(o.freeSessions, 0, 2 ** 31) || !isInt(o.freeCacheTokens, 0, 2 ** 40)) throw new InvalidRecordError('entry freeSessions/freeCacheTokens must be integers ≥ 0')
  if (!isShortString(o.version, 0, 64)) throw new InvalidRecordError('entry version must be a string of at most 64 characters')
  if (o.name !== undefined && !isShortString(o.name, 0, 64)) throw new InvalidRecordError('entry name must be a string of at most 64 characters')
  if (o.weights !== undefined && !isShortString(o.weights, 1, 64)) throw new InvalidRecordError('entry weights must be a string of 1..64 characters')
  if (!isInt(o.issued, 0, Number.MAX_SAFE_INTEGER) || !isInt(o.expires, 0, Number.MAX_SAFE_INTEGER)) throw new InvalidRecordError('entry issued/expires must be integer ms timestamps')
  if (o.expires <= o.issued) throw new InvalidRecordError('entry expires before it was issued')
  if (o.expires - o.issued > MAX_TTL_MS) throw new InvalidRecordError(`entry lives ${o.expires - o.issued} ms, more than ${MAX_TTL_MS}`)
  if (o.issued > now + MAX_CLOCK_SKEW_MS) throw new InvalidRecordError('entry was issued in the future')
  if (o.withdrawn !== undefined && o.withdrawn !== true) throw new InvalidRecordError('entry withdrawn must be true or absent')
  if (!isShortString(o.pubKey, 1, 1024) || !isShortString(o.sig, 1, 1024)) throw new InvalidRecordError('entry pubKey/sig must be base64 strings')
}

// Entries are re-validated every time a value passes through kad-dht (on put, on every get
// response, on local reads): remember the ones whose signature checked out.
const verified = new Map<string, true>()
const VERIFIED_CACHE_SIZE = 4096

async function checkEntrySignature (e: ServerEntry): Promise<void> {
  const canonical = canonicalEntryBytes(e)
  const cacheKey = `${e.pubKey}|${e.sig}|${u8ToString(canonical)}`
  if (verified.has(cacheKey)) return
  let pub
  try {
    pub = publicKeyFromProtobuf(u8FromString(e.pubKey, 'base64'))
  } catch {
    throw new InvalidRecordError(`entry of ${e.peerId} has an unreadable public key`)
  }
  if (peerIdFromPublicKey(pub).toString() !== e.peerId) throw new InvalidRecordError(`entry claims peer ${e.peerId} but carries another peer's public key`)
  let sig: Uint8Array
  try {
    sig = u8FromString(e.sig, 'base64')
  } catch {
    throw new InvalidRecordError(`entry of ${e.peerId} has an unreadable signature`)
  }
  let ok = false
  try {
    ok = await pub.verify(canonical, sig)
  } catch {
    ok = false
  }
  if (!ok) throw new InvalidRecordError(`entry of ${e.peerId} has a bad signature`)
  if (verified.size >= VERIFIED_CACHE_SIZE) verified.delete(verified.keys().next().value as string)
  verified.set(cacheKey, true)
}

/** Validates one entry completely (shape, times, signature); throws InvalidRecordError. */
export async function validateEntry (entry: unknown, now = Date.now()): Promise<ServerEntry> {
  checkEntryShape(entry, now)
  await checkEntrySignature(entry)
  return entry
}

/** A live entry: not withdrawn and not expired. */
export function isLive (e: ServerEntry, now = Date.now()): boolean {
  return e.withdrawn !== true && e.expires > now
}

// ---- block values ---------------------------------------------------------------------------

export function encodeBlockRecord (rec: BlockRecord): Uint8Array {
  return utf8.encode(JSON.stringify(rec))
}

/**
 * Decodes and fully validates a block value for `key`: JSON shape, model and block matching the key,
 * every entry well-formed, covering the block and correctly signed, no duplicate peers, and at
 * least one entry not yet expired (older entries are tolerated next to live ones, since holders
 * keep serving a value as its entries lapse; they are dropped at the next merge).
 */
export async function decodeBlockRecord (key: Uint8Array, value: Uint8Array, now = Date.now()): Promise<BlockRecord> {
  const { modelId, block } = parseBlockKey(key)
  if (!(value instanceof Uint8Array)) throw new InvalidRecordError('record value is not bytes')
  if (value.length > MAX_BLOCK_VALUE_BYTES) throw new InvalidRecordError(`record value of ${value.length} bytes exceeds ${MAX_BLOCK_VALUE_BYTES}`)
  let parsed: unknown
  try {
    parsed = JSON.parse(utf8Decoder.decode(value))
  } catch {
    throw new InvalidRecordError('record value is not UTF-8 JSON')
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new InvalidRecordError('record value is not a JSON object')
  const o = parsed as Record<string, unknown>
  for (const k of Object.keys(o)) if (!RECORD_KEYS.has(k)) throw new InvalidRecordError(`record has unknown field ${JSON.stringify(k.slice(0, 40))}`)
  if (o.v !== RECORD_VERSION) throw new InvalidRecordError(`record version ${String(o.v)} is not ${RECORD_VERSION}`)
  if (o.modelId !== modelId) throw new InvalidRecordError('record modelId does not match its key')
  if (o.block !== block) throw new InvalidRecordError('record block does not match its key')
  if (!Array.isArray(o.entries) || o.entries.length === 0 || o.entries.length > MAX_ENTRIES_PER_BLOCK) {
    throw new InvalidRecordError(`record must hold 1..${MAX_ENTRIES_PER_BLOCK} entries`)
  }
  const peers = new Set<string>()
  let unexpired = 0
  for (const e of o.entries) {
    checkEntryShape(e, now)
    if (e.modelId !== modelId) throw new InvalidRecordError(`entry of ${e.peerId} is for another model`)
    if (block < e.start || block >= e.end) throw new InvalidRecordError(`entry of ${e.peerId} spans [${e.start}, ${e.end}), which does not hold block ${block}`)
    if (peers.has(e.peerId)) throw new InvalidRecordError(`record lists peer ${e.peerId} twice`)
    peers.add(e.peerId)
    if (e.expires > now) unexpired++
  }
  if (unexpired === 0) throw new InvalidRecordError('record has expired (every entry is past its expiry)')
  for (const e of o.entries as ServerEntry[]) await checkEntrySignature(e)
  return o as unknown as BlockRecord
}

/** kad-dht validator for /minga/... keys. */
export async function validateMingaRecord (key: Uint8Array, value: Uint8Array): Promise<void> {
  await decodeBlockRecord(key, value)
}

/** kad-dht selector: the value with the most live entries, then the most unexpired, then the newest. */
export async function selectMingaRecord (key: Uint8Array, values: Uint8Array[]): Promise<number> {
  const now = Date.now()
  let best = 0
  let bestScore: [number, number, number] = [-1, -1, -1]
  for (let i = 0; i < values.length; i++) {
    let score: [number, number, number]
    try {
      const rec = await decodeBlockRecord(key, values[i], now)
      score = [
        rec.entries.filter(e => isLive(e, now)).length,
        rec.entries.filter(e => e.expires > now).length,
        Math.max(...rec.entries.map(e => e.issued))
      ]
    } catch {
      continue
    }
    if (score[0] > bestScore[0] || (score[0] === bestScore[0] && (score[1] > bestScore[1] || (score[1] === bestScore[1] && score[2] > bestScore[2])))) {
      best = i
      bestScore = score
    }
  }
  return best
}

export const recordValidators = { [RECORD_NAMESPACE]: validateMingaRecord }
export const recordSelectors = { [RECORD_NAMESPACE]: selectMingaRecord }

/**
 * Union of entries: for each peer the newest (`issued`, then `expires`) entry, tombstones included;
 * entries past their expiry dropped. Sorted by peer id.
 */
export function mergeEntries (entries: Iterable<ServerEntry>, now = Date.now()): ServerEntry[] {
  const byPeer = new Map<string, ServerEntry>()
  for (const e of entries) {
    const cur = byPeer.get(e.peerId)
    if (cur === undefined || e.issued > cur.issued || (e.issued === cur.issued && (e.expires > cur.expires || (e.expires === cur.expires && e.sig > cur.sig)))) {
      byPeer.set(e.peerId, e)
    }
  }
  return [...byPeer.values()].filter(e => e.expires > now).sort((a, b) => a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0)
}

// ---- DHT operations -------------------------------------------------------------------------

export interface DhtOptions {
  /** Per get/put timeout. Default 10 s. */
  timeoutMs?: number
  signal?: AbortSignal
}

function dhtSignal (opts: DhtOptions): AbortSignal {
  const t = AbortSignal.timeout(opts.timeoutMs ?? DEFAULT_DHT_TIMEOUT_MS)
  return opts.signal !== undefined ? AbortSignal.any([t, opts.signal]) : t
}

/**
 * Holders whose values a read waits for. Every minga holder merges the values put to it
 * (record-store.ts), so a few of them already hold the union; waiting for the whole query (kad-dht
 * asks every closest peer, then pushes corrections to each stale one in turn) made a lookup in a
 * 50-node swarm take seconds, often the whole timeout.
 */
export const DHT_READ_QUORUM = 3

/**
 * Every valid value the DHT returns for a key: each responding peer's record (in PEER_RESPONSE
 * events) until DHT_READ_QUORUM holders have answered, or all the query found when fewer hold it
 * (kad-dht's get() yields its own selected value, and ours if we hold one, only at its end).
 */
async function getAllValues (node: MingaNode, key: Uint8Array, opts: DhtOptions): Promise<Uint8Array[]> {
  const values: Uint8Array[] = []
  const enough = new AbortController()
  const signal = AbortSignal.any([dhtSignal(opts), enough.signal])
  await untilAborted(signal, async () => {
    try {
      for await (const ev of node.libp2p.services.dht.get(key, { signal })) {
        if (ev.name === 'VALUE') values.push(ev.value)
        else if (ev.name === 'PEER_RESPONSE' && ev.record != null) {
          values.push(ev.record.value)
          if (values.length >= DHT_READ_QUORUM) {
            enough.abort()
            break
          }
        }
      }
    } catch {
      // a timeout, or kad-dht failing to push its "correction" to a stale holder: keep what we got
    }
  })
  if (opts.signal?.aborted === true) throw opts.signal.reason
  return [...values]
}

/**
 * Runs a DHT query, but returns by the time `signal` aborts even if the query does not: kad-dht
 * does not always notice the abort (seen with a peer that died mid-query), and a caller must not
 * hang on it. What the query gathered until then is kept.
 */
async function untilAborted (signal: AbortSignal, query: () => Promise<void>): Promise<void> {
  if (signal.aborted) return
  let onAbort = (): void => {}
  const aborted = new Promise<void>(resolve => { onAbort = resolve })
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    await Promise.race([query(), aborted])
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}

/** All valid, unexpired entries (tombstones included) for one block, merged over every value found. */
export async function readBlockEntries (node: MingaNode, modelId: string, block: number, opts: DhtOptions = {}): Promise<ServerEntry[]> {
  const key = blockKey(modelId, block)
  const now = Date.now()
  const entries: ServerEntry[] = []
  for (const value of await getAllValues(node, key, opts)) {
    try {
      entries.push(...(await decodeBlockRecord(key, value, now)).entries)
    } catch {
      // kad-dht validated it already; it may have expired since
    }
  }
  return mergeEntries(entries, now)
}

export interface PutResult {
  block: number
  /** Remote DHT peers that accepted the value (0 on a lone node: it is only stored locally). */
  stored: number
  failed: number
}

/**
 * A block's value from these entries, within bounds: each peer's newest entry, and when there are too
 * many, `keep`'s own first, then live ones, the longest-lived first.
 */
export function boundedBlockValue (modelId: string, block: number, entries: Iterable<ServerEntry>, keep?: string, now = Date.now()): Uint8Array {
  let list = mergeEntries(entries, now)
  if (list.length > MAX_ENTRIES_PER_BLOCK || encodeBlockRecord({ v: 1, modelId, block, entries: list }).length > MAX_BLOCK_VALUE_BYTES) {
    const rank = (e: ServerEntry): number => (e.peerId === keep ? 2e15 : 0) + (isLive(e, now) ? 1e15 : 0) + e.expires
    list = [...list].sort((a, b) => rank(b) - rank(a)).slice(0, MAX_ENTRIES_PER_BLOCK)
    while (list.length > 1 && encodeBlockRecord({ v: 1, modelId, block, entries: list }).length > MAX_BLOCK_VALUE_BYTES) list.pop()
    list.sort((a, b) => a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0)
  }
  return encodeBlockRecord({ v: 1, modelId, block, entries: list })
}

async function putBlock (node: MingaNode, modelId: string, block: number, entries: ServerEntry[], keep: string, opts: DhtOptions): Promise<PutResult> {
  const value = boundedBlockValue(modelId, block, entries, keep)
  let stored = 0
  let failed = 0
  const signal = dhtSignal(opts)
  await untilAborted(signal, async () => {
    try {
      for await (const ev of node.libp2p.services.dht.put(blockKey(modelId, block), value, { signal })) {
        if (ev.name === 'PEER_RESPONSE' && ev.messageName === 'PUT_VALUE') stored++
        else if (ev.name === 'QUERY_ERROR') failed++
      }
    } catch {
      failed++
    }
  })
  if (opts.signal?.aborted === true) throw opts.signal.reason
  return { block, stored, failed }
}

async function mapLimit<T, R> (items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i])
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return out
}

function range (start: number, end: number): number[] {
  return Array.from({ length: Math.max(0, end - start) }, (_, i) => start + i)
}

// `issued` must grow strictly per node even within one millisecond (newest entry wins).
const lastIssued = new WeakMap<PrivateKey, number>()
function nextIssued (key: PrivateKey, atLeast = 0): number {
  const t = Math.max(Date.now(), (lastIssued.get(key) ?? 0) + 1, atLeast)
  lastIssued.set(key, t)
  return t
}

export interface AnnounceResult {
  entry: ServerEntry
  blocks: PutResult[]
}

/** Signs an entry for `info` valid for ttlMs and get-merge-puts it under every block of its span. */
export async function announceSpan (node: MingaNode, info: SpanInfo, ttlMs = DEFAULT_TTL_MS, opts: DhtOptions = {}): Promise<AnnounceResult> {
  checkModelId(info.modelId)
  if (!isInt(ttlMs, 1000, MAX_TTL_MS)) throw new InvalidArgumentError(`ttl ${ttlMs} ms out of range [1000, ${MAX_TTL_MS}]`)
  if (!isInt(info.start, 0, MAX_BLOCK_INDEX) || !isInt(info.end, 1, MAX_BLOCK_INDEX + 1) || info.start >= info.end) {
    throw new InvalidArgumentError(`span [${info.start}, ${info.end}) is invalid`)
  }
  const issued = nextIssued(node.privateKey)
  const entry = await signEntry(node.privateKey, {
    modelId: info.modelId,
    addrs: (info.addrs ?? node.addrs()).slice(0, 16),
    start: info.start,
    end: info.end,
    throughput: info.throughput,
    freeSessions: info.freeSessions,
    freeCacheTokens: info.freeCacheTokens,
    version: info.version,
    name: info.name,
    weights: info.weights,
    issued,
    expires: issued + ttlMs
  })
  checkEntryShape(entry, Date.now()) // catch bad fields here rather than as a rejected put
  const blocks = await mapLimit(range(info.start, info.end), 8, async (block) => {
    const current = await readBlockEntries(node, info.modelId, block, opts)
    return await putBlock(node, info.modelId, block, [...current, entry], entry.peerId, opts)
  })
  return { entry, blocks }
}

/**
 * Replaces this node's entries for the given blocks with signed tombstones, so readers stop seeing
 * it before its entries expire. Only the node itself can withdraw (peerId must be its own).
 */
export async function withdrawSpan (node: MingaNode, modelId: string, peerId: string, blocks: number[] | { start: number, end: number }, opts: DhtOptions = {}): Promise<PutResult[]> {
  if (peerId !== node.peerId.toString()) throw new InvalidArgumentError(`only ${peerId} can withdraw its own entries; this node is ${node.peerId.toString()}`)
  const list = Array.isArray(blocks) ? blocks : range(blocks.start, blocks.end)
  const results = await mapLimit(list, 8, async (block): Promise<PutResult | undefined> => {
    const current = await readBlockEntries(node, modelId, block, opts)
    const own = current.find(e => e.peerId === peerId)
    if (own === undefined || own.withdrawn === true || own.expires <= Date.now()) return undefined
    const tombstone = await signEntry(node.privateKey, {
      ...own,
      withdrawn: true,
      issued: nextIssued(node.privateKey, own.issued + 1),
      expires: own.expires
    })
    if (tombstone.expires <= tombstone.issued) return undefined // it expires right now anyway
    return await putBlock(node, modelId, block, [...current, tombstone], peerId, opts)
  })
  return results.filter((r): r is PutResult => r !== undefined)
}

/** Live servers holding one block, fastest first. */
export async function findBlockServers (node: MingaNode, modelId: string, block: number, opts: DhtOptions = {}): Promise<ServerEntry[]> {
  const now = Date.now()
  return (await readBlockEntries(node, modelId, block, opts))
    .filter(e => isLive(e, now))
    .sort((a, b) => b.throughput - a.throughput)
}

/**
 * Every live server of a model (one entry per peer: its newest), found by querying each block
 * 0..numBlocks-1; sorted by start block, then throughput (fastest first).
 */
export async function findSpans (node: MingaNode, modelId: string, numBlocks: number, opts: DhtOptions = {}): Promise<ServerEntry[]> {
  if (!isInt(numBlocks, 1, MAX_BLOCK_INDEX + 1)) throw new InvalidArgumentError(`numBlocks ${numBlocks} out of range`)
  const perBlock = await mapLimit(range(0, numBlocks), 8, async (b) => await readBlockEntries(node, modelId, b, opts))
  const now = Date.now()
  // Tombstones act per block (readBlockEntries already let them hide older entries there); across
  // blocks keep each peer's newest *live* entry, so withdrawing the blocks a server left when it
  // moved its span does not hide the span it moved to.
  return mergeEntries(perBlock.flat().filter(e => isLive(e, now)), now)
    .sort((a, b) => a.start - b.start || b.throughput - a.throughput)
}

// ---- periodic announcer ---------------------------------------------------------------------

export interface AnnouncerOptions extends DhtOptions {
  /** Entry lifetime. Default 3 min. */
  ttlMs?: number
  /** Re-announce period. Default ttl/3 (±10% jitter), so an entry lost to a race is back within a period. */
  intervalMs?: number
  onAnnounce?: (result: AnnounceResult) => void
  onError?: (err: unknown) => void
}

export interface Announcer {
  /** Settles after the first announcement (resolves even if it failed: see onError / lastError). */
  readonly ready: Promise<void>
  readonly lastError: unknown
  readonly lastResult: AnnounceResult | undefined
  /** Announces now (after any announcement in progress). */
  announceNow(): Promise<AnnounceResult | undefined>
  /** Stops re-announcing and, unless withdraw is false, withdraws the last announced span. */
  stop(opts?: { withdraw?: boolean }): Promise<void>
}

/**
 * Announces `getInfo()` now and every intervalMs; if the span moves, the blocks no longer held are
 * withdrawn.
 */
export function startAnnouncer (node: MingaNode, getInfo: () => SpanInfo | Promise<SpanInfo>, opts: AnnouncerOptions = {}): Announcer {
  const ttlMs = opts.ttlMs ?? DEFAULT_TTL_MS
  const intervalMs = opts.intervalMs ?? Math.floor(ttlMs / 3)
  if (!(intervalMs > 0) || intervalMs >= ttlMs) throw new InvalidArgumentError(`announce interval ${intervalMs} ms must be in (0, ttl ${ttlMs} ms)`)
  let stopped = false
  let timer: ReturnType<typeof setTimeout> | undefined
  let chain: Promise<unknown> = Promise.resolve()
  let last: AnnounceResult | undefined
  let lastError: unknown

  const once = async (): Promise<AnnounceResult | undefined> => {
    if (stopped) return undefined
    try {
      const info = await getInfo()
      const prev = last?.entry
      const result = await announceSpan(node, info, ttlMs, opts)
      if (prev !== undefined) {
        const gone = range(prev.start, prev.end).filter(b => prev.modelId !== info.modelId || b < info.start || b >= info.end)
        if (gone.length > 0) await withdrawSpan(node, prev.modelId, prev.peerId, gone, opts)
      }
      last = result
      lastError = undefined
      opts.onAnnounce?.(result)
      return result
    } catch (err) {
      lastError = err
      opts.onError?.(err)
      return undefined
    }
  }

  const run = (): Promise<AnnounceResult | undefined> => {
    const p = chain.then(once)
    chain = p.catch(() => {})
    return p
  }

  const schedule = (): void => {
    if (stopped) return
    const delay = intervalMs * (0.9 + Math.random() * 0.2)
    timer = setTimeout(() => { void run().finally(schedule) }, delay)
    timer.unref?.()
  }

  const ready = run().then(() => { schedule() })

  return {
    ready,
    get lastError () { return lastError },
    get lastResult () { return last },
    announceNow: run,
    async stop ({ withdraw = true } = {}) {
      stopped = true
      if (timer !== undefined) clearTimeout(timer)
      await chain
      if (withdraw && last !== undefined) {
        const e = last.entry
        await withdrawSpan(node, e.modelId, e.peerId, { start: e.start, end: e.end }, opts)
      }
    }
  }
}
