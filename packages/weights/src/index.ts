// @minga/weights: content-addressed, verified model files from the swarm.
export { buildManifest, chunkTable, modelCid, selectTensors, verifyManifest, type Chunk, type TensorSelection } from './manifest.ts'
export { createWeightStore, directorySource, type WeightSource, type WeightStore, type WeightStoreInit } from './store.ts'
export { DEFAULT_MAX_TRANSFERS, WEIGHTS_PROTOCOL, serveWeights, type ServeWeightsOptions, type WeightsProvider, type WeightsRequest } from './provider.ts'
export { findWeightProviders, requestWeights } from './client.ts'
export { fetchModel, type FetchModelInit, type FetchResult } from './fetcher.ts'
export { resolveModel, type ResolveModelInit, type ResolvedModel } from './resolve.ts'
export {
  ChunkRangeError, FetchError, InvalidModelIdError, ManifestError, ProviderBusyError, StoreError, UnknownModelError,
  WeightsProtocolError
} from './errors.ts'
