// Generate through a minga swarm and print the text as it streams, with the client SDK.
//   pnpm --filter @minga/example-sdk-stream start --model DIR --bootstrap MULTIADDR [--prompt TEXT]
// (or MINGA_MODEL / MINGA_BOOTSTRAP in the environment). The model directory is needed here too:
// the client runs the tokenizer, embeddings and LM head itself, so the prompt's text stays here.
import '@minga/p2p/polyfill' // libp2p needs Promise.withResolvers (Node 22+): import it first
import { parseArgs } from 'node:util'
import { createClient } from '@minga/client'

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: process.env.MINGA_MODEL },
    bootstrap: { type: 'string', default: process.env.MINGA_BOOTSTRAP },
    prompt: { type: 'string', default: 'Once upon a time' },
    'max-new-tokens': { type: 'string', default: '40' }
  }
})
if (args.model == null || args.bootstrap == null) throw new Error('give --model DIR and --bootstrap MULTIADDR (or MINGA_MODEL and MINGA_BOOTSTRAP)')

const client = await createClient({ modelDir: args.model, bootstrap: [args.bootstrap] })
try {
  // temperature 0 is greedy; give a temperature and a seed to sample reproducibly
  const stream = client.generate(args.prompt, { maxNewTokens: Number(args['max-new-tokens']), temperature: 0 })
  let step = await stream.next()
  for (; step.done !== true; step = await stream.next()) process.stdout.write(step.value.text)
  // the generator's return value: the whole result, with the chain of servers it went through
  const { route, tokensPerSecond } = step.value
  process.stderr.write(`\n${tokensPerSecond.toFixed(1)} tokens/s through ${route.map(h => `${h.peerId.slice(-6)} [${h.blocks[0]}, ${h.blocks[1]})`).join(' → ')}\n`)
} finally {
  await client.close()
}
