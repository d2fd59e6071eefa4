// @minga/gateway: an OpenAI-compatible HTTP API (and Prometheus metrics) over a minga swarm.
export { createGateway, type Gateway, type GatewayInit } from './gateway.ts'
export { ApiError, GatewayConfigError, errorBody, type OpenAIErrorBody } from './errors.ts'
export { createGatewayMetrics, type GatewayMetrics } from './metrics.ts'
export type { ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk, ModelList, Usage } from './protocol.ts'
