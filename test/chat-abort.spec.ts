// The SDK's chat and abort: a chat through the swarm equals the local engine on the rendered prompt,
// and an AbortSignal ends the servers' sessions at once, during prefill too.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createClient, type MingaClient } from '@minga/client'
import { createLocalModel, loadChatTemplate, untilDone, type ChatMessage } from '@minga/engine'
import { createMingaNode, type MingaNode } from '@minga/p2p'
import { createServer, type MingaServer } from '@minga/server'
import { STORIES, storiesWithChatTemplate, waitFor } from '../packages/engine/test/helpers.ts'

const CONVERSATION: ChatMessage[] = [
  { role: 'user', content: 'Tell me a story.' },
  { role: 'assistant', content: 'Once upon a time, there was a cat.' },
  { role: 'user', content: 'What did the cat do?' }
]

describe('client.chat and abort', () => {
  const model = storiesWithChatTemplate()
  let bootstrap: MingaNode
  const servers: MingaServer[] = []
  let client: MingaClient
  beforeAll(async () => {
    bootstrap = await createMingaNode({})
    for (const [start, end] of [[0, 3], [3, 5]]) {
      servers.push(await createServer({ modelDir: model.path, blocks: { start, end }, bootstrap: bootstrap.addrs(), throughput: 100 }))
    }
    client = await createClient({ modelDir: model.path, bootstrap: bootstrap.addrs() })
  })
  afterAll(async () => {
    await client?.close()
    await Promise.all(servers.map(async s => { await s.stop({ immediate: true }) }))
    await bootstrap?.stop()
    model.remove()
  })

  it('a chat equals the local engine on the rendered prompt, with one BOS', async () => {
    const promptIds = client.chatPromptIds(CONVERSATION)
    expect(promptIds.filter(id => id === 1)).toEqual([1])
    const local = await createLocalModel({ modelDir: model.path })
    let expected: number[]
    try {
      const text = loadChatTemplate(model.path).render(CONVERSATION)
      expected = (await untilDone(local.generate(local.tokenizer.encode(text, { addSpecialTokens: false }), { maxNewTokens: 12 }))).ids
    } finally {
      await local.close()
    }
    const result = await untilDone(client.chat(CONVERSATION, { maxNewTokens: 12 }))
    expect(result.promptIds).toEqual(promptIds)
    expect(result.ids).toEqual(expected)
  })

  it('a model without a template gets NoChatTemplateError', async () => {
    const plain = await createClient({ modelDir: STORIES, bootstrap: bootstrap.addrs() })
    try {
      expect(() => plain.chatPromptIds(CONVERSATION)).toThrow(expect.objectContaining({ name: 'NoChatTemplateError' }))
    } finally {
      await plain.close()
    }
  })

  it('aborting during prefill frees every server\'s session within a second', async () => {
    const controller = new AbortController()
    // A long prompt fed one token per step: the prefill is hundreds of round trips.
    const stream = client.generate('Once upon a time '.repeat(80), { maxNewTokens: 5, prefillChunkSize: 1, signal: controller.signal })
    const first = stream.next()
    first.catch(() => {})
    await waitFor(() => servers.every(s => s.openSessions === 1), 'the session to open on both servers')
    controller.abort()
    await expect(first).rejects.toThrow(expect.objectContaining({ name: 'AbortError' }))
    await waitFor(() => servers.every(s => s.openSessions === 0), 'the servers to close the session', 1000)
  })
})
