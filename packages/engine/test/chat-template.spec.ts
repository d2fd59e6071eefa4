// Chat templates: the real templates of four model families, rendered as transformers renders them.
import { readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { loadChatTemplate, loadModelConfig, loadTokenizer, parseChatTemplate, type ChatMessage } from '../src/index.ts'
import { STORIES, storiesWithChatTemplate, tempDir } from './helpers.ts'

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), 'fixtures/chat-templates')
const fixture = (name: string): Record<string, unknown> => JSON.parse(readFileSync(join(FIXTURES, `${name}.tokenizer_config.json`), 'utf8'))

const WITH_SYSTEM: ChatMessage[] = [
  { role: 'system', content: 'You are a helpful assistant.' },
  { role: 'user', content: 'Hello!' }
]
const MULTI_TURN: ChatMessage[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'What is 2+2?' },
  { role: 'assistant', content: '4.' },
  { role: 'user', content: 'And 3+3?' }
]

describe('real chat templates', () => {
  it.each([
    {
      name: 'llama3',
      system: '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
      multi: '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
    },
    {
      name: 'qwen2',
      system: '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n',
      multi: '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n'
    },
    {
      name: 'mistral',
      system: '<s> [INST] You are a helpful assistant.\n\nHello! [/INST]',
      multi: '<s> [INST] Be brief.\n\nWhat is 2+2? [/INST] 4.</s> [INST] And 3+3? [/INST]'
    },
    {
      name: 'tinyllama',
      system: '<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nHello!</s>\n<|assistant|>\n',
      multi: '<|system|>\nBe brief.</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n4.</s>\n<|user|>\nAnd 3+3?</s>\n<|assistant|>\n'
    }
  ])('$name: a system message, and a multi-turn conversation', ({ name, system, multi }) => {
    const template = parseChatTemplate(fixture(name), name)
    expect(template.render(WITH_SYSTEM)).toBe(system)
    expect(template.render(MULTI_TURN)).toBe(multi)
  })

  it('qwen2 adds its default system message; add_generation_prompt false leaves the assistant header out', () => {
    const template = parseChatTemplate(fixture('qwen2'))
    expect(template.render([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: false }))
      .toBe('<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n')
  })

  it('raise_exception in a template is a clear error (mistral: roles must alternate)', () => {
    const template = parseChatTemplate(fixture('mistral'))
    expect(() => template.render([{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }])).toThrow(/refused the conversation or failed to render: .*roles must alternate/)
  })

  it('a list of named templates uses "default"; special tokens may be added-token objects', () => {
    const template = parseChatTemplate({
      bos_token: { __type: 'AddedToken', content: '<B>' },
      chat_template: [{ name: 'tool_use', template: 'tools' }, { name: 'default', template: '{{ bos_token }}{{ messages[0].content }}' }]
    })
    expect(template.render([{ role: 'user', content: 'x' }])).toBe('<B>x')
  })
})

describe('loadChatTemplate', () => {
  const model = storiesWithChatTemplate()
  const broken = tempDir('broken-template')
  afterAll(() => { model.remove(); broken.remove() })

  it('a model without a template gets NoChatTemplateError', () => {
    expect(() => loadChatTemplate(STORIES)).toThrow(expect.objectContaining({ name: 'NoChatTemplateError', message: expect.stringMatching(/has no chat template/) }))
  })

  it('a template that does not parse names the model', () => {
    writeFileSync(join(broken.path, 'tokenizer_config.json'), JSON.stringify({ chat_template: '{% for %}' }))
    expect(() => loadChatTemplate(broken.path)).toThrow(/chat template of .*broken-template.* does not parse/)
  })

  it('the rendered text, tokenized without special tokens, has one BOS', () => {
    const template = loadChatTemplate(model.path)
    const text = template.render([{ role: 'user', content: 'Tell me a story.' }])
    expect(text).toBe('<s>user: Tell me a story.\nassistant:')
    const tokenizer = loadTokenizer(model.path, loadModelConfig(model.path))
    const ids = tokenizer.encode(text, { addSpecialTokens: false })
    expect(ids[0]).toBe(1)
    expect(ids[1]).not.toBe(1)
    expect(ids.filter(id => id === 1)).toHaveLength(1)
  })
})
