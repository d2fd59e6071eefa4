// POST /v1/chat/completions: messages through the model's chat template, answered as one
// chat.completion or as chat.completion.chunk events.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { requestId, serveGeneration, type ServingContext } from './generation.ts'
import { checkModel, parseChatRequest, type ChatCompletion, type ChatCompletionChunk } from './protocol.ts'

export async function serveChat (ctx: ServingContext, req: IncomingMessage, res: ServerResponse, body: Record<string, unknown>, receivedAt: number): Promise<void> {
  const request = parseChatRequest(body)
  checkModel(request, ctx.modelName)
  const promptIds = ctx.client.chatPromptIds(request.messages)
  const id = requestId('chatcmpl')
  const created = Math.floor(Date.now() / 1000)
  const model = ctx.modelName
  const chunk = (delta: ChatCompletionChunk['choices'][0]['delta'], finishReason: ChatCompletionChunk['choices'][0]['finish_reason']): ChatCompletionChunk => ({
    id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }]
  })
  await serveGeneration(ctx, req, res, request, promptIds, {
    opening: () => chunk({ role: 'assistant', content: '' }, null),
    text: text => chunk({ content: text }, null),
    finish: reason => chunk({}, reason),
    usage: usage => ({ id, object: 'chat.completion.chunk', created, model, choices: [], usage }),
    whole: (text, reason, usage): ChatCompletion => ({
      id, object: 'chat.completion', created, model, choices: [{ index: 0, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: reason }], usage
    })
  }, receivedAt)
}
