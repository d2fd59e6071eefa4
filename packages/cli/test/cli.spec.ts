// The `minga generate` contract, run as a real process the way other tools call it.
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { STORIES, STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS, tempDir } from '../../engine/test/helpers.ts'
import { runMinga } from '../src/processes.ts'


describe('minga generate', () => {
  it('--json prints exactly one object with the reference ids (f32 layers and head, like llama2.c)', async () => {
    const { code, stdout } = await runMinga('generate', '--model', STORIES, '--prompt', 'Once upon a time', '--max-new-tokens', '40', '--temperature', '0', '--quant', 'none', '--head-quant', 'none', '--json')
    expect(code).toBe(0)
    expect(stdout.trim().split('\n')).toHaveLength(1)
    const result = JSON.parse(stdout)
    expect(Object.keys(result).sort()).toEqual(['ids', 'prefillMs', 'promptIds', 'text', 'tokensPerSecond'])
    expect(result.promptIds).toEqual(STORIES_PROMPT_IDS)
    expect(result.ids).toEqual(STORIES_REFERENCE_IDS)
    expect(result.text).toMatch(/^, there was a little girl named Lily\./)
    expect(result.tokensPerSecond).toBeGreaterThan(0)
    expect(result.prefillMs).toBeGreaterThan(0)
  })

  it('streams text to stdout and diagnostics to stderr', async () => {
    const { code, stdout, stderr } = await runMinga('generate', '--model', STORIES, '--prompt', 'Once upon a time', '--max-new-tokens', '20', '--quant', 'none')
    expect(code).toBe(0)
    expect(stdout).toMatch(/^, there was a little girl named Lily\./)
    expect(stderr).toMatch(/20 tokens \(length\), prefill [\d.]+ ms, [\d.]+ tokens\/s/)
  })

  it.each(['int8', 'int4'])('runs with --quant %s --head-quant %s', async (quant) => {
    const { code, stdout } = await runMinga('generate', '--model', STORIES, '--prompt', 'Once upon a time', '--max-new-tokens', '10', '--quant', quant, '--head-quant', quant, '--json')
    expect(code).toBe(0)
    expect(JSON.parse(stdout).ids).toHaveLength(10)
  })

  describe('errors: non-zero exit and one line naming the problem', () => {
    const dir = tempDir('cli')
    afterAll(() => { dir.remove() })
    const empty = join(dir.path, 'empty')
    const gpt2 = join(dir.path, 'gpt2')
    mkdirSync(empty)
    mkdirSync(gpt2)
    writeFileSync(join(gpt2, 'config.json'), JSON.stringify({ model_type: 'gpt2' }))

    it.each([
      { why: 'missing directory', args: ['--model', join(dir.path, 'missing')], message: /model directory .*missing does not exist/ },
      { why: 'missing config.json', args: ['--model', empty], message: /missing file .*empty\/config\.json/ },
      { why: 'unsupported model_type', args: ['--model', gpt2], message: /unsupported model_type "gpt2"/ },
      { why: 'prompt longer than the context', args: ['--model', STORIES, '--prompt', 'the '.repeat(600)], message: /longer than the model's context of 512 tokens/ },
      { why: 'bad --top-p', args: ['--model', STORIES, '--top-p', '2'], message: /'--top-p <p>' argument '2' is invalid/ },
      { why: 'bad --temperature', args: ['--model', STORIES, '--temperature', '-1'], message: /'--temperature <t>' argument '-1' is invalid/ },
      { why: 'bad --max-new-tokens', args: ['--model', STORIES, '--max-new-tokens', '0'], message: /'--max-new-tokens <n>' argument '0' is invalid/ },
      { why: 'bad --quant', args: ['--model', STORIES, '--quant', 'int3'], message: /'--quant <q>' argument 'int3' is invalid. expected one of none, int8, int4/ },
      { why: 'bad --head-quant', args: ['--model', STORIES, '--head-quant', 'f16'], message: /'--head-quant <q>' argument 'f16' is invalid. expected one of none, int8, int4/ },
      { why: 'bad --seed', args: ['--model', STORIES, '--seed', 'x'], message: /'--seed <s>' argument 'x' is invalid/ },
      { why: 'unknown flag', args: ['--model', STORIES, '--tempreature', '1'], message: /unknown option '--tempreature'/ }
    ])('$why', async ({ args, message }) => {
      const withPrompt = args.includes('--prompt') ? args : [...args, '--prompt', 'Hi']
      const { code, stdout, stderr } = await runMinga('generate', ...withPrompt)
      expect(code).not.toBe(0)
      expect(stdout).toBe('')
      const lines = stderr.trim().split('\n')
      expect(lines[0]).toMatch(message)
      // commander may add a "Did you mean" hint; our own errors are one line.
      expect(lines.length).toBeLessThanOrEqual(2)
    })
  })
})

describe('minga prepare', () => {
  const cache = tempDir('cli-prepare')
  afterAll(() => { cache.remove() })

  it('prepares a span once, one progress line per layer when stderr is not a terminal; then finds it prepared', async () => {
    const args = ['prepare', '--model', STORIES, '--blocks', '1:4', '--quant', 'int4', '--cache-dir', cache.path, '--json']
    const first = await runMinga(...args)
    expect(first.code).toBe(0)
    expect(JSON.parse(first.stdout)).toMatchObject({ layers: [1, 4], built: [1, 2, 3], bytes: expect.any(Number) })
    expect(first.stderr.trim().split('\n')).toEqual([1, 2, 3].map((layer, i) => expect.stringMatching(new RegExp(`^minga prepare: prepared layer ${layer} \\(${i + 1}/3, [\\d.]+ s\\)$`))))
    const again = await runMinga(...args)
    expect(JSON.parse(again.stdout)).toMatchObject({ built: [], bytes: JSON.parse(first.stdout).bytes })
    expect(again.stderr).toBe('')
  })

  it('rejects --blocks auto', async () => {
    const { code, stderr } = await runMinga('prepare', '--model', STORIES, '--blocks', 'auto')
    expect(code).toBe(2)
    expect(stderr).toMatch(/auto is for serve; prepare needs START:END/)
  })
})

describe('minga serve', () => {
  it('rejects a --batch-wait over 1000 ms before loading anything', async () => {
    const { code, stderr } = await runMinga('serve', '--model', STORIES, '--blocks', '0:5', '--batch-wait', '5000')
    expect(code).not.toBe(0)
    expect(stderr).toMatch(/'--batch-wait <ms>' argument '5000' is invalid/)
  })
})
