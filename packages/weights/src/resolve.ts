// "A model directory or a model id": the one place that turns either into a directory the engine
// can load, the model id, and a source to share. A directory is used as it is (its manifest is
// built, or read from the cache); an id is fetched from the swarm into the local store, only the
// tensors selected.
import { loadManifest, type ModelManifest } from '@minga/engine'
import type { MingaNode } from '@minga/p2p'
import { fetchModel, type FetchModelInit, type FetchResult } from './fetcher.ts'
import { modelCid } from './manifest.ts'
import { directorySource, type WeightSource } from './store.ts'

export interface ResolveModelInit extends Omit<FetchModelInit, 'modelId' | 'node'> {
  modelDir?: string
  modelId?: string
  /** Needed with modelId. */
  node?: MingaNode
  /** Chunk size of a directory's manifest (default 4 MiB). */
  chunkBytes?: number
}

export interface ResolvedModel {
  modelId: string
  dir: string
  manifest: ModelManifest
  /** What this node can share: the whole directory, or the chunks fetched. */
  source: WeightSource
  /** Set when the model was fetched. */
  fetched?: FetchResult
  close (): void
}

export async function resolveModel (init: ResolveModelInit): Promise<ResolvedModel> {
  if ((init.modelDir == null) === (init.modelId == null)) throw new TypeError('give either a model directory or a model id')
  if (init.modelDir != null) {
    const loaded = loadManifest(init.modelDir, { chunkBytes: init.chunkBytes, cacheDir: init.cacheDir })
    return {
      modelId: loaded.id,
      dir: init.modelDir,
      manifest: loaded.manifest,
      source: directorySource(init.modelDir, loaded.id, loaded.bytes, loaded.manifest),
      close: () => {}
    }
  }
  modelCid(init.modelId!)
  if (init.node == null) throw new TypeError('fetching a model by id needs a libp2p node')
  const fetched = await fetchModel({ ...init, modelId: init.modelId!, node: init.node })
  return {
    modelId: fetched.modelId,
    dir: fetched.dir,
    manifest: fetched.manifest,
    source: fetched.store.source(),
    fetched,
    close: () => { fetched.store.close() }
  }
}
