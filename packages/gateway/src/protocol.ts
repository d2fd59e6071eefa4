// The OpenAI request and response shapes the gateway speaks, and the one place requests are checked:
// each bad field is an ApiError 400 naming it (`param`), as OpenAI and vLLM answer.
import type { ChatMessage } from '@minga/engine'
import { ApiError } from './errors.ts'

/** What a request asks of the generation, whichever endpoint it came through. */
export interface SamplingRequest {
  model?: string
  stream: boolean
  includeUsage: boolean
  maxTokens?: number
  temperature?: number
  topP?: number
  topK?: number
  seed?: number
  presencePenalty?: number
  frequencyPenalty?: number
  stop: string[]
}

export interface ChatRequest extends SamplingRequest { messages: ChatMessage[] }

export interface CompletionRequest extends SamplingRequest { prompt: string | number[] }

export type FinishReason = 'stop' | 'length'

export interface Usage { prompt_tokens: number, completion_tokens: number, total_tokens: number }

export interface ChatCompletionChunk {
  id: string
  object: 'chat.completion.chunk'
  created: number
  model: string
  choices: Array<{ index: 0, delta: { role?: 'assistant', content?: string }, logprobs: null, finish_reason: FinishReason | null }>
  usage?: Usage | null
}

export interface ChatCompletion {
  id: string
  object: 'chat.completion'
  created: number
  model: string
  choices: Array<{ index: 0, message: { role: 'assistant', content: string }, logprobs: null, finish_reason: FinishReason }>
  usage: Usage
}

export interface CompletionChunk {
  id: string
  object: 'text_completion'
  created: number
  model: string
  choices: Array<{ index: 0, text: string, logprobs: null, finish_reason: FinishReason | null }>
  usage?: Usage | null
}

export type Completion = CompletionChunk & { usage: Usage }

export interface ModelList {
  object: 'list'
  data: Array<{ id: string, object: 'model', created: number, owned_by: string }>
}

/** The JSON body of a request, parsed; malformed JSON is a 400, never a crash. */
export function parseJsonBody (body: Buffer): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(body.toString('utf8'))
  } catch (err) {
    throw new ApiError(400, `the request body is not valid JSON: ${(err as Error).message}`)
  }
  if (value == null || typeof value !== 'object' || Array.isArray(value)) throw new ApiError(400, 'the request body must be a JSON object')
  return value as Record<string, unknown>
}

/** A request naming another model than the one this gateway serves is a 404, as OpenAI answers. */
export function checkModel (request: SamplingRequest, modelName: string): void {
  if (request.model != null && request.model !== modelName) {
    throw new ApiError(404, `the model "${request.model}" does not exist here; this gateway serves "${modelName}"`, 'model', 'model_not_found')
  }
}

/** Token ids of a raw prompt must be in the vocabulary. */
export function checkPromptIds (ids: number[], vocabSize: number): void {
  const bad = ids.find(id => id >= vocabSize)
  if (bad != null) throw new ApiError(400, `prompt token id ${bad} is outside the vocabulary of ${vocabSize}`, 'prompt')
}

export function parseChatRequest (body: Record<string, unknown>): ChatRequest {
  const messages = body.messages
  if (!Array.isArray(messages) || messages.length === 0) throw new ApiError(400, 'messages must be a non-empty array', 'messages')
  if (body.tools != null && !(Array.isArray(body.tools) && body.tools.length === 0)) throw new ApiError(400, 'tools are not supported', 'tools')
  if (body.logprobs != null && body.logprobs !== false) throw new ApiError(400, 'logprobs are not supported', 'logprobs')
  const format = body.response_format as { type?: unknown } | undefined
  if (format != null && format.type !== 'text') throw new ApiError(400, 'only response_format {"type": "text"} is supported', 'response_format')
  return {
    ...parseSampling(body),
    maxTokens: optionalInteger(body, 'max_completion_tokens', 1) ?? optionalInteger(body, 'max_tokens', 1),
    messages: messages.map((m, i) => parseMessage(m, i))
  }
}

export function parseCompletionRequest (body: Record<string, unknown>): CompletionRequest {
  for (const field of ['suffix', 'logprobs'] as const) {
    if (body[field] != null) throw new ApiError(400, `${field} is not supported`, field)
  }
  if (body.echo != null && body.echo !== false) throw new ApiError(400, 'echo is not supported', 'echo')
  if (body.best_of != null && body.best_of !== 1) throw new ApiError(400, 'best_of must be 1', 'best_of')
  return { ...parseSampling(body), maxTokens: optionalInteger(body, 'max_tokens', 1) ?? 16, prompt: parsePrompt(body.prompt) }
}

function parseSampling (body: Record<string, unknown>): Omit<SamplingRequest, 'maxTokens'> {
  if (body.model != null && typeof body.model !== 'string') throw new ApiError(400, 'model must be a string', 'model')
  if (body.stream != null && typeof body.stream !== 'boolean') throw new ApiError(400, 'stream must be a boolean', 'stream')
  const n = body.n ?? 1
  if (n !== 1) throw new ApiError(400, `n must be 1 (one choice per request), got ${JSON.stringify(n)}`, 'n')
  const streamOptions = body.stream_options as { include_usage?: unknown } | null | undefined
  if (streamOptions != null && (typeof streamOptions !== 'object' || (streamOptions.include_usage != null && typeof streamOptions.include_usage !== 'boolean'))) {
    throw new ApiError(400, 'stream_options must be {"include_usage": boolean}', 'stream_options')
  }
  const topP = optionalNumber(body, 'top_p', 0, 1)
  if (topP === 0) throw new ApiError(400, 'top_p must be in (0, 1]', 'top_p')
  const topK = optionalInteger(body, 'top_k', -1)
  return {
    model: body.model as string | undefined,
    stream: body.stream === true,
    includeUsage: streamOptions?.include_usage === true,
    temperature: optionalNumber(body, 'temperature', 0, 2),
    topP,
    topK: topK === -1 ? 0 : topK, // vLLM's -1 means all tokens, like our 0
    seed: optionalInteger(body, 'seed', Number.MIN_SAFE_INTEGER),
    presencePenalty: optionalNumber(body, 'presence_penalty', -2, 2),
    frequencyPenalty: optionalNumber(body, 'frequency_penalty', -2, 2),
    stop: parseStop(body.stop)
  }
}

function parseMessage (value: unknown, index: number): ChatMessage {
  const param = `messages[${index}]`
  if (value == null || typeof value !== 'object') throw new ApiError(400, `${param} must be an object`, param)
  const { role, content } = value as { role?: unknown, content?: unknown }
  if (typeof role !== 'string' || !['system', 'developer', 'user', 'assistant'].includes(role)) {
    throw new ApiError(400, `${param}.role must be one of system, developer, user, assistant`, `${param}.role`)
  }
  // "developer" is the newer name of "system"; templates know only the older one.
  return { role: role === 'developer' ? 'system' : role, content: parseContent(content, `${param}.content`) }
}

/** A string, or text parts `[{type: "text", text}]` joined. */
function parseContent (content: unknown, param: string): string {
  if (typeof content === 'string') return content
  if (content == null) return ''
  if (!Array.isArray(content)) throw new ApiError(400, `${param} must be a string or an array of text parts`, param)
  return content.map((part, i) => {
    const { type, text } = (part ?? {}) as { type?: unknown, text?: unknown }
    if (type !== 'text' || typeof text !== 'string') throw new ApiError(400, `${param}[${i}] must be {"type": "text", "text": string} (only text is supported)`, `${param}[${i}]`)
    return text
  }).join('')
}

function parsePrompt (prompt: unknown): string | number[] {
  if (typeof prompt === 'string') return prompt
  if (Array.isArray(prompt)) {
    if (prompt.length > 0 && prompt.every(id => Number.isInteger(id) && id >= 0)) return prompt as number[]
    if (prompt.length === 1 && typeof prompt[0] === 'string') return prompt[0]
  }
  throw new ApiError(400, 'prompt must be a string, a one-string array or an array of token ids', 'prompt')
}

function parseStop (stop: unknown): string[] {
  if (stop == null) return []
  if (typeof stop === 'string') return [stop]
  if (Array.isArray(stop) && stop.length <= 4 && stop.every(s => typeof s === 'string')) return stop
  throw new ApiError(400, 'stop must be a string or an array of at most 4 strings', 'stop')
}

function optionalNumber (body: Record<string, unknown>, field: string, min: number, max: number): number | undefined {
  const value = body[field]
  if (value == null) return undefined
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) throw new ApiError(400, `${field} must be a number from ${min} to ${max}, got ${JSON.stringify(value)}`, field)
  return value
}

function optionalInteger (body: Record<string, unknown>, field: string, min: number): number | undefined {
  const value = body[field]
  if (value == null) return undefined
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) throw new ApiError(400, `${field} must be an integer ≥ ${min}, got ${JSON.stringify(value)}`, field)
  return value
}
