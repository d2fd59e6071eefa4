// The model's chat template (tokenizer_config.json's `chat_template`, or chat_template.jinja beside
// it), rendered with @huggingface/jinja the way transformers' apply_chat_template does.
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Template } from '@huggingface/jinja'
import { InvalidArgumentError, ModelLoadError, NoChatTemplateError } from './errors.ts'

export interface ChatMessage {
  role: string
  content: string
}

export interface ChatRenderOptions {
  /** End with the header of an assistant turn, so the model answers (default true). */
  addGenerationPrompt?: boolean
}

export interface ChatTemplate {
  /** The template's source text. */
  readonly source: string
  /** The prompt text for a conversation. Tokenize it without adding special tokens: it has them. */
  render (messages: ChatMessage[], options?: ChatRenderOptions): string
}

/** The chat template of a model directory; NoChatTemplateError when it has none. */
export function loadChatTemplate (modelDir: string): ChatTemplate {
  const configPath = join(modelDir, 'tokenizer_config.json')
  let tokenizerConfig: Record<string, unknown> = {}
  try {
    tokenizerConfig = JSON.parse(readFileSync(configPath, 'utf8'))
  } catch (err: any) {
    if (err.code !== 'ENOENT') throw new ModelLoadError(`cannot read ${configPath}: ${err.message}`)
  }
  // Newer checkpoints keep the template in its own file; it wins, as in transformers.
  const jinjaPath = join(modelDir, 'chat_template.jinja')
  if (existsSync(jinjaPath)) tokenizerConfig = { ...tokenizerConfig, chat_template: readFileSync(jinjaPath, 'utf8') }
  return parseChatTemplate(tokenizerConfig, modelDir)
}

/** The chat template of a parsed tokenizer_config.json; `where` names the model in errors. */
export function parseChatTemplate (tokenizerConfig: Record<string, unknown>, where = 'the model'): ChatTemplate {
  const source = pickTemplate(tokenizerConfig.chat_template, where)
  let template: Template
  try {
    template = new Template(source)
  } catch (err: any) {
    throw new ModelLoadError(`the chat template of ${where} does not parse: ${err.message}`)
  }
  const specials = {
    bos_token: tokenText(tokenizerConfig.bos_token),
    eos_token: tokenText(tokenizerConfig.eos_token),
    unk_token: tokenText(tokenizerConfig.unk_token),
    pad_token: tokenText(tokenizerConfig.pad_token)
  }
  return {
    source,
    render (messages, options = {}) {
      checkMessages(messages)
      try {
        return template.render({
          ...specials,
          messages,
          add_generation_prompt: options.addGenerationPrompt ?? true,
        })
      } catch (err: any) {
        // @huggingface/jinja's raise_exception (a template refusing the conversation) throws a plain Error.
        throw new InvalidArgumentError(`the chat template of ${where} refused the conversation or failed to render: ${err?.message ?? err}`)
      }
    }
  }
}

/** A string, or a list of named templates (the one named "default", else the first). */
function pickTemplate (value: unknown, where: string): string {
  if (typeof value === 'string' && value !== '') return value
  if (Array.isArray(value)) {
    const named = value.filter((t): t is { name: string, template: string } => typeof t?.template === 'string')
    const chosen = named.find(t => t.name === 'default') ?? named[0]
    if (chosen != null) return chosen.template
  }
  throw new NoChatTemplateError(`${where} has no chat template (no "chat_template" in tokenizer_config.json): chat needs one; raw completions still work`)
}

/** Special tokens are plain strings or added-token objects `{ content, … }`. */
function tokenText (value: unknown): string | undefined {
  if (typeof value === 'string') return value
  if (typeof (value as { content?: unknown } | null)?.content === 'string') return (value as { content: string }).content
  return undefined
}

function checkMessages (messages: ChatMessage[]): void {
  if (!Array.isArray(messages) || messages.length === 0) throw new InvalidArgumentError('a chat needs at least one message')
  messages.forEach((m, i) => {
    if (typeof m?.role !== 'string' || m.role === '') throw new InvalidArgumentError(`message ${i} has no role`)
    if (typeof m.content !== 'string') throw new InvalidArgumentError(`message ${i}'s content must be text`)
  })
}
