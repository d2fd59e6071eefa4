// The datastore behind the DHT. kad-dht replaces a key's value on every PUT, so two servers that
// announce the same block at about the same time each erased the other's entry, and in a swarm of
// tens of servers some entries were always missing. Here a block value that arrives is merged with
// the one held (each peer's newest entry wins, tombstones included), so a PUT can only add or update
// entries, the way Petals' DHT keeps one sub-key per server under a block.
import { Libp2pRecord } from '@libp2p/record'
import { MemoryDatastore } from 'datastore-core'
import { boundedBlockValue, decodeBlockRecord, parseBlockKey, RECORD_NAMESPACE, type ServerEntry } from './records.ts'

type Key = Parameters<MemoryDatastore['put']>[0]
type PutOptions = Parameters<MemoryDatastore['put']>[2]

/** kad-dht keeps records under `<datastorePrefix>/record/…`; its default prefix is /dht. */
const DHT_RECORDS = '/dht/record/'
const MINGA_KEY_PREFIX = new TextEncoder().encode(`/${RECORD_NAMESPACE}/`)

export class MergingRecordStore extends MemoryDatastore {
  override async put (key: Key, value: Uint8Array, options?: PutOptions): Promise<Key> {
    if (key.toString().startsWith(DHT_RECORDS)) value = await this.merged(key, value, options)
    return await super.put(key, value, options)
  }

  private async merged (key: Key, incoming: Uint8Array, options?: PutOptions): Promise<Uint8Array> {
    if (!(await this.has(key, options))) return incoming
    try {
      const next = Libp2pRecord.deserialize(incoming)
      if (!startsWith(next.key, MINGA_KEY_PREFIX)) return incoming
      const held = Libp2pRecord.deserialize(await this.get(key, options))
      const now = Date.now()
      const entries: ServerEntry[] = [...(await decodeBlockRecord(next.key, next.value, now)).entries]
      try {
        entries.push(...(await decodeBlockRecord(held.key, held.value, now)).entries)
      } catch {
        // what we held has expired (or was never valid): the new value replaces it
      }
      // keep the newest entry of the value that just arrived if the value must be cut
      const newest = entries.reduce((a, b) => b.issued > a.issued ? b : a)
      const { modelId, block } = parseBlockKey(next.key)
      const value = boundedBlockValue(modelId, block, entries, newest.peerId, now)
      return new Libp2pRecord(next.key, value, next.timeReceived).serialize()
    } catch {
      // not a block value we can read: kad-dht has validated it, store it as it came
      return incoming
    }
  }
}

function startsWith (bytes: Uint8Array, prefix: Uint8Array): boolean {
  return bytes.length >= prefix.length && prefix.every((b, i) => bytes[i] === b)
}
