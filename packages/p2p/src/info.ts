// A node's self-description on its own protocol: which model and span it serves. `minga status`
// asks the peers it meets, because a DHT cannot list which models have records.
import { lpStream } from '@libp2p/utils'
import type { PeerId } from '@libp2p/interface'
import { InvalidRecordError } from './errors.ts'
import type { MingaNode } from './node.ts'

export const INFO_PROTOCOL = '/minga/info/1.0.0'
const MAX_INFO_BYTES = 16 * 1024

/** A server's last change of span (servers on `--blocks auto` move to heal the swarm's coverage). */
export interface SpanMove {
  /** ms epoch */
  at: number
  from: [number, number]
  to: [number, number]
  reason: string
}

export interface NodeInfo {
  modelId: string
  modelType: string
  numLayers: number
  start: number
  end: number
  name?: string
  version: string
  lastMove?: SpanMove
}

export async function serveInfo (node: MingaNode, getInfo: () => NodeInfo): Promise<void> {
  await node.libp2p.handle(INFO_PROTOCOL, async (stream) => {
    try {
      await lpStream(stream).write(new TextEncoder().encode(JSON.stringify(getInfo())), { signal: AbortSignal.timeout(5000) })
      await stream.close()
    } catch (err: any) {
      stream.abort(err)
    }
  }, { runOnLimitedConnection: true })
}

export async function fetchInfo (node: MingaNode, peer: PeerId, timeoutMs = 5000): Promise<NodeInfo> {
  const signal = AbortSignal.timeout(timeoutMs)
  const stream = await node.libp2p.dialProtocol(peer, INFO_PROTOCOL, { signal, runOnLimitedConnection: true })
  try {
    const bytes = await lpStream(stream, { maxDataLength: MAX_INFO_BYTES }).read({ signal })
    return parseInfo(JSON.parse(new TextDecoder().decode(bytes.subarray())))
  } finally {
    await stream.close().catch(() => {})
  }
}

function parseInfo (value: any): NodeInfo {
  const ok = value != null && typeof value.modelId === 'string' && typeof value.modelType === 'string' &&
    Number.isInteger(value.numLayers) && Number.isInteger(value.start) && Number.isInteger(value.end) &&
    typeof value.version === 'string' && (value.name == null || typeof value.name === 'string')
  if (!ok) throw new InvalidRecordError('malformed node info')
  const { modelId, modelType, numLayers, start, end, name, version } = value
  const move = value.lastMove
  const lastMove: SpanMove | undefined = move != null && Number.isFinite(move.at) && isSpan(move.from) && isSpan(move.to) && typeof move.reason === 'string'
    ? { at: move.at, from: [move.from[0], move.from[1]], to: [move.to[0], move.to[1]], reason: move.reason.slice(0, 200) }
    : undefined
  return { modelId, modelType, numLayers, start, end, version, ...(name != null ? { name } : {}), ...(lastMove != null ? { lastMove } : {}) }
}

function isSpan (v: unknown): v is [number, number] {
  return Array.isArray(v) && v.length === 2 && Number.isInteger(v[0]) && Number.isInteger(v[1])
}
