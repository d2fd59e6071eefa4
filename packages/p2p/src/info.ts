// A node's self-description on its own protocol: which model and span it serves. `minga status`
// asks the peers it meets, because a DHT cannot list which models have records.
import { lpStream } from '@libp2p/utils'
import type { PeerId } from '@libp2p/interface'
import { InvalidRecordError } from './errors.ts'
import type { MingaNode } from './node.ts'

export const INFO_PROTOCOL = '/minga/info/1.0.0'
const MAX_INFO_BYTES = 16 * 1024

export interface NodeInfo {
  modelId: string
  modelType: string
  numLayers: number
  start: number
  end: number
  name?: string
  version: string
}

export async function serveInfo (node: MingaNode, getInfo: () => NodeInfo): Promise<void> {
  await node.libp2p.handle(INFO_PROTOCOL, async (stream) => {
    try {
      await lpStream(stream).write(new TextEncoder().encode(JSON.stringify(getInfo())), { signal: AbortSignal.timeout(5000) })
      await stream.close()
    } catch (err: any) {
      stream.abort(err)
    }
  })
}

export async function fetchInfo (node: MingaNode, peer: PeerId, timeoutMs = 5000): Promise<NodeInfo> {
  const signal = AbortSignal.timeout(timeoutMs)
  const stream = await node.libp2p.dialProtocol(peer, INFO_PROTOCOL, { signal })
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
  return { modelId, modelType, numLayers, start, end, version, ...(name != null ? { name } : {}) }
}
