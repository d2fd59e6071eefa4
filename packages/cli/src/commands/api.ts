// `minga api`: an OpenAI-compatible HTTP gateway to the swarm (see @minga/gateway), until SIGINT/SIGTERM.
import type { Command } from 'commander'
import type { CliIo } from '../index.ts'
import { integer, modelChoice, swarmKeyOption, untilSignal } from '../options.ts'

interface ApiFlags {
  model?: string
  modelId?: string
  modelName?: string
  bootstrap: string[]
  host: string
  port: number
  apiKey?: string
  swarmKey?: string
  maxConcurrent: number
  defaultMaxTokens: number
  threads?: number
  json?: boolean
}

export function registerApi (program: Command, io: CliIo): void {
  program.command('api')
    .description('serve an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models) over the swarm')
    .option('--model <dir>', 'Hugging Face model directory (the gateway runs its tokenizer, embeddings and head)')
    .option('--model-id <id>', 'instead of --model: fetch only what the gateway runs from the swarm')
    .requiredOption('--bootstrap <multiaddr...>', 'any nodes of the swarm')
    .option('--model-name <name>', 'the model id clients use (default: the directory\'s name)')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port to listen on (0: any free port)', integer(0, 65535), 8080)
    .option('--api-key <key>', 'require "Authorization: Bearer KEY" on the OpenAI endpoints')
    .option('--swarm-key <file>', 'the swarm\'s key, if it is private')
    .option('--max-concurrent <n>', 'generation requests at once; more get 429', integer(1), 16)
    .option('--default-max-tokens <n>', 'new tokens for a chat request without max_tokens (capped by the context)', integer(1), 1024)
    .option('--threads <n>', 'onnxruntime threads for the head (default: all cores)', integer(1))
    .option('--json', 'print one JSON line {"url"} when listening; logs go to stderr')
    .action(async (flags: ApiFlags) => { await api(flags, io) })
}

async function api (flags: ApiFlags, io: CliIo): Promise<void> {
  const log = (message: string): void => { io.stderr.write(`minga api: ${message}\n`) }
  // Loaded here, so the other commands do not pay for the gateway's modules.
  const { createGateway } = await import('@minga/gateway')
  const gateway = await createGateway({
    ...(await modelChoice(flags)),
    modelName: flags.modelName,
    bootstrap: flags.bootstrap,
    host: flags.host,
    port: flags.port,
    apiKey: flags.apiKey,
    swarmKey: await swarmKeyOption(flags.swarmKey),
    maxConcurrent: flags.maxConcurrent,
    defaultMaxTokens: flags.defaultMaxTokens,
    client: { threads: flags.threads, fetch: { log } },
    log
  })
  if (flags.json === true) io.stdout.write(JSON.stringify({ url: gateway.url }) + '\n')
  else io.stdout.write(`OpenAI-compatible API at ${gateway.url}/v1 (model "${gateway.modelName}")\n`)
  const signal = await untilSignal()
  log(`${signal}: stopping`)
  await gateway.close()
}
