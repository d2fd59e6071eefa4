// `minga chat`: an interactive conversation in the terminal. Each line is a user message; the answer
// streams as it is generated and the conversation is kept. Ctrl-C stops the current answer (what was
// said so far stays in the conversation), Ctrl-D quits. Without a terminal, every line of stdin is
// a message and only the answers are printed, one after another.
import { createInterface } from 'node:readline'
import type { Command } from 'commander'
import type { ChatMessage } from '@minga/engine'
import type { SwarmGenerateOptions } from '@minga/client'
import type { CliIo } from '../index.ts'
import { addModelOptions, chatEncoder, generateOptions, modelDirOf, openModel, type ModelFlags } from '../model.ts'
import { summary } from './generate.ts'

interface ChatFlags extends ModelFlags {
  system?: string
}

export function registerChat (program: Command, io: CliIo): void {
  const command = program.command('chat')
    .description('chat with the model in the terminal (Ctrl-C stops an answer, Ctrl-D quits)')
    .option('--model <dir>', 'Hugging Face model directory with a chat template in tokenizer_config.json')
    .option('--model-id <id>', 'with --bootstrap, instead of --model: fetch only what the client runs from the swarm')
  addModelOptions(command)
    .option('--system <text>', 'a system message that starts the conversation')
    .action(async (flags: ChatFlags) => { await chat(flags, io) })
}

async function chat (flags: ChatFlags, io: CliIo): Promise<void> {
  const early = flags.model != null ? chatEncoder(flags.model) : undefined // a model without a template fails before loading
  const model = await openModel(flags, message => { io.stderr.write(`minga: ${message}\n`) })
  let encodeChat: ReturnType<typeof chatEncoder>
  try {
    encodeChat = early ?? chatEncoder(modelDirOf(flags, model))
  } catch (err) {
    await model.close()
    throw err
  }
  const input = io.stdin ?? process.stdin
  const terminal = (input as NodeJS.ReadStream).isTTY === true && (io.stdout as NodeJS.WriteStream).isTTY === true
  const lines = createInterface({ input, output: terminal ? io.stdout : undefined, terminal })
  const messages: ChatMessage[] = flags.system != null ? [{ role: 'system', content: flags.system }] : []
  let answering: AbortController | undefined
  lines.on('SIGINT', () => {
    if (answering != null) answering.abort()
    else {
      io.stdout.write('\n(Ctrl-D quits)\n')
      lines.prompt()
    }
  })
  if (terminal) {
    io.stderr.write('minga chat: type a message and press Enter; Ctrl-C stops an answer, Ctrl-D quits\n')
    lines.setPrompt('> ')
    lines.prompt()
  }
  try {
    for await (const line of lines) {
      if (line.trim() === '') {
        if (terminal) lines.prompt()
        continue
      }
      messages.push({ role: 'user', content: line })
      answering = new AbortController()
      const options: SwarmGenerateOptions = { ...generateOptions(flags), signal: answering.signal }
      let answer = ''
      try {
        const stream = model.generate(encodeChat(model.tokenizer, messages), options)
        let step = await stream.next()
        while (step.done !== true) {
          io.stdout.write(step.value.text)
          answer += step.value.text
          if (answering.signal.aborted) { await stream.return(undefined as never); break }
          step = await stream.next()
        }
        io.stdout.write('\n')
        io.stderr.write(step.done === true ? `minga chat: ${summary(step.value)}\n` : 'minga chat: (stopped)\n')
      } catch (err) {
        if (!answering.signal.aborted) throw err
        io.stdout.write('\n')
        io.stderr.write('minga chat: (stopped)\n')
      }
      messages.push({ role: 'assistant', content: answer })
      answering = undefined
      if (terminal) lines.prompt()
    }
  } finally {
    lines.close()
    await model.close()
  }
}
