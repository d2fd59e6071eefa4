export {
  DEFAULT_CHUNK_BYTES, MANIFEST_VERSION, MODEL_FILES, canonicalJson, computeModelId, encodeManifest,
  loadManifest, manifestId, sha256Hex,
  type LoadedManifest, type ManifestFile, type ManifestOptions, type ManifestTensor, type ModelManifest
} from './manifest.ts'
export { loadModelConfig, parseModelConfig, type ModelConfig, type ModelType, type RopeScaling } from './config.ts'
export {
  createSpanExecutor, defaultSpanWorkers, DEFAULT_BATCH_WAIT_MS, DEFAULT_CACHE_BYTES, KV_BLOCK_TOKENS, LAYERS_BYTES_PER_WORKER, MAX_BATCH_WAIT_MS, MAX_SPAN_WORKERS, kvBytesPerToken, type SpanExecutor, type SpanExecutorInit, type ForwardOptions, type OpenSessionOptions, type SpanStats
} from './span-executor.ts'
export { prepareSpan, preparedSpanBytes, type PrepareSpanInit, type PrepareProgress, type PreparedSpan } from './prepared/prepare-span.ts'
export { PREPARED_FORMAT, preparedDirName } from './prepared/store.ts'
export { defaultCacheDir } from './cache-dir.ts'
export { isProcessAlive } from './process-alive.ts'
export { createClientHead, createLogitsBuffer, DEFAULT_HEAD_QUANT, type ClientHead, type ClientHeadInit } from './client-head.ts'
export { createLocalModel, type LocalModel, type LocalModelInit } from './local-model.ts'
export { generateTokens, planGeneration, untilDone, type GenerateOptions, type GeneratedToken, type GenerationPlan, type GenerationResult, type LayerChain } from './generate.ts'
export { createSampler, validateSampling, argmax, seededRandom, type Sampler, type SamplingOptions } from './sampler.ts'
export { loadChatTemplate, parseChatTemplate, type ChatMessage, type ChatRenderOptions, type ChatTemplate } from './chat-template.ts'
export { loadTokenizer, type TextTokenizer, type TextStream } from './tokenizer.ts'
export { DEFAULT_QUANT, HEAD_QUANT_FORMATS, QUANT_FORMATS, QUANTIZATIONS, ROW_INT7, ROW_INT8, formatLabel, type BlockFormat, type QuantFormat, type Quantization, type RowFormat } from './quantize.ts'
export {
  ModelLoadError, UnsupportedModelError, InvalidArgumentError, ContextLengthError, UnknownSessionError,
  SessionLimitError, ShapeError, PositionError, WorkerError, NoChatTemplateError
} from './errors.ts'
