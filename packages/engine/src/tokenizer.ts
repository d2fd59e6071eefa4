// The model's own tokenizer (tokenizer.json + tokenizer_config.json) and streaming detokenization.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Tokenizer } from '@huggingface/tokenizers'
import type { ModelConfig } from './config.ts'
import { ModelLoadError } from './errors.ts'

export interface TextTokenizer {
  /**
   * Token ids of a prompt, with BOS when the model's tokenizer config asks for it.
   * `addSpecialTokens: false` adds none: for text that has them already (a rendered chat template).
   */
  encode (text: string, options?: { addSpecialTokens?: boolean }): number[]
  decode (ids: number[]): string
  /** Turns generated ids into text pieces as soon as they form whole characters. */
  createTextStream (promptIds: number[]): TextStream
}

export interface TextStream {
  /** Adds one generated id; returns the text it completes ('' while a character is still partial). */
  push (id: number): string
}

export function loadTokenizer (modelDir: string, config: ModelConfig): TextTokenizer {
  const tokenizerJson = readJson(join(modelDir, 'tokenizer.json'))
  const tokenizerConfig = readJson(join(modelDir, 'tokenizer_config.json'))
  const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig)
  const bos = config.bosTokenId
  const addBos: unknown = tokenizerConfig.add_bos_token
  const decode = (ids: number[]): string => tokenizer.decode(ids, { skip_special_tokens: true })

  return {
    encode (text, options = {}) {
      if (options.addSpecialTokens === false) return tokenizer.encode(text, { add_special_tokens: false }).ids
      const ids = tokenizer.encode(text).ids
      // tokenizer_config's add_bos_token overrides the post-processor, as in transformers.
      if (bos != null && addBos === true && ids[0] !== bos) ids.unshift(bos)
      if (bos != null && addBos === false && ids[0] === bos) ids.shift()
      return ids
    },
    decode,
    createTextStream (promptIds) {
      // Decode a short window that starts inside the prompt, so tokenizers that drop a leading space
      // on the first token (SentencePiece) still give the right text for the new tokens.
      const ids = promptIds.slice(-4)
      let prefixOffset = 0
      let readOffset = ids.length
      return {
        push (id) {
          ids.push(id)
          const prefix = decode(ids.slice(prefixOffset, readOffset))
          const text = decode(ids.slice(prefixOffset))
          if (text.length <= prefix.length || text.endsWith('\uFFFD')) return ''
          prefixOffset = readOffset
          readOffset = ids.length
          return text.slice(prefix.length)
        }
      }
    }
  }
}

function readJson (path: string): Record<string, any> {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err: any) {
    throw new ModelLoadError(err.code === 'ENOENT' ? `missing file ${path}` : `cannot read ${path}: ${err.message}`)
  }
  try {
    return JSON.parse(text)
  } catch (err: any) {
    throw new ModelLoadError(`${path} is not valid JSON: ${err.message}`)
  }
}
