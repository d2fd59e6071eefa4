export {
  DEFAULT_CHUNK_BYTES, MANIFEST_VERSION, MODEL_FILES, canonicalJson, computeModelId, defaultCacheDir, encodeManifest,
  loadManifest, manifestId, sha256Hex,
  type LoadedManifest, type ManifestFile, type ManifestOptions, type ManifestTensor, type ModelManifest
} from './manifest.ts'
export { loadModelConfig, parseModelConfig, type ModelConfig, type ModelType, type RopeScaling } from './config.ts'
export { createSpanExecutor, type SpanExecutor, type SpanExecutorInit, type ForwardOptions, type OpenSessionOptions, type SpanStats } from './span-executor.ts'
export { createClientHead, DEFAULT_HEAD_QUANT, type ClientHead, type ClientHeadInit } from './client-head.ts'
export { createLocalModel, type LocalModel, type LocalModelInit } from './local-model.ts'
export { generateTokens, planGeneration, untilDone, type GenerateOptions, type GeneratedToken, type GenerationPlan, type GenerationResult, type LayerChain } from './generate.ts'
export { createSampler, validateSampling, argmax, seededRandom, type Sampler, type SamplingOptions } from './sampler.ts'
export { loadChatTemplate, parseChatTemplate, type ChatMessage, type ChatRenderOptions, type ChatTemplate } from './chat-template.ts'
export { loadTokenizer, type TextTokenizer, type TextStream } from './tokenizer.ts'
export { QUANTIZATIONS, type Quantization } from './quantize.ts'
export {
  ModelLoadError, UnsupportedModelError, InvalidArgumentError, ContextLengthError, UnknownSessionError,
  SessionLimitError, ShapeError, PositionError, WorkerError, NoChatTemplateError
} from './errors.ts'
