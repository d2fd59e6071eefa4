// A community's private swarm on one machine, with the `minga` command only: a swarm key, a
// bootstrap node, three servers that each take the weakest layers (--blocks auto), and the gateway
// with the chat page and the swarm map. On several machines, run the same commands on each (and
// give them the key file and the bootstrap address).
//   pnpm --filter @minga/example-community-swarm start --model DIR [--num-blocks N] [--port 8080] [--dir STATE_DIR]
// (or MINGA_MODEL). Prints the page's URL as its only line on stdout; Ctrl-C stops everything.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: process.env.MINGA_MODEL },
    'num-blocks': { type: 'string' }, // layers per server (default: a third of the model's, rounded up)
    port: { type: 'string', default: '8080' },
    dir: { type: 'string', default: '.minga-swarm' } // the swarm key and the bootstrap node's identity
  }
})
if (args.model == null) throw new Error('give --model DIR (a Hugging Face Llama-family model directory), or MINGA_MODEL')
const model = resolve(args.model)
const state = resolve(args.dir)
mkdirSync(state, { recursive: true })
const swarmKey = join(state, 'swarm.key')
// The `minga` command of this workspace (the @minga/cli dependency's bin).
const MINGA = join(dirname(fileURLToPath(import.meta.url)), 'node_modules', '.bin', 'minga')

const children: ChildProcess[] = []

/** Runs `minga <args> --json` and resolves with the JSON line it prints once it is ready. */
async function start (label: string, minga: string[]): Promise<any> {
  const child = spawn(MINGA, [...minga, '--json'], { stdio: ['ignore', 'pipe', 'inherit'] }) // logs: on our stderr
  children.push(child)
  const [line] = await Promise.race([
    once(createInterface({ input: child.stdout! }), 'line'),
    once(child, 'exit').then(([code]) => { throw new Error(`${label} exited (${code}) before it was ready`) })
  ])
  return JSON.parse(line)
}

async function stopAll (): Promise<void> {
  // gateway first, bootstrap last; each node leaves gracefully on SIGTERM
  for (const child of children.reverse()) {
    if (child.exitCode == null && child.signalCode == null) {
      child.kill('SIGTERM')
      await once(child, 'exit')
    }
  }
}

try {
  // 1. the key: only nodes given this file can connect at all (a private swarm)
  if (!existsSync(swarmKey)) {
    const keygen = spawn(MINGA, ['keygen', '--swarm-key', swarmKey], { stdio: ['ignore', process.stderr, process.stderr] })
    const [code] = await once(keygen, 'exit')
    if (code !== 0) throw new Error('minga keygen failed')
  }
  const secret = ['--swarm-key', swarmKey]

  // 2. a bootstrap node with a stable identity, for the others to join through
  const bootstrap = await start('bootstrap', ['bootstrap', '--identity', join(state, 'bootstrap.key'), ...secret])
  const join_ = ['--bootstrap', bootstrap.addrs[0], ...secret]

  // 3. three servers, one after another: each sees the spans announced before it and takes the
  //    weakest layers. Without --num-blocks a server would hold the whole model.
  const layers: number = JSON.parse(readFileSync(join(model, 'config.json'), 'utf8')).num_hidden_layers
  const numBlocks = args['num-blocks'] ?? String(Math.ceil(layers / 3))
  for (const name of ['volunteer-1', 'volunteer-2', 'volunteer-3']) {
    const ready = await start(name, ['serve', '--model', model, '--blocks', 'auto', '--num-blocks', numBlocks, '--public-name', name, ...join_])
    console.error(`  ${name} holds layers [${ready.blocks[0]}, ${ready.blocks[1]})`)
  }

  // 4. the gateway: the chat page, the swarm map and the OpenAI-compatible API
  const gateway = await start('gateway', ['api', '--model', model, '--port', args.port, ...join_])
  console.log(`open ${gateway.url} (the chat and the swarm map; the OpenAI API is under ${new URL('v1', gateway.url)})`)

  await Promise.race([once(process, 'SIGINT'), once(process, 'SIGTERM'), ...children.map(async c => await once(c, 'exit'))])
} finally {
  await stopAll()
}
