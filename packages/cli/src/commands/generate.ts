// `minga generate`: a prompt in, new text out, on this machine or, with --bootstrap, through a swarm.
// With --chat the prompt is one user message, through the model's chat template.
import type { Command } from 'commander'
import type { ChatMessage, GenerationResult } from '@minga/engine'
import type { SwarmGenerationResult } from '@minga/client'
import type { CliIo } from '../index.ts'
import { addModelOptions, chatEncoder, generateOptions, modelDirOf, openModel, type ModelFlags } from '../model.ts'

interface GenerateFlags extends ModelFlags {
  prompt: string
  chat?: boolean
  system?: string
  json?: boolean
}

export function registerGenerate (program: Command, io: CliIo): void {
  const command = program.command('generate')
    .description('generate text from a prompt')
    .option('--model <dir>', 'Hugging Face model directory (config.json, model.safetensors, tokenizer.json)')
    .option('--model-id <id>', 'with --bootstrap, instead of --model: fetch only what the client runs from the swarm')
    .requiredOption('--prompt <text>', 'the prompt')
  addModelOptions(command)
    .option('--chat', 'the prompt is a user message, sent through the model\'s chat template')
    .option('--system <text>', 'with --chat: a system message before it')
    .option('--json', 'print one JSON object with ids, text and timings instead of streaming text')
    .action(async (flags: GenerateFlags) => { await generate(flags, io) })
}

async function generate (flags: GenerateFlags, io: CliIo): Promise<void> {
  let encodeChat = flags.chat === true && flags.model != null ? chatEncoder(flags.model) : undefined
  if (flags.system != null && flags.chat !== true) throw new Error('--system needs --chat')
  const model = await openModel(flags, message => { io.stderr.write(`minga: ${message}\n`) })
  let result: GenerationResult & { route?: SwarmGenerationResult['route'] }
  try {
    if (flags.chat === true) encodeChat ??= chatEncoder(modelDirOf(flags, model))
    const messages: ChatMessage[] = [...(flags.system != null ? [{ role: 'system', content: flags.system }] : []), { role: 'user', content: flags.prompt }]
    const stream = model.generate(encodeChat != null ? encodeChat(model.tokenizer, messages) : flags.prompt, generateOptions(flags))
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
    io.stderr.write(`minga: ${summary(result)}\n`)
  }
}

export function summary (result: GenerationResult): string {
  return `${result.ids.length} tokens (${result.stopReason}), prefill ${result.prefillMs.toFixed(1)} ms, ${result.tokensPerSecond.toFixed(1)} tokens/s`
}
