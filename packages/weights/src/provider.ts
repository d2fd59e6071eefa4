// Serves manifests and chunks on /minga/weights/1.0.0, requests one after another on a stream: a
// length-prefixed JSON request {model, op: "manifest" | "have" | "chunk", index?}, answered by a JSON header
// {ok: true, bytes} and the bytes as a second message, or {ok: false, error, message}. Chunk
// transfers are bounded in number (more get ProviderBusyError) and paced to a per-node bandwidth
// cap. Every failure is answered or the one stream is reset; the node goes on serving.
import { lpStream } from '@libp2p/utils'
import type { Stream } from '@libp2p/interface'
import type { MingaNode } from '@minga/p2p'
import { ChunkRangeError, ProviderBusyError, UnknownModelError, WeightsProtocolError } from './errors.ts'
import { modelCid } from './manifest.ts'
import type { WeightSource } from './store.ts'

export const WEIGHTS_PROTOCOL = '/minga/weights/1.0.0'
export const DEFAULT_MAX_TRANSFERS = 8
export const DEFAULT_REANNOUNCE_MS = 10 * 60_000
const MAX_REQUEST_BYTES = 1024
const REQUEST_TIMEOUT_MS = 10_000
/** A stream with no request for this long is closed. */
const IDLE_TIMEOUT_MS = 60_000
/** Long enough to send a 4 MiB chunk at ~100 kB/s, on top of the wait for the bandwidth cap. */
const SEND_TIMEOUT_MS = 120_000

export interface WeightsRequest {
  model: string
  op: 'manifest' | 'have' | 'chunk'
  index?: number
}

export interface ServeWeightsOptions {
  /** Upload cap of this node over all transfers, in megabits per second (default: none). */
  shareMbps?: number
  /** Chunk transfers at once; more are answered ProviderBusyError. Default 8. */
  maxTransfers?: number
  /** Announce each model as provided in the DHT (default true). */
  announce?: boolean
  /** How often the announcements are renewed. Default 10 min. */
  reannounceMs?: number
  log?: (message: string) => void
}

export interface WeightsProvider {
  /** Starts serving (and announcing) a model. */
  add (source: WeightSource): Promise<void>
  readonly bytesSent: number
  readonly chunksSent: number
  close (): Promise<void>
}

export async function serveWeights (node: MingaNode, sources: WeightSource[], options: ServeWeightsOptions = {}): Promise<WeightsProvider> {
  const log = options.log ?? (() => {})
  const maxTransfers = options.maxTransfers ?? DEFAULT_MAX_TRANSFERS
  if (!(Number.isInteger(maxTransfers) && maxTransfers >= 1)) throw new RangeError(`maxTransfers must be an integer ≥ 1, got ${maxTransfers}`)
  if (options.shareMbps != null && !(options.shareMbps > 0)) throw new RangeError(`--share-mbps must be > 0, got ${options.shareMbps}`)
  const pace = pacer(options.shareMbps != null ? options.shareMbps * 1e6 / 8 : Infinity)
  const models = new Map<string, WeightSource>()
  let active = 0
  let bytesSent = 0
  let chunksSent = 0
  let closed = false

  const answer = async (request: WeightsRequest): Promise<Uint8Array> => {
    const source = models.get(request.model)
    if (source == null) throw new UnknownModelError(`this node does not provide model ${request.model}`)
    if (request.op === 'manifest') return source.manifestBytes
    if (request.op === 'have') {
      const bits = new Uint8Array(Math.ceil(source.chunks.length / 8))
      for (let i = 0; i < source.chunks.length; i++) if (source.has(i)) bits[i >> 3] |= 1 << (i & 7)
      return bits
    }
    const index = request.index
    if (!Number.isInteger(index) || index! < 0 || index! >= source.chunks.length) {
      throw new ChunkRangeError(`chunk ${String(index)} is out of range: model ${request.model} has chunks 0 to ${source.chunks.length - 1}`)
    }
    if (!source.has(index!)) throw new ChunkRangeError(`this node does not hold chunk ${index} of model ${request.model}`)
    return source.read(source.chunks[index!])
  }

  /** One request: its reply is sent, or its error is answered; a broken stream throws. */
  const serveOne = async (lp: ReturnType<typeof lpStream>, request: WeightsRequest): Promise<void> => {
    let transfer = false
    try {
      let reply: Uint8Array
      try {
        if (request.op === 'chunk') {
          if (active >= maxTransfers) throw new ProviderBusyError(`busy: ${active} transfers in progress, try another provider or later`)
          active++
          transfer = true
        }
        reply = await answer(request)
      } catch (err) {
        const e = err as Error
        await lp.write(json({ ok: false, error: e.name, message: e.message }), { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
        return
      }
      const signal = AbortSignal.timeout(SEND_TIMEOUT_MS)
      if (request.op === 'chunk') await pace(reply.length, signal)
      await lp.writeV([json({ ok: true, bytes: reply.length }), reply], { signal })
      if (request.op === 'chunk') { bytesSent += reply.length; chunksSent++ }
    } finally {
      if (transfer) active--
    }
  }

  // A stream carries requests one after another (a fetcher keeps one per worker): opening a stream
  // costs a protocol negotiation, more than sending a small chunk.
  const handler = async (stream: Stream): Promise<void> => {
    const lp = lpStream(stream, { maxDataLength: MAX_REQUEST_BYTES })
    try {
      while (!closed) {
        let bytes: Uint8Array
        try {
          bytes = (await lp.read({ signal: AbortSignal.timeout(IDLE_TIMEOUT_MS) })).subarray()
        } catch {
          break // the fetcher closed the stream, or left it idle
        }
        let request: WeightsRequest
        try {
          request = parseRequest(bytes)
        } catch (err) {
          await lp.write(json({ ok: false, error: (err as Error).name, message: (err as Error).message }), { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
          continue
        }
        await serveOne(lp, request)
      }
      await stream.close({ signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
    } catch (err: any) {
      log(`weights request failed: ${err?.message ?? err}`)
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }
  await node.libp2p.handle(WEIGHTS_PROTOCOL, handler, { maxInboundStreams: Math.max(64, maxTransfers * 4), runOnLimitedConnection: false })

  // A node with no DHT peer yet has nobody to tell: it tries again every reannounceMs (as it does
  // anyway, so that providers a swarm forgot come back).
  const announce = async (source: WeightSource): Promise<void> => {
    if (closed || node.dhtPeers() === 0) return
    try {
      await node.libp2p.contentRouting.provide(modelCid(source.modelId), { signal: AbortSignal.timeout(30_000) })
    } catch (err: any) {
      log(`announcing model ${source.modelId} as provided failed: ${err?.message ?? err}`)
    }
  }
  const reannounce = options.announce !== false
    ? setInterval(() => { for (const source of models.values()) void announce(source) }, options.reannounceMs ?? DEFAULT_REANNOUNCE_MS)
    : undefined
  reannounce?.unref()
  const provider: WeightsProvider = {
    add: async (source) => {
      models.set(source.modelId, source)
      if (options.announce !== false) await announce(source)
    },
    get bytesSent () { return bytesSent },
    get chunksSent () { return chunksSent },
    close: async () => {
      if (closed) return
      closed = true
      clearInterval(reannounce)
      await node.libp2p.unhandle(WEIGHTS_PROTOCOL).catch(() => {})
      for (const id of models.keys()) await node.libp2p.services.dht.cancelReprovide(modelCid(id)).catch(() => {})
      models.clear()
    }
  }
  for (const source of sources) await provider.add(source)
  return provider
}

function parseRequest (bytes: Uint8Array): WeightsRequest {
  let value: any
  try {
    value = JSON.parse(new TextDecoder().decode(bytes))
  } catch {
    throw new WeightsProtocolError('a weights request must be JSON')
  }
  if (value == null || typeof value.model !== 'string' || !['manifest', 'have', 'chunk'].includes(value.op)) {
    throw new WeightsProtocolError('a weights request needs "model" and "op" (manifest, have or chunk)')
  }
  return { model: value.model, op: value.op, ...(value.index !== undefined ? { index: value.index } : {}) }
}

function json (value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value))
}

/** Paces sends to `bytesPerSecond` over the node: each send waits until the ones before it would have finished. */
function pacer (bytesPerSecond: number): (bytes: number, signal: AbortSignal) => Promise<void> {
  let nextFree = 0
  return async (bytes, signal) => {
    if (!Number.isFinite(bytesPerSecond)) return
    const now = Date.now()
    const start = Math.max(now, nextFree)
    nextFree = start + (bytes / bytesPerSecond) * 1000
    if (start > now) {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(resolve, start - now)
        signal.addEventListener('abort', () => { clearTimeout(t); reject(signal.reason) }, { once: true })
      })
    }
  }
}
