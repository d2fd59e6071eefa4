// Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with the HTTP status the
// `openai` SDKs map to their error classes. `toApiError` is the one place any failure becomes one.

export class ApiError extends Error {
  override readonly name = 'ApiError'
  constructor (
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Seconds, sent as `retry-after` (429 and 503). */
    readonly retryAfter?: number
  ) {
    super(message)
  }
}

/** A bad GatewayInit value (e.g. --max-concurrent 0). */
export class GatewayConfigError extends Error {
  override readonly name = 'GatewayConfigError'
}

export interface OpenAIErrorBody {
  error: { message: string, type: string, param: string | null, code: string | null }
}

const TYPE_BY_STATUS: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  404: 'not_found_error',
  413: 'invalid_request_error',
  429: 'rate_limit_error',
  503: 'service_unavailable_error'
}

/** Any failure as an ApiError: engine and client errors by name, anything else a 500. */
export function toApiError (err: unknown): ApiError {
  if (err instanceof ApiError) return err
  const { name, message } = err instanceof Error ? err : { name: '', message: String(err) }
  switch (name) {
    case 'NoChatTemplateError': return new ApiError(400, message, 'messages', 'no_chat_template')
    case 'ContextLengthError': return new ApiError(400, message, null, 'context_length_exceeded')
    case 'InvalidArgumentError': return new ApiError(400, message)
    case 'NoRouteError':
    case 'SwarmError': return new ApiError(503, `the swarm cannot serve this request now: ${message}`, null, 'swarm_unavailable', 5)
    default: return new ApiError(500, `internal error: ${message}`, null, 'internal_error')
  }
}

export function errorBody (err: ApiError): OpenAIErrorBody {
  return { error: { message: err.message, type: TYPE_BY_STATUS[err.status] ?? 'server_error', param: err.param, code: err.code } }
}
