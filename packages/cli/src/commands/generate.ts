// `minga generate`: a prompt in, new text out, on this machine or, with --bootstrap, through a swarm.
import { InvalidArgumentError, type Command } from 'commander'
import { createLocalModel, type GenerateOptions, type GenerationResult } from '@minga/engine'
import { createClient, type SwarmGenerationResult } from '@minga/client'
import { loadOrCreateIdentity } from '@minga/p2p'
import type { CliIo } from '../index.ts'
import { addSamplingOptions, existingModelDir, integer, number, quantization, swarmKeyOption, userPath } from '../options.ts'

interface GenerateFlags {
  model: string
  prompt: string
  maxNewTokens: number
  temperature: number
  topK: number
  topP: number
  seed?: number
  repetitionPenalty: number
  stop: string[]
  quant: 'none' | 'int8' | 'int4'
  spans?: Array<[number, number]>
  threads?: number
  bootstrap?: string[]
  swarmKey?: string
  identity?: string
  verifyProbability: number
  wire: 'f16' | 'f32' | 'q8'
  chains: boolean
  json?: boolean
}

const WIRES = ['f16', 'f32', 'q8']

function wire (value: string): GenerateFlags['wire'] {
  if (!WIRES.includes(value)) throw new InvalidArgumentError(`must be one of ${WIRES.join(', ')}, got "${value}"`)
  return value as GenerateFlags['wire']
}

export function registerGenerate (program: Command, io: CliIo): void {
  const command = program.command('generate')
    .description('generate text from a prompt')
    .requiredOption('--model <dir>', 'Hugging Face model directory (config.json, model.safetensors, tokenizer.json)')
    .requiredOption('--prompt <text>', 'the prompt')
  addSamplingOptions(command)
    .option('--quant <q>', 'weights of the linear layers: none, int8 or int4', quantization, 'none')
    .option('--spans <list>', 'run the layers as chained spans, e.g. 0:2,2:5 (default: one span)', parseSpans)
    .option('--threads <n>', 'onnxruntime threads per span (default: all cores)', integer(1))
    .option('--bootstrap <multiaddr...>', 'generate through the swarm these nodes belong to (its servers can read the prompt: use a private swarm for sensitive text)')
    .option('--swarm-key <file>', 'with --bootstrap: the swarm\'s key, if it is private')
    .option('--identity <file>', 'with --bootstrap: keep this client\'s peer id in a key file, e.g. for servers\' --allow')
    .option('--verify-probability <r>', 'with --bootstrap: check each step on a second server with this probability', number(0, 1), 0)
    .option('--wire <dtype>', 'with --bootstrap: hidden states on the wire: f16, f32 or q8 (8-bit blocks)', wire, 'f16')
    .option('--no-chains', 'with --bootstrap: relay every hop from this client instead of letting servers forward steps')
    .option('--json', 'print one JSON object with ids, text and timings instead of streaming text')
    .action(async (flags: GenerateFlags) => { await generate(flags, io) })
}

async function generate (flags: GenerateFlags, io: CliIo): Promise<void> {
  const modelDir = existingModelDir(flags.model)
  const options: GenerateOptions = {
    maxNewTokens: flags.maxNewTokens,
    temperature: flags.temperature,
    topK: flags.topK,
    topP: flags.topP,
    seed: flags.seed,
    repetitionPenalty: flags.repetitionPenalty,
    stop: flags.stop
  }
  const swarm = flags.bootstrap != null && flags.bootstrap.length > 0
  const model = swarm
    ? await createClient({
      modelDir,
      bootstrap: flags.bootstrap!,
      threads: flags.threads,
      swarmKey: await swarmKeyOption(flags.swarmKey),
      verifyProbability: flags.verifyProbability,
      wireDtype: flags.wire,
      chains: flags.chains,
      privateKey: flags.identity != null ? await loadOrCreateIdentity(userPath(flags.identity)) : undefined
    })
    : await createLocalModel({ modelDir, quant: flags.quant, spans: flags.spans, threads: flags.threads })
  let result: GenerationResult & { route?: SwarmGenerationResult['route'] }
  try {
    const stream = model.generate(flags.prompt, options)
    let step = await stream.next()
    while (step.done !== true) {
      if (flags.json !== true) io.stdout.write(step.value.text)
      step = await stream.next()
    }
    result = step.value
  } finally {
    await model.close()
  }
  if (flags.json === true) {
    const { promptIds, ids, text, tokensPerSecond, prefillMs, route } = result
    io.stdout.write(JSON.stringify({ promptIds, ids, text, tokensPerSecond, prefillMs, ...(route != null ? { route } : {}) }) + '\n')
  } else {
    if (result.route != null) io.stderr.write(`minga: route ${result.route.map(h => `${h.peerId.slice(-8)}[${h.blocks[0]},${h.blocks[1]})`).join(' → ')}\n`)
    io.stdout.write('\n')
    io.stderr.write(`minga: ${result.ids.length} tokens (${result.stopReason}), prefill ${result.prefillMs.toFixed(1)} ms, ${result.tokensPerSecond.toFixed(1)} tokens/s\n`)
  }
}

function parseSpans (value: string): Array<[number, number]> {
  return value.split(',').map(part => {
    const match = /^(\d+):(\d+)$/.exec(part.trim())
    if (match == null || Number(match[1]) >= Number(match[2])) throw new InvalidArgumentError('expected START:END pairs separated by commas, e.g. 0:2,2:5.')
    return [Number(match[1]), Number(match[2])]
  })
}
