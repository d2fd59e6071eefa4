// POST /v1/completions: a raw prompt (text or token ids, no chat template), answered as one
// text_completion or as text_completion events.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { requestId, serveGeneration, type ServingContext } from './generation.ts'
import { checkModel, checkPromptIds, parseCompletionRequest, type Completion, type CompletionChunk } from './protocol.ts'

export async function serveCompletion (ctx: ServingContext, req: IncomingMessage, res: ServerResponse, body: Record<string, unknown>, receivedAt: number): Promise<void> {
  const request = parseCompletionRequest(body)
  checkModel(request, ctx.modelName)
  const promptIds = typeof request.prompt === 'string' ? ctx.client.tokenizer.encode(request.prompt) : request.prompt
  checkPromptIds(promptIds, ctx.client.config.vocabSize)
  const id = requestId('cmpl')
  const created = Math.floor(Date.now() / 1000)
  const model = ctx.modelName
  const chunk = (text: string, finishReason: CompletionChunk['choices'][0]['finish_reason']): CompletionChunk => ({
    id, object: 'text_completion', created, model, choices: [{ index: 0, text, logprobs: null, finish_reason: finishReason }]
  })
  await serveGeneration(ctx, req, res, request, promptIds, {
    text: text => chunk(text, null),
    finish: reason => chunk('', reason),
    usage: usage => ({ id, object: 'text_completion', created, model, choices: [], usage }),
    whole: (text, reason, usage): Completion => ({ ...chunk(text, reason), usage })
  }, receivedAt)
}
