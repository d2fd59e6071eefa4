// `npm start`: the README's main job. Generates text from the default model on this machine.
import '@minga/p2p/polyfill'
import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { runCli } from '@minga/cli'

const root = resolve(import.meta.dirname, '..')
const model = process.env.MINGA_MODEL ?? join(root, '../shared/models/stories260k')
if (!existsSync(join(model, 'config.json'))) {
  process.stderr.write(`minga: no model at ${model}.\nPoint MINGA_MODEL at a Hugging Face Llama-family directory (config.json, model.safetensors, tokenizer.json).\n`)
  process.exit(1)
}
process.exitCode = await runCli([process.argv[0], 'minga', 'generate', '--model', model, '--prompt', process.env.MINGA_PROMPT ?? 'Once upon a time', '--max-new-tokens', '120'])
