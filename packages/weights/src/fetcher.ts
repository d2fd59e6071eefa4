// Fetches a model's manifest and the chunks of chosen tensors from the providers the DHT names,
// several providers in parallel. Each chunk is verified against the manifest before it is written;
// a provider that sends a bad chunk is dropped and the chunk is fetched from another. Chunks the
// store already holds are not fetched again, so a killed fetch resumes where it stopped.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { PeerId } from '@libp2p/interface'
import type { ModelManifest } from '@minga/engine'
import type { MingaNode } from '@minga/p2p'
import { findWeightProviders, requestWeights, WeightsChannel } from './client.ts'
import { FetchError, ManifestError, UnknownModelError } from './errors.ts'
import { selectTensors, type Chunk, type TensorSelection } from './manifest.ts'
import { createProgress } from './progress.ts'
import { createWeightStore, type WeightStore } from './store.ts'

/** A provider failing this many requests in a row (other than busy) is dropped for this fetch. */
const MAX_FAILURES = 3
const MAX_BUSY_RETRIES = 200
/** A 70B model's manifest is a few MB; the channel reads at most 64 MiB per message. */
const MAX_MANIFEST_BYTES = 64 * 2 ** 20

export interface FetchModelInit {
  node: MingaNode
  modelId: string
  /**
   * Which tensors to fetch, given the manifest and config.json (fetched first, with the other small
   * files). Default: every tensor.
   */
  select?: TensorSelection | ((manifest: ModelManifest, config: Record<string, any>) => TensorSelection | Promise<TensorSelection>)
  /** Default: defaultCacheDir(). */
  cacheDir?: string
  store?: WeightStore
  /** Providers to use instead of asking the DHT. */
  providers?: PeerId[]
  /** Chunk requests in flight per provider. Default 4. */
  parallel?: number
  /** Per-request timeout. Default 120 s. */
  requestTimeoutMs?: number
  signal?: AbortSignal
  /** Called after each chunk is verified and written. */
  onChunk?: (chunk: Chunk, provider: string) => void
  /** A progress bar on a terminal, log lines otherwise (default true when `log` is given). */
  progress?: boolean
  log?: (message: string) => void
}

export interface FetchResult {
  modelId: string
  /** The model directory to load (the store's). */
  dir: string
  manifest: ModelManifest
  config: Record<string, any>
  selection: TensorSelection
  store: WeightStore
  /** The tensors fetched or already held, by name. */
  tensors: string[]
  chunksFetched: number
  bytesFetched: number
  /** Chunks already in the store from an earlier fetch. */
  chunksReused: number
  bytesByProvider: Record<string, number>
  /** Providers dropped for sending a chunk that failed its hash. */
  badProviders: string[]
}

interface ProviderState {
  peer: PeerId
  key: string
  have?: Uint8Array
  failures: number
  busy: number
  bad: boolean
}

export async function fetchModel (init: FetchModelInit): Promise<FetchResult> {
  const store = init.store ?? createWeightStore({ modelId: init.modelId, cacheDir: init.cacheDir })
  try {
    return await fetchInto(init, store)
  } catch (err) {
    if (init.store == null) store.close()
    throw err
  }
}

async function fetchInto (init: FetchModelInit, store: WeightStore): Promise<FetchResult> {
  const log = init.log ?? (() => {})
  const signal = init.signal ?? new AbortController().signal
  const timeoutMs = init.requestTimeoutMs ?? 120_000
  // the DHT is asked only when something is missing: a store that holds it all starts offline
  let providers: ProviderState[] | undefined
  const findProviders = async (): Promise<ProviderState[]> => {
    const peers = init.providers ?? await findWeightProviders(init.node, init.modelId, { signal })
    providers ??= peers.map(peer => ({ peer, key: peer.toString(), failures: 0, busy: 0, bad: false }))
    if (providers.length === 0) throw new UnknownModelError(`no provider of model ${init.modelId} found in the swarm (is a node serving or seeding it, and is the bootstrap node on the same swarm?)`)
    return providers
  }
  const requestSignal = (): AbortSignal => AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)])

  if (store.manifest == null) {
    const reasons: string[] = []
    const candidates = await findProviders()
    for (const p of candidates) {
      try {
        store.setManifest(await requestWeights(init.node, p.peer, { model: init.modelId, op: 'manifest' }, MAX_MANIFEST_BYTES, requestSignal()))
        break
      } catch (err: any) {
        if (signal.aborted) throw err
        if (err?.name === 'ManifestError') p.bad = true
        reasons.push(`${p.key}: ${err?.message ?? err}`)
      }
    }
    if (store.manifest == null) {
      const Named = reasons.length > 0 && candidates.every(p => p.bad) ? ManifestError : UnknownModelError
      throw new Named(`no provider gave a valid manifest of model ${init.modelId}: ${reasons.join('; ')}`)
    }
  }
  const manifest = store.manifest
  const stats = { chunksFetched: 0, bytesFetched: 0, chunksReused: 0, bytesByProvider: {} as Record<string, number> }

  const run = async (chunks: Chunk[], label: string): Promise<void> => {
    const missing = chunks.filter(c => !store.has(c.index))
    stats.chunksReused += chunks.length - missing.length
    if (missing.length === 0) return
    const total = missing.reduce((n, c) => n + c.length, 0)
    const progress = init.progress ?? init.log != null ? createProgress(label, total, log) : undefined
    let done = 0
    try {
      await fetchChunks(missing, providers ?? await findProviders(), {
        init, store, requestSignal, signal, log,
        onChunk: (chunk, provider) => {
          stats.chunksFetched++
          stats.bytesFetched += chunk.length
          stats.bytesByProvider[provider] = (stats.bytesByProvider[provider] ?? 0) + chunk.length
          done += chunk.length
          progress?.update(done)
          init.onChunk?.(chunk, provider)
        }
      })
    } finally {
      progress?.stop()
    }
  }

  await run(store.chunks.filter(c => c.kind === 'file'), `model ${init.modelId.slice(-8)} files`)
  if (!manifest.files.some(f => f.path === 'config.json')) throw new ManifestError(`the manifest of ${init.modelId} has no config.json`)
  const config = JSON.parse(readFileSync(join(store.dir, 'config.json'), 'utf8'))
  const select = init.select ?? { all: true }
  const selection = typeof select === 'function' ? await select(manifest, config) : select
  const tensors = selectTensors(manifest, selection, config.tie_word_embeddings === true)
  const wanted = store.chunksOf(tensors).filter(c => c.kind === 'tensor')
  await run(wanted, `model ${init.modelId.slice(-8)} weights`)
  return {
    modelId: init.modelId,
    dir: store.dir,
    manifest,
    config,
    selection,
    store,
    tensors,
    ...stats,
    badProviders: (providers ?? []).filter(p => p.bad).map(p => p.key)
  }
}

interface FetchContext {
  init: FetchModelInit
  store: WeightStore
  requestSignal: () => AbortSignal
  signal: AbortSignal
  log: (message: string) => void
  onChunk: (chunk: Chunk, provider: string) => void
}

async function fetchChunks (missing: Chunk[], providers: ProviderState[], ctx: FetchContext): Promise<void> {
  const { init, store, signal, log } = ctx
  const pending = [...missing]
  let inFlight = 0
  let wake: () => void = () => {}
  let changed = new Promise<void>(resolve => { wake = resolve })
  const notify = (): void => { const w = wake; changed = new Promise<void>(resolve => { wake = resolve }); w() }
  signal.addEventListener('abort', notify, { once: true })

  const holds = (p: ProviderState, c: Chunk): boolean => p.have == null || (p.have[c.index >> 3] & (1 << (c.index & 7))) !== 0
  const usable = (p: ProviderState): boolean => !p.bad && p.failures < MAX_FAILURES && p.busy < MAX_BUSY_RETRIES

  const worker = async (p: ProviderState): Promise<void> => {
    const channel = new WeightsChannel(init.node, p.peer)
    try {
      await work(p, channel)
    } finally {
      channel.close()
    }
  }
  const work = async (p: ProviderState, channel: WeightsChannel): Promise<void> => {
    while (usable(p) && !signal.aborted) {
      const at = pending.findIndex(c => holds(p, c))
      if (at < 0) {
        if (inFlight === 0) return // nothing left that this provider holds, and nothing that could come back
        await changed // a chunk in flight elsewhere may fail and come back
        continue
      }
      const [chunk] = pending.splice(at, 1)
      inFlight++
      try {
        const bytes = await channel.request({ model: init.modelId, op: 'chunk', index: chunk.index }, chunk.length, ctx.requestSignal())
        if (store.write(chunk, bytes)) {
          p.failures = 0
          ctx.onChunk(chunk, p.key)
        } else {
          p.bad = true
          log(`provider ${p.key} sent chunk ${chunk.index} with a wrong hash: dropping it, fetching from another`)
          pending.unshift(chunk)
        }
      } catch (err: any) {
        pending.unshift(chunk)
        if (signal.aborted) return
        if (err?.name === 'ProviderBusyError') {
          p.busy++
          await new Promise(resolve => setTimeout(resolve, 20 + Math.random() * 100))
        } else {
          p.failures++
          log(`provider ${p.key} failed chunk ${chunk.index}: ${err?.message ?? err}`)
        }
      } finally {
        inFlight--
        notify()
      }
    }
  }

  // what each provider holds (a server holds its span only); one that cannot say is asked for anything
  await Promise.all(providers.filter(usable).map(async p => {
    try {
      p.have = await requestWeights(init.node, p.peer, { model: init.modelId, op: 'have' }, Math.ceil(store.chunks.length / 8), ctx.requestSignal())
    } catch (err: any) {
      if (err?.name === 'UnknownModelError') p.bad = true
    }
  }))
  const parallel = init.parallel ?? 4
  await Promise.all(providers.filter(usable).flatMap(p => Array.from({ length: parallel }, async () => { await worker(p) })))
  signal.removeEventListener('abort', notify)
  signal.throwIfAborted()
  if (pending.length > 0) {
    const bad = providers.filter(p => p.bad).map(p => p.key)
    throw new FetchError(`${pending.length} chunks of model ${init.modelId} could not be fetched from any of ${providers.length} providers` +
      (bad.length > 0 ? ` (dropped for bad chunks: ${bad.join(', ')})` : '') + ` — first missing: chunk ${pending[0].index}`)
  }
}
