// The gateway through the real `openai` client, over a loopback stories260k swarm (in-process nodes),
// against the local engine's greedy output on the same rendered prompts.
import OpenAI, { APIError, APIUserAbortError, AuthenticationError, BadRequestError, InternalServerError, NotFoundError, RateLimitError } from 'openai'
import parsePrometheusTextFormat from 'parse-prometheus-text-format'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLocalModel, createSpanExecutor, loadChatTemplate, type ChatMessage, type LocalModel } from '@minga/engine'
import { createMingaNode, type MingaNode } from '@minga/p2p'
import { createServer, type MingaServer } from '@minga/server'
import { createGateway, type Gateway } from '../src/index.ts'
import { STORIES, storiesWithChatTemplate, waitFor } from '../../engine/test/helpers.ts'
import { runMinga } from '../../cli/src/processes.ts'

const KEY = 'test-key'
const MODEL = 'stories'
const MAX_TOKENS = 8
const QUESTIONS = ['Tell me a story.', 'What did the dog do?', 'Who is Lily?', 'Where is the ball?']
/** Assignable both to the engine's ChatMessage and to the SDK's message params. */
type Message = ChatMessage & { role: 'system' | 'user' | 'assistant' }
const CONVERSATION: Message[] = [
  { role: 'system', content: 'You tell stories.' },
  { role: 'user', content: 'Tell me a story.' },
  { role: 'assistant', content: 'Once upon a time, there was a cat.' },
  { role: 'user', content: 'What did the cat do?' }
]

interface Expected { text: string, promptTokens: number, completionTokens: number, finish: 'stop' | 'length' }

describe('the OpenAI-compatible gateway', () => {
  const model = storiesWithChatTemplate()
  let bootstrap: MingaNode
  const servers: MingaServer[] = []
  let gateway: Gateway
  let openai: OpenAI
  let local: LocalModel
  /** Makes the second server's decode steps fail, for the error-after-streaming-began test. */
  let failDecode = false
  /** While set, the second server's prefill steps wait for it (to abort a request during its prefill). */
  let holdPrefill: { reached: boolean, released: Promise<void> } | undefined
  const chatExpected = new Map<string, Expected>()

  /** The local engine's greedy answer to a conversation, on the template's rendered prompt. */
  const expectChat = async (messages: ChatMessage[], maxNewTokens = MAX_TOKENS): Promise<Expected> => {
    const ids = local.tokenizer.encode(loadChatTemplate(model.path).render(messages), { addSpecialTokens: false })
    return await expectIds(ids, maxNewTokens)
  }
  const expectIds = async (ids: number[], maxNewTokens: number): Promise<Expected> => {
    const stream = local.generate(ids, { maxNewTokens })
    let step = await stream.next()
    while (step.done !== true) step = await stream.next()
    const r = step.value
    return { text: r.text, promptTokens: ids.length, completionTokens: r.ids.length, finish: r.stopReason === 'length' ? 'length' : 'stop' }
  }
  const user = (content: string): Message[] => [{ role: 'user', content }]
  const metric = async (name: string, labels: Record<string, string> = {}): Promise<number> => {
    const families = parsePrometheusTextFormat(await (await fetch(`${gateway.url}/metrics`)).text())
    const family = families.find(f => f.name === name)
    if (family == null) throw new Error(`no metric ${name}`)
    const match = family.metrics.filter(m => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))
    return match.reduce((sum, m) => sum + Number(m.value ?? m.count ?? 0), 0)
  }

  beforeAll(async () => {
    local = await createLocalModel({ modelDir: model.path })
    for (const q of QUESTIONS) chatExpected.set(q, await expectChat(user(q)))
    bootstrap = await createMingaNode({})
    servers.push(await createServer({ modelDir: model.path, blocks: { start: 0, end: 3 }, bootstrap: bootstrap.addrs(), throughput: 100 }))
    const span = await createSpanExecutor({ modelDir: model.path, start: 3, end: 5 })
    const executor = {
      ...span,
      forward: async (...args: Parameters<typeof span.forward>) => {
        if (failDecode && args[2]?.tokens === 1) throw new Error('injected failure')
        if (holdPrefill != null && args[2]?.tokens !== 1) {
          holdPrefill.reached = true
          await holdPrefill.released
        }
        return await span.forward(...args)
      }
    }
    servers.push(await createServer({ modelDir: model.path, blocks: { start: 3, end: 5 }, executor, bootstrap: bootstrap.addrs(), throughput: 100 }))
    gateway = await createGateway({
      modelDir: model.path, modelName: MODEL, bootstrap: bootstrap.addrs(), port: 0, apiKey: KEY, maxConcurrent: 8, maxBodyBytes: 64 * 1024,
      client: { failoverTimeoutMs: 1000 } // a failed server with no replica is given up on quickly
    })
    openai = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: KEY, maxRetries: 0 })
  })
  afterAll(async () => {
    await gateway?.close()
    await Promise.all(servers.map(async s => { await s.stop({ immediate: true }) }))
    await bootstrap?.stop()
    await local?.close()
    model.remove()
  })

  it('GET /v1/models lists the model', async () => {
    const models = await openai.models.list()
    expect(models.data).toEqual([{ id: MODEL, object: 'model', created: expect.any(Number), owned_by: 'minga' }])
  })

  it('a non-streaming chat completion equals the local engine, with the right usage', async () => {
    const expected = await expectChat(CONVERSATION)
    const completion = await openai.chat.completions.create({ model: MODEL, messages: CONVERSATION, max_tokens: MAX_TOKENS, temperature: 0 })
    expect(completion.object).toBe('chat.completion')
    expect(completion.choices).toEqual([{ index: 0, message: { role: 'assistant', content: expected.text }, logprobs: null, finish_reason: expected.finish }])
    expect(completion.usage).toEqual({ prompt_tokens: expected.promptTokens, completion_tokens: expected.completionTokens, total_tokens: expected.promptTokens + expected.completionTokens })
  })

  it('a streaming chat completion has OpenAI\'s chunk contract, and text parts are accepted', async () => {
    const expected = chatExpected.get(QUESTIONS[0])!
    const stream = await openai.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: [{ type: 'text', text: 'Tell me ' }, { type: 'text', text: 'a story.' }] }],
      max_completion_tokens: MAX_TOKENS,
      stream: true,
      stream_options: { include_usage: true }
    })
    const chunks = []
    for await (const chunk of stream) chunks.push(chunk)
    const [first, ...rest] = chunks
    const usage = rest.pop()!
    const final = rest.pop()!
    for (const chunk of chunks) {
      expect(chunk).toMatchObject({ id: first.id, created: first.created, model: MODEL, object: 'chat.completion.chunk' })
    }
    expect(first.choices[0]).toMatchObject({ delta: { role: 'assistant' }, finish_reason: null })
    for (const chunk of rest) expect(chunk.choices[0]).toMatchObject({ delta: { content: expect.any(String) }, finish_reason: null })
    expect(rest.map(c => c.choices[0].delta.content).join('')).toBe(expected.text)
    expect(final.choices).toEqual([{ index: 0, delta: {}, logprobs: null, finish_reason: expected.finish }])
    expect(usage.choices).toEqual([])
    expect(usage.usage).toEqual({ prompt_tokens: expected.promptTokens, completion_tokens: expected.completionTokens, total_tokens: expected.promptTokens + expected.completionTokens })
  })

  it('the SDK\'s stream helper accepts the stream (finalChatCompletion)', async () => {
    const expected = chatExpected.get(QUESTIONS[1])!
    const stream = openai.chat.completions.stream({ model: MODEL, messages: user(QUESTIONS[1]), max_tokens: MAX_TOKENS })
    const completion = await stream.finalChatCompletion()
    expect(completion.choices[0].message.content).toBe(expected.text)
    expect(completion.choices[0].finish_reason).toBe(expected.finish)
  })

  it('the output equals `minga generate --chat` through the same swarm', async () => {
    const { code, stdout, stderr } = await runMinga('generate', '--model', model.path, '--bootstrap', bootstrap.addrs()[0], '--chat', '--prompt', QUESTIONS[2], '--max-new-tokens', String(MAX_TOKENS), '--json')
    expect(code, stderr).toBe(0)
    const completion = await openai.chat.completions.create({ model: MODEL, messages: user(QUESTIONS[2]), max_tokens: MAX_TOKENS })
    expect(completion.choices[0].message.content).toBe(JSON.parse(stdout).text)
    expect(completion.usage?.prompt_tokens).toBe(JSON.parse(stdout).promptIds.length)
  })

  it('completions, streaming and not, equal the local engine on the raw prompt', async () => {
    const prompt = 'Once upon a time'
    const expected = await expectIds(local.tokenizer.encode(prompt), MAX_TOKENS)
    const completion = await openai.completions.create({ model: MODEL, prompt, max_tokens: MAX_TOKENS, temperature: 0 })
    expect(completion.object).toBe('text_completion')
    expect(completion.choices[0]).toMatchObject({ index: 0, text: expected.text, finish_reason: expected.finish })
    expect(completion.usage).toEqual({ prompt_tokens: expected.promptTokens, completion_tokens: expected.completionTokens, total_tokens: expected.promptTokens + expected.completionTokens })
    const stream = await openai.completions.create({ model: MODEL, prompt, max_tokens: MAX_TOKENS, stream: true, stream_options: { include_usage: true } })
    let text = ''
    let finish: string | null = null
    let usage
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? ''
      finish = chunk.choices[0]?.finish_reason ?? finish
      usage = chunk.usage ?? usage
    }
    expect(text).toBe(expected.text)
    expect(finish).toBe(expected.finish)
    expect(usage).toEqual(completion.usage)
  })

  it('presence and frequency penalties equal the local engine\'s', async () => {
    for (const penalties of [{ presence_penalty: 1.5 }, { frequency_penalty: 0.8 }]) {
      const ids = local.tokenizer.encode(loadChatTemplate(model.path).render(user(QUESTIONS[0])), { addSpecialTokens: false })
      const stream = local.generate(ids, { maxNewTokens: 30, presencePenalty: penalties.presence_penalty, frequencyPenalty: penalties.frequency_penalty })
      let step = await stream.next()
      while (step.done !== true) step = await stream.next()
      const completion = await openai.chat.completions.create({ model: MODEL, messages: user(QUESTIONS[0]), max_tokens: 30, ...penalties })
      expect(completion.choices[0].message.content).toBe(step.value.text)
    }
    // and they do change the greedy answer over 30 tokens
    const plain = await openai.chat.completions.create({ model: MODEL, messages: user(QUESTIONS[0]), max_tokens: 30 })
    const penalized = await openai.chat.completions.create({ model: MODEL, messages: user(QUESTIONS[0]), max_tokens: 30, frequency_penalty: 2 })
    expect(penalized.choices[0].message.content).not.toBe(plain.choices[0].message.content)
  })

  it('4 concurrent streaming requests each equal their single-request output', async () => {
    const answers = await Promise.all(QUESTIONS.map(async q => {
      const stream = await openai.chat.completions.create({ model: MODEL, messages: user(q), max_tokens: MAX_TOKENS, stream: true })
      let text = ''
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? ''
      return text
    }))
    expect(answers).toEqual(QUESTIONS.map(q => chatExpected.get(q)!.text))
  })

  it('aborting the SDK\'s stream after 3 tokens frees the servers\' sessions within a second', async () => {
    const full = await expectChat(user(QUESTIONS[0]), 400)
    const before = await metric('minga_generation_tokens_total')
    const controller = new AbortController()
    const stream = await openai.chat.completions.create({ model: MODEL, messages: user(QUESTIONS[0]), max_tokens: 400, stream: true }, { signal: controller.signal })
    let tokens = 0
    let openAtAbort: number[] = []
    try {
      for await (const chunk of stream) {
        if ((chunk.choices[0]?.delta?.content ?? '') !== '') tokens++
        if (tokens === 3) {
          openAtAbort = servers.map(s => s.openSessions)
          controller.abort()
        }
      }
    } catch (err) {
      expect(err).toBeInstanceOf(APIUserAbortError) // the SDK may also just end the iteration
    }
    expect(openAtAbort).toEqual([1, 1])
    await waitFor(() => servers.every(s => s.openSessions === 0), 'the servers\' open sessions to return to 0', 1000)
    // It stopped because the client left, not because the answer was over.
    expect(await metric('minga_generation_tokens_total') - before).toBeLessThan(full.completionTokens)
  })

  it('a client that goes away during prefill ends the session at once', async () => {
    let release!: () => void
    holdPrefill = { reached: false, released: new Promise(resolve => { release = resolve }) }
    const gone = await metric('minga_requests_total', { endpoint: 'chat', status: '499' })
    const controller = new AbortController()
    const request = fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, messages: user(QUESTIONS[0]), max_tokens: 8, stream: true }),
      signal: controller.signal
    })
    request.catch(() => {})
    try {
      await waitFor(() => holdPrefill!.reached, 'the prefill to reach the second server')
      controller.abort()
      // The first server is told at once; the second is busy with the held step, and reads the
      // CLOSE_SESSION queued behind it as soon as it is done.
      await waitFor(() => servers[0].openSessions === 0, 'the first server to close the session', 1000)
      await waitFor(async () => await metric('minga_requests_total', { endpoint: 'chat', status: '499' }) === gone + 1, 'the request to end as 499')
    } finally {
      release()
      holdPrefill = undefined
    }
    await waitFor(() => servers[1].openSessions === 0, 'the second server to close the session', 1000)
  })

  it('/metrics parses as Prometheus text and its counters move after a request', async () => {
    const families = parsePrometheusTextFormat(await (await fetch(`${gateway.url}/metrics`)).text())
    for (const name of ['minga_requests_running', 'minga_requests_waiting', 'minga_prompt_tokens_total', 'minga_generation_tokens_total',
      'minga_time_to_first_token_seconds', 'minga_inter_token_latency_seconds', 'minga_e2e_request_latency_seconds', 'minga_requests_total']) {
      expect(families.map(f => f.name)).toContain(name)
    }
    const before = {
      prompt: await metric('minga_prompt_tokens_total'),
      generated: await metric('minga_generation_tokens_total'),
      ttft: await metric('minga_time_to_first_token_seconds'),
      ok: await metric('minga_requests_total', { endpoint: 'chat', status: '200' })
    }
    const completion = await openai.chat.completions.create({ model: MODEL, messages: user(QUESTIONS[3]), max_tokens: MAX_TOKENS })
    expect(await metric('minga_prompt_tokens_total') - before.prompt).toBe(completion.usage!.prompt_tokens)
    expect(await metric('minga_generation_tokens_total') - before.generated).toBe(completion.usage!.completion_tokens)
    expect(await metric('minga_time_to_first_token_seconds') - before.ttft).toBe(1)
    expect(await metric('minga_requests_total', { endpoint: 'chat', status: '200' }) - before.ok).toBe(1)
    expect(await metric('minga_requests_running')).toBe(0)
  })

  it('GET /health, /v1/swarm (status, model, last route) and the static page at /', async () => {
    expect(await (await fetch(`${gateway.url}/health`)).json()).toEqual({ status: 'ok' })
    await openai.completions.create({ model: MODEL, prompt: 'Hi', max_tokens: 1 }) // so there is a last route
    const swarm = await (await fetch(`${gateway.url}/v1/swarm`)).json()
    expect(swarm).toMatchObject({ modelId: gateway.client.modelId, numBlocks: 5, model: MODEL })
    expect(swarm.servers.map((s: { start: number, end: number }) => [s.start, s.end]).sort()).toEqual([[0, 3], [3, 5]])
    expect(swarm.coverage.map((c: { servers: number }) => c.servers)).toEqual([1, 1, 1, 1, 1])
    expect(swarm.lastRoute).toEqual([{ peerId: servers[0].peerId, blocks: [0, 3] }, { peerId: servers[1].peerId, blocks: [3, 5] }])
    const page = await fetch(`${gateway.url}/`)
    expect(page.status).toBe(200)
    expect(page.headers.get('content-type')).toMatch(/^text\/html/)
    expect(await page.text()).toMatch(/<html/)
    expect((await fetch(`${gateway.url}/../package.json`)).status).toBe(404)
    const preflight = await fetch(`${gateway.url}/v1/chat/completions`, { method: 'OPTIONS' })
    expect(preflight.status).toBe(204)
    expect(preflight.headers.get('access-control-allow-headers')).toMatch(/authorization/)
  })

  describe('errors, as the openai client sees them', () => {
    const rejection = async (call: Promise<unknown>): Promise<APIError> => {
      try {
        await call
      } catch (err) {
        return err as APIError
      }
      throw new Error('the call did not fail')
    }

    it('400 names the bad field: n, a penalty, a bad temperature, a role', async () => {
      for (const [body, param] of [
        [{ n: 2 }, 'n'],
        [{ presence_penalty: 2.5 }, 'presence_penalty'],
        [{ temperature: -1 }, 'temperature'],
        [{ messages: [{ role: 'wizard', content: 'hi' }] }, 'messages[0].role']
      ] as const) {
        const err = await rejection(openai.chat.completions.create({ model: MODEL, messages: user('hi'), max_tokens: 2, ...body } as any))
        expect(err).toBeInstanceOf(BadRequestError)
        expect(err.param).toBe(param)
        expect(err.type).toBe('invalid_request_error')
        expect(err.message).toContain(param.split('[')[0])
      }
    })

    it('400 for malformed JSON, and the gateway keeps serving', async () => {
      for (const body of ['{"model": ', 'null', '[1]', '\u0000\u00ff']) {
        const res = await fetch(`${gateway.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body })
        expect(res.status).toBe(400)
        const { error } = await res.json()
        expect(error).toEqual({ message: expect.stringMatching(/JSON/), type: 'invalid_request_error', param: null, code: null })
      }
      expect((await fetch(`${gateway.url}/health`)).status).toBe(200)
    })

    it('401 for a wrong or missing key', async () => {
      const wrong = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'wrong', maxRetries: 0 })
      const err = await rejection(wrong.chat.completions.create({ model: MODEL, messages: user('hi') }))
      expect(err).toBeInstanceOf(AuthenticationError)
      expect(err.code).toBe('invalid_api_key')
      const res = await fetch(`${gateway.url}/v1/models`)
      expect(res.status).toBe(401)
      expect((await res.json()).error.message).toMatch(/missing API key/)
    })

    it('404 for an unknown model or path', async () => {
      const err = await rejection(openai.chat.completions.create({ model: 'gpt-4o', messages: user('hi') }))
      expect(err).toBeInstanceOf(NotFoundError)
      expect(err.param).toBe('model')
      expect(err.code).toBe('model_not_found')
      const res = await fetch(`${gateway.url}/v1/embeddings`, { method: 'POST', headers: { authorization: `Bearer ${KEY}` }, body: '{}' })
      expect(res.status).toBe(404)
      expect((await res.json()).error.type).toBe('not_found_error')
    })

    it('413 for a body over the limit', async () => {
      const err = await rejection(openai.chat.completions.create({ model: MODEL, messages: user('a'.repeat(100_000)) }))
      expect(err).toBeInstanceOf(APIError)
      expect(err.status).toBe(413)
      expect(err.code).toBe('request_too_large')
    })

    describe('a gateway with --max-concurrent 1, on a model without a chat template', () => {
      let small: Gateway
      let smallClient: OpenAI
      let plainServer: MingaServer
      beforeAll(async () => {
        // the model id covers tokenizer_config.json too: the template-less model has servers of its own
        plainServer = await createServer({ modelDir: STORIES, blocks: { start: 0, end: 5 }, bootstrap: bootstrap.addrs(), throughput: 100 })
        small = await createGateway({ modelDir: STORIES, bootstrap: bootstrap.addrs(), port: 0, maxConcurrent: 1 })
        smallClient = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: 'unused', maxRetries: 0 })
      })
      afterAll(async () => {
        await small?.close()
        await plainServer?.stop({ immediate: true })
      })

      it('chat is a 400 naming the missing template; completions still work', async () => {
        const err = await rejection(smallClient.chat.completions.create({ model: 'stories260k', messages: user('hi') }))
        expect(err).toBeInstanceOf(BadRequestError)
        expect(err.code).toBe('no_chat_template')
        expect(err.message).toMatch(/has no chat template/)
        const completion = await smallClient.completions.create({ model: 'stories260k', prompt: 'Once upon a time', max_tokens: 2 })
        expect(completion.usage?.completion_tokens).toBe(2)
      })

      it('429 with retry-after over --max-concurrent', async () => {
        const controller = new AbortController()
        const running = await smallClient.completions.create({ model: 'stories260k', prompt: 'Once upon a time', max_tokens: 400, stream: true }, { signal: controller.signal })
        const iterator = running[Symbol.asyncIterator]()
        await iterator.next() // the first request is generating
        try {
          const err = await rejection(smallClient.completions.create({ model: 'stories260k', prompt: 'Hi', max_tokens: 2 }))
          expect(err).toBeInstanceOf(RateLimitError)
          expect(err.headers?.get('retry-after')).toBe('1')
        } finally {
          controller.abort()
          await iterator.return?.().catch(() => {})
        }
        await waitFor(() => servers.every(s => s.openSessions === 0), 'the aborted request\'s sessions to close')
      })
    })

    // Near the end: the failing server is avoided by the gateway's client for a while afterwards.
    it('an error after streaming began is sent as data: {"error": …} and then [DONE]', async () => {
      const res = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, messages: user('Tell me a story.'), max_tokens: 50, stream: true })
      })
      expect(res.status).toBe(200)
      const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
      let text = ''
      try {
        for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
          text += chunk.value
          if (/"content":"[^"]+"/.test(text)) failDecode = true // a token is out: the headers are sent
        }
      } finally {
        failDecode = false
      }
      const events = text.split('\n\n').filter(e => e !== '').map(e => e.replace(/^data: /, ''))
      expect(events.at(-1)).toBe('[DONE]')
      const error = JSON.parse(events.at(-2)!).error
      expect(error).toMatchObject({ type: 'service_unavailable_error', code: 'swarm_unavailable', message: expect.stringMatching(/no server holds blocks 3–4/) })
      expect(events.slice(0, -2).every(e => JSON.parse(e).object === 'chat.completion.chunk')).toBe(true)
    })

    // Last: it takes a server away.
    it('503 with retry-after when the swarm cannot cover every layer, and /health says so', async () => {
      await servers[1].stop({ drainTimeoutMs: 0 }) // withdraws its span from the DHT first
      await waitFor(async () => (await fetch(`${gateway.url}/health`)).status === 503, '/health to report the missing layers', 30_000)
      expect(await (await fetch(`${gateway.url}/health`)).json()).toEqual({ status: 'unavailable', missingBlocks: [3, 4] })
      const err = await rejection(openai.chat.completions.create({ model: MODEL, messages: user('hi'), max_tokens: 2 }))
      expect(err).toBeInstanceOf(InternalServerError)
      expect(err.status).toBe(503)
      expect(err.headers?.get('retry-after')).toBe('5')
      expect(err.message).toMatch(/no server holds blocks 3, 4/)
    })
  })
})
