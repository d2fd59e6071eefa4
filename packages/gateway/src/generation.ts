// One generation request, whichever endpoint: admit it, open a swarm session through the client,
// wait for the first token (errors until then are plain HTTP errors), then answer as one JSON body
// or as server-sent events. The client going away aborts the session at once.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { MingaClient } from '@minga/client'
import { ApiError, errorBody, toApiError } from './errors.ts'
import type { GatewayMetrics } from './metrics.ts'
import type { FinishReason, SamplingRequest, Usage } from './protocol.ts'

export type RouteView = Array<{ peerId: string, blocks: [number, number] }>

/** What the serving functions need from the gateway. */
export interface ServingContext {
  readonly client: MingaClient
  readonly modelName: string
  readonly metrics: GatewayMetrics
  /** New tokens when a chat request names no max_tokens (a session reserves its whole length on every server). */
  readonly defaultMaxTokens: number
  /** Takes a request slot (429 when full, 503 when the swarm lacks a layer); call the result when done. */
  admit (): Promise<() => void>
  /** The route of the newest request, for GET /v1/swarm. */
  onRoute (route: RouteView): void
}

/** How an endpoint shapes its chunks and its whole response. */
export interface ResponseFormat {
  /** The first chunk of a stream, before any text (chat: the assistant role). */
  opening?: () => object
  text: (text: string) => object
  finish: (reason: FinishReason) => object
  usage: (usage: Usage) => object
  whole: (text: string, reason: FinishReason, usage: Usage) => object
}

/** Sent as the abort reason when the HTTP client goes away. */
class ClientGoneError extends Error {
  override readonly name = 'AbortError'
}

export async function serveGeneration (
  ctx: ServingContext, req: IncomingMessage, res: ServerResponse, request: SamplingRequest, promptIds: number[], format: ResponseFormat, receivedAt: number
): Promise<void> {
  const { client, metrics } = ctx
  const release = await ctx.admit()
  const controller = new AbortController()
  const onClose = (): void => { if (!res.writableFinished) controller.abort(new ClientGoneError('the HTTP client went away')) }
  res.on('close', onClose)
  req.on('error', onClose)
  metrics.requestsWaiting.inc()
  let phase: 'waiting' | 'running' | 'done' = 'waiting'
  const stream = client.generate(promptIds, {
    // (planGeneration caps it at what is left of the context)
    maxNewTokens: request.maxTokens ?? ctx.defaultMaxTokens,
    temperature: request.temperature,
    topP: request.topP,
    topK: request.topK,
    seed: request.seed,
    presencePenalty: request.presencePenalty,
    frequencyPenalty: request.frequencyPenalty,
    stop: request.stop,
    signal: controller.signal,
    onRoute: ctx.onRoute
  })
  let finished = false
  let lastTokenAt = 0
  let tokens = 0
  /** Counts a step's token and times it against the one before. */
  const counted = (id: number): void => {
    if (id < 0) return // the held-back tail of a stop string, not a token
    const now = performance.now()
    if (tokens === 0) metrics.timeToFirstToken.observe((now - receivedAt) / 1000)
    else metrics.interTokenLatency.observe((now - lastTokenAt) / 1000)
    lastTokenAt = now
    tokens++
    metrics.generationTokens.inc()
  }
  try {
    let step = await stream.next()
    metrics.requestsWaiting.dec()
    metrics.requestsRunning.inc()
    phase = 'running'
    metrics.promptTokens.inc(promptIds.length)
    if (!request.stream) {
      let text = ''
      while (step.done !== true) {
        counted(step.value.id)
        text += step.value.text
        step = await stream.next()
      }
      finished = true
      const result = step.value
      sendJson(res, 200, format.whole(text, finishReason(result.stopReason), usageOf(promptIds.length, result.ids.length)))
      return
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
    const send = (chunk: object): void => { res.write(`data: ${JSON.stringify(request.includeUsage ? { ...chunk, usage: null } : chunk)}\n\n`) }
    if (format.opening != null) send(format.opening())
    try {
      while (step.done !== true) {
        counted(step.value.id)
        if (step.value.text !== '') send(format.text(step.value.text))
        step = await stream.next()
      }
      finished = true
      const result = step.value
      send(format.finish(finishReason(result.stopReason)))
      if (request.includeUsage) res.write(`data: ${JSON.stringify(format.usage(usageOf(promptIds.length, result.ids.length)))}\n\n`)
    } catch (err) {
      if (controller.signal.aborted) return
      // Headers are out: the error goes into the stream, as OpenAI does.
      res.write(`data: ${JSON.stringify(errorBody(toApiError(err)))}\n\n`)
    }
    res.end('data: [DONE]\n\n')
  } catch (err) {
    if (controller.signal.aborted) return // nobody is listening any more
    throw err
  } finally {
    res.off('close', onClose)
    req.off('error', onClose)
    if (!finished) await stream.return(undefined as never).catch(() => {}) // closes the swarm session
    if (phase === 'waiting') metrics.requestsWaiting.dec()
    if (phase === 'running') metrics.requestsRunning.dec()
    phase = 'done'
    release()
    metrics.requestLatency.observe((performance.now() - receivedAt) / 1000)
  }
}

export function sendJson (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers })
  res.end(text)
}

/** Sends an error in OpenAI's shape (with retry-after when it has one). */
export function sendError (res: ServerResponse, err: unknown): ApiError {
  const error = toApiError(err)
  if (res.headersSent) {
    res.destroy()
    return error
  }
  sendJson(res, error.status, errorBody(error), error.retryAfter != null ? { 'retry-after': String(error.retryAfter) } : {})
  return error
}

function finishReason (stopReason: 'eos' | 'stop' | 'length'): FinishReason {
  return stopReason === 'length' ? 'length' : 'stop'
}

function usageOf (prompt: number, completion: number): Usage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
}

/** A request id like OpenAI's (`chatcmpl-…`, `cmpl-…`). */
export function requestId (prefix: string): string {
  return `${prefix}-${crypto.randomUUID().replaceAll('-', '')}`
}
