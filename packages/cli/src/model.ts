// The model a command generates with: on this machine, or through a swarm with --bootstrap. Shared
// by `generate` and `chat`, with the flags that choose it.
import { InvalidArgumentError, type Command } from 'commander'
import type { MingaClient } from '@minga/client'
import { createLocalModel, DEFAULT_HEAD_QUANT, DEFAULT_QUANT, loadChatTemplate, type ChatMessage, type Quantization, type GenerateOptions, type LocalModel } from '@minga/engine'
import { addSamplingOptions, existingModelDir, integer, modelChoice, number, quantization, swarmKeyOption, userPath } from './options.ts'

export interface ModelFlags {
  model?: string
  /** With --bootstrap, instead of --model: the client fetches what it runs from the swarm. */
  modelId?: string
  maxNewTokens: number
  temperature: number
  topK: number
  topP: number
  seed?: number
  repetitionPenalty: number
  presencePenalty: number
  frequencyPenalty: number
  stop: string[]
  quant: Quantization
  headQuant: Quantization
  spans?: Array<[number, number]>
  threads?: number
  bootstrap?: string[]
  swarmKey?: string
  identity?: string
  verifyProbability: number
  wire: 'f16' | 'f32' | 'q8'
  chains?: boolean
}

export function addModelOptions (command: Command): Command {
  return addSamplingOptions(command)
    .option('--quant <q>', 'weights of the spans\' linear layers: none (f32), int8 or int4', quantization, DEFAULT_QUANT)
    .option('--head-quant <q>', 'weights of the LM head this machine runs: none (f32), int8 or int4', quantization, DEFAULT_HEAD_QUANT)
    .option('--spans <list>', 'run the layers as chained spans, e.g. 0:2,2:5 (default: one span)', parseSpans)
    .option('--threads <n>', 'onnxruntime threads per span (default: all cores)', integer(1))
    .option('--bootstrap <multiaddr...>', 'generate through the swarm these nodes belong to (its servers can read the prompt: use a private swarm for sensitive text)')
    .option('--swarm-key <file>', 'with --bootstrap: the swarm\'s key, if it is private')
    .option('--identity <file>', 'with --bootstrap: keep this client\'s peer id in a key file, e.g. for servers\' --allow')
    .option('--verify-probability <r>', 'with --bootstrap: check each step on a second server with this probability', number(0, 1), 0)
    .option('--wire <dtype>', 'with --bootstrap: hidden states on the wire: f16, f32 or q8 (8-bit blocks)', wire, 'f32')
    .option('--chains', 'with --bootstrap: let servers forward each step along the route instead of this client relaying every hop')
}

export function generateOptions (flags: ModelFlags): GenerateOptions {
  return {
    maxNewTokens: flags.maxNewTokens,
    temperature: flags.temperature,
    topK: flags.topK,
    topP: flags.topP,
    seed: flags.seed,
    repetitionPenalty: flags.repetitionPenalty,
    presencePenalty: flags.presencePenalty,
    frequencyPenalty: flags.frequencyPenalty,
    stop: flags.stop
  }
}

/** The model the flags choose; `log` gets the progress of fetching it (with --model-id). */
export async function openModel (flags: ModelFlags, log: (message: string) => void): Promise<LocalModel | MingaClient> {
  const choice = await modelChoice(flags)
  if (flags.bootstrap != null && flags.bootstrap.length > 0) {
    // the swarm client (libp2p) is loaded only for a swarm run, not for a local one
    const [{ createClient }, { loadOrCreateIdentity }] = await Promise.all([import('@minga/client'), import('@minga/p2p')])
    return await createClient({
      ...choice,
      fetch: { log },
      headQuant: flags.headQuant,
      bootstrap: flags.bootstrap,
      threads: flags.threads,
      swarmKey: await swarmKeyOption(flags.swarmKey),
      verifyProbability: flags.verifyProbability,
      wireDtype: flags.wire,
      chains: flags.chains,
      privateKey: flags.identity != null ? await loadOrCreateIdentity(userPath(flags.identity)) : undefined
    })
  }
  return await createLocalModel({ modelDir: choice.modelDir!, quant: flags.quant, headQuant: flags.headQuant, spans: flags.spans, threads: flags.threads })
}

/**
 * Turns a conversation into prompt ids through the model's chat template (tokenized without a
 * second BOS). With --model it is loaded before the model, so a model without a template fails at
 * once; with --model-id, from the files the client fetched.
 */
export function chatEncoder (modelDir: string): (tokenizer: LocalModel['tokenizer'], messages: ChatMessage[]) => number[] {
  const template = loadChatTemplate(existingModelDir(modelDir))
  return (tokenizer, messages) => tokenizer.encode(template.render(messages), { addSpecialTokens: false })
}

/** The directory a model was opened from: --model's, or the client's store of fetched files. */
export function modelDirOf (flags: ModelFlags, model: LocalModel | MingaClient): string {
  return flags.model ?? (model as MingaClient).modelDir
}

const WIRES = ['f16', 'f32', 'q8']

function wire (value: string): ModelFlags['wire'] {
  if (!WIRES.includes(value)) throw new InvalidArgumentError(`must be one of ${WIRES.join(', ')}, got "${value}"`)
  return value as ModelFlags['wire']
}

function parseSpans (value: string): Array<[number, number]> {
  return value.split(',').map(part => {
    const match = /^(\d+):(\d+)$/.exec(part.trim())
    if (match == null || Number(match[1]) >= Number(match[2])) throw new InvalidArgumentError('expected START:END pairs separated by commas, e.g. 0:2,2:5.')
    return [Number(match[1]), Number(match[2])]
  })
}
