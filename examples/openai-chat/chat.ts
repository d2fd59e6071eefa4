// The official `openai` client, unchanged, talking to a minga swarm: `minga api` speaks the
// OpenAI API, so only the base URL differs. Start a gateway first, e.g.
//   pnpm --silent minga api --model DIR --bootstrap MULTIADDR --port 8080
// then: pnpm --filter @minga/example-openai-chat start --url http://127.0.0.1:8080/v1 [--message TEXT]
// (or MINGA_API_URL, and MINGA_API_KEY if the gateway was started with --api-key).
import { parseArgs } from 'node:util'
import OpenAI from 'openai'

const { values: args } = parseArgs({
  options: {
    url: { type: 'string', default: process.env.MINGA_API_URL ?? 'http://127.0.0.1:8080/v1' },
    message: { type: 'string', default: 'Tell me a story about a brave little dog.' },
    'max-tokens': { type: 'string', default: '48' }
  }
})

const openai = new OpenAI({ baseURL: args.url, apiKey: process.env.MINGA_API_KEY ?? 'no key needed' })

// The gateway serves one model; its id is the model directory's name.
const { data: [model] } = await openai.models.list()
console.error(`model: ${model.id}`)

const stream = await openai.chat.completions.create({
  model: model.id,
  messages: [
    { role: 'system', content: 'You are a storyteller.' },
    { role: 'user', content: args.message }
  ],
  max_tokens: Number(args['max-tokens']),
  temperature: 0, // greedy: the same answer every time
  stream: true,
  stream_options: { include_usage: true }
})
for await (const chunk of stream) {
  process.stdout.write(chunk.choices[0]?.delta?.content ?? '')
  if (chunk.usage != null) console.error(`\n${chunk.usage.prompt_tokens} prompt tokens, ${chunk.usage.completion_tokens} generated`)
}
