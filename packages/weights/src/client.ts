// The requesting side of /minga/weights/1.0.0 (see provider.ts), and finding providers in the DHT.
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils'
import type { PeerId, Stream } from '@libp2p/interface'
import type { MingaNode } from '@minga/p2p'
import { ChunkRangeError, ManifestError, ProviderBusyError, UnknownModelError, WeightsProtocolError } from './errors.ts'
import { modelCid } from './manifest.ts'
import { WEIGHTS_PROTOCOL, type WeightsRequest } from './provider.ts'

const ERRORS: Record<string, new (message: string) => Error> = {
  UnknownModelError, ChunkRangeError, ProviderBusyError, ManifestError, WeightsProtocolError
}

/**
 * Requests to one provider, one after another on one stream (see provider.ts). A failed request
 * breaks the channel; the next request opens a new stream.
 */
export class WeightsChannel {
  private lp: LengthPrefixedStream<Stream> | undefined

  constructor (private readonly node: MingaNode, readonly peer: PeerId) {}

  /**
   * The reply's bytes (at most maxBytes), or the provider's error as the same named class. A stream
   * that cannot be opened or breaks before the provider answered (the provider closed it while idle,
   * or the connection it was opened on was closing) is replaced once: requests only read, so asking again is safe.
   */
  async request (request: WeightsRequest, maxBytes: number, signal: AbortSignal): Promise<Uint8Array> {
    for (let attempt = 1; ; attempt++) {
      let stage: 'opening' | 'writing' | 'waiting' | 'answered' = 'opening'
      try {
        const lp = this.lp ?? lpStream(await this.node.libp2p.dialProtocol(this.peer, WEIGHTS_PROTOCOL, { signal }), { maxDataLength: 64 * 2 ** 20 + 1024 })
        this.lp = lp
        stage = 'writing'
        await lp.write(new TextEncoder().encode(JSON.stringify(request)), { signal })
        stage = 'waiting'
        const reply = (await lp.read({ signal })).subarray()
        stage = 'answered'
        let header: any
        try {
          header = JSON.parse(new TextDecoder().decode(reply))
        } catch (err) {
          throw new WeightsProtocolError(`malformed reply from ${this.peer}: ${(err as Error).message}`)
        }
        if (header?.ok !== true) {
          const Named = ERRORS[header?.error] ?? WeightsProtocolError
          throw new Named(`${this.peer}: ${String(header?.message ?? 'request failed')}`)
        }
        if (!Number.isInteger(header.bytes) || header.bytes < 0 || header.bytes > maxBytes) throw new WeightsProtocolError(`${this.peer} announced ${header.bytes} bytes, more than the ${maxBytes} expected`)
        const data = (await lp.read({ signal })).subarray()
        if (data.length !== header.bytes) throw new WeightsProtocolError(`${this.peer} sent ${data.length} bytes instead of ${header.bytes}`)
        return data
      } catch (err) {
        // an answered error leaves the stream in step; anything else (a timeout, a reset) does not
        if (!(err instanceof Error && err.name in ERRORS)) this.close(err)
        if (stage === 'answered' || signal.aborted) throw err
        if (attempt === 1) continue
        // libp2p can reject a negotiation with the stream's close event, which is not an Error
        if (stage === 'waiting' || !(err instanceof Error)) throw new WeightsProtocolError(`${stage === 'waiting' ? 'no reply from' : 'no stream to'} ${this.peer}: ${(err as Error)?.message ?? String(err)}`)
        throw err
      }
    }
  }

  close (reason?: unknown): void {
    const stream = this.lp?.unwrap()
    this.lp = undefined
    if (stream == null) return
    if (reason != null) stream.abort(reason instanceof Error ? reason : new Error(String(reason)))
    else void stream.close().catch(() => {})
  }
}

/** Sends one request to a provider on a stream of its own. */
export async function requestWeights (node: MingaNode, peer: PeerId, request: WeightsRequest, maxBytes: number, signal: AbortSignal): Promise<Uint8Array> {
  const channel = new WeightsChannel(node, peer)
  try {
    return await channel.request(request, maxBytes, signal)
  } finally {
    channel.close()
  }
}

/** Peers that announced the model as provided (kad-dht provider records), up to `max`. */
export async function findWeightProviders (node: MingaNode, modelId: string, { timeoutMs = 15_000, max = 32, signal }: { timeoutMs?: number, max?: number, signal?: AbortSignal } = {}): Promise<PeerId[]> {
  const cid = modelCid(modelId)
  const found = new Map<string, PeerId>()
  const deadline = AbortSignal.any([AbortSignal.timeout(timeoutMs), ...(signal != null ? [signal] : [])])
  try {
    for await (const info of node.libp2p.contentRouting.findProviders(cid, { signal: deadline })) {
      if (info.id.equals(node.peerId)) continue
      if (info.multiaddrs.length > 0) await node.libp2p.peerStore.merge(info.id, { multiaddrs: info.multiaddrs })
      found.set(info.id.toString(), info.id)
      if (found.size >= max) break
    }
  } catch (err) {
    if (signal?.aborted === true) throw err
    // the query ran out of time: use what it found
  }
  return [...found.values()]
}
