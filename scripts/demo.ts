// `pnpm demo` (and `npm start`): a whole swarm on this machine. Starts a bootstrap node and three
// servers holding consecutive spans of the model as separate processes, waits until every layer is
// covered, generates through the swarm while printing the route and streaming the text, then stops.
import '@minga/p2p/polyfill'
import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { createClient, getSwarmStatus } from '@minga/client'
import { computeModelId, loadModelConfig } from '@minga/engine'
import { REPO_ROOT, startNode, type NodeProcess } from '@minga/cli/processes'

const { values: flags } = parseArgs({
  options: {
    model: { type: 'string' },
    prompt: { type: 'string', default: process.env.MINGA_PROMPT ?? 'Once upon a time' },
    'max-new-tokens': { type: 'string', default: '100' },
    servers: { type: 'string', default: '3' }
  }
})
const modelDir = resolve(process.env.INIT_CWD ?? process.cwd(), flags.model ?? process.env.MINGA_MODEL ?? join(REPO_ROOT, 'models/stories260k'))
if (!existsSync(join(modelDir, 'config.json'))) {
  process.stderr.write(`minga demo: no model at ${modelDir}.\n` +
    'Point it at a Hugging Face Llama-family directory (config.json, model.safetensors, tokenizer.json):\n' +
    '  pnpm demo --model /path/to/model    or    MINGA_MODEL=/path/to/model npm start\n')
  process.exit(1)
}

const NEXT_STEPS = `
What next:
  pnpm --silent minga serve --model DIR --blocks auto --bootstrap ADDR   host layers of a real model (any Hugging Face Llama, Mistral or Qwen2 directory) in a swarm
  pnpm --silent minga bootstrap --listen /ip4/0.0.0.0/tcp/31337          start a swarm of your own that others can join
  pnpm --silent minga generate --model DIR --bootstrap ADDR --prompt …   generate through a swarm
  pnpm --silent minga status --bootstrap ADDR                            see which machines hold which layers
  pnpm --silent minga chat --model DIR --bootstrap ADDR                  chat in the terminal (a model with a chat template)
  pnpm --silent minga api --model DIR --bootstrap ADDR                   an OpenAI-compatible API, a chat page and the swarm's map on http://127.0.0.1:8080
  README.md explains each, private swarms (--swarm-key) and what the servers can see of a prompt.
`

const say = (line: string): void => { process.stdout.write(`\x1b[2m[demo]\x1b[0m ${line}\n`) }
const nodes: NodeProcess[] = []
const stopAll = async (): Promise<void> => { await Promise.all(nodes.splice(0).map(async n => await n.stop())) }
process.once('SIGINT', () => { void stopAll().then(() => process.exit(130)) })

try {
  const config = loadModelConfig(modelDir)
  const count = Math.min(Number(flags.servers), config.numLayers)
  const spans = Array.from({ length: count }, (_, i) => [Math.ceil((i * config.numLayers) / count), Math.ceil(((i + 1) * config.numLayers) / count)])

  const bootstrap = await startNode(['bootstrap'], { label: 'bootstrap' })
  nodes.push(bootstrap)
  const bootstrapAddr = bootstrap.ready.addrs[0]
  say(`bootstrap node ${bootstrapAddr}`)
  for (const [start, end] of spans) {
    const server = await startNode(['serve', '--model', modelDir, '--blocks', `${start}:${end}`, '--bootstrap', bootstrapAddr, '--public-name', `demo-${start}-${end}`], { label: `server ${start}:${end}` })
    nodes.push(server)
    say(`server ${server.ready.peerId.slice(-8)} holds layers [${start}, ${end})`)
  }

  const model = { modelId: computeModelId(modelDir), numBlocks: config.numLayers }
  const deadline = Date.now() + 60_000
  while (!(await getSwarmStatus({ bootstrap: [bootstrapAddr], model }))[0].coverage.every(c => c.servers > 0)) {
    if (Date.now() > deadline) throw new Error('the swarm did not cover every layer within 60 s')
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  say(`all ${config.numLayers} layers are covered`)

  const client = await createClient({ modelDir, bootstrap: [bootstrapAddr] })
  try {
    const stream = client.generate(flags.prompt!, { maxNewTokens: Number(flags['max-new-tokens']) })
    let step = await stream.next()
    let routed = false
    while (step.done !== true) {
      if (!routed) {
        routed = true
        process.stdout.write(`\n${flags.prompt}`)
      }
      process.stdout.write(step.value.text)
      step = await stream.next()
    }
    const result = step.value
    process.stdout.write('\n\n')
    say(`route: ${result.route.map(h => `${h.peerId.slice(-8)} [${h.blocks[0]}, ${h.blocks[1]})`).join(' → ')}`)
    say(`${result.ids.length} tokens, prefill ${result.prefillMs.toFixed(1)} ms, ${result.tokensPerSecond.toFixed(1)} tokens/s through the swarm`)
  } finally {
    await client.close()
  }
} catch (err: any) {
  process.stderr.write(`minga demo: ${err?.message ?? err}\n`)
  process.exitCode = 1
} finally {
  await stopAll()
  say('stopped every node')
}
if (process.exitCode !== 1) process.stdout.write(NEXT_STEPS)
