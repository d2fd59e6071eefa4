// The real trained model: the engine must reproduce llama2.c's greedy output exactly, however the
// layers are split into spans, and sampling must be reproducible from a seed. llama2.c runs in f32,
// so these runs use f32 layers and an f32 head (head-quant.spec.ts covers the default int8 head).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLocalModel, generateTokens, planGeneration, type GenerateOptions, type GenerationResult, type LocalModel } from '../src/index.ts'
import { STORIES, STORIES_F32, STORIES_PROMPT, STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS } from './helpers.ts'

async function run (model: LocalModel, prompt: string, options: GenerateOptions): Promise<GenerationResult & { streamed: string }> {
  const stream = model.generate(prompt, options)
  let streamed = ''
  for (let step = await stream.next(); ; step = await stream.next()) {
    if (step.done === true) return { ...step.value, streamed }
    streamed += step.value.text
  }
}

describe('stories260k', () => {
  let whole: LocalModel
  beforeAll(async () => { whole = await createLocalModel({ modelDir: STORIES, ...STORIES_F32 }) })
  afterAll(async () => { await whole?.close() })

  it('reproduces the reference greedy continuation', async () => {
    const result = await run(whole, STORIES_PROMPT, { maxNewTokens: 40, temperature: 0 })
    expect(result.promptIds).toEqual(STORIES_PROMPT_IDS)
    expect(result.ids).toEqual(STORIES_REFERENCE_IDS)
    expect(result.text.startsWith(', there was a little girl named Lily. She loved to play outside in the park.')).toBe(true)
    expect(result.streamed).toBe(result.text)
  })

  it.each([
    { name: '[0,2)+[2,5)', spans: [[0, 2], [2, 5]] as Array<[number, number]> },
    { name: 'one span per layer', spans: [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]] as Array<[number, number]> }
  ])('gives the same ids as chained spans $name', async ({ spans }) => {
    const chained = await createLocalModel({ modelDir: STORIES, ...STORIES_F32, spans })
    try {
      for (const prompt of [STORIES_PROMPT, 'Tom and his dog went to the', 'The sun']) {
        const expected = await run(whole, prompt, { maxNewTokens: 30 })
        const actual = await run(chained, prompt, { maxNewTokens: 30 })
        expect(actual.ids).toEqual(expected.ids)
      }
    } finally {
      await chained.close()
    }
  })

  it('prefills in chunks with the same result as one prefill', async () => {
    const prompt = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park.'
    const one = await run(whole, prompt, { maxNewTokens: 20 })
    const chunked = await run(whole, prompt, { maxNewTokens: 20, prefillChunkSize: 3 })
    expect(chunked.ids).toEqual(one.ids)
  })

  it('samples reproducibly: same seed, same output', async () => {
    const options = { maxNewTokens: 40, temperature: 0.9, topK: 40, topP: 0.95, seed: 1234 }
    const a = await run(whole, STORIES_PROMPT, options)
    const b = await run(whole, STORIES_PROMPT, options)
    const other = await run(whole, STORIES_PROMPT, { ...options, seed: 99 })
    expect(b.ids).toEqual(a.ids)
    expect(other.ids).not.toEqual(a.ids)
  })

  it('stops at a stop string without returning it', async () => {
    const result = await run(whole, STORIES_PROMPT, { maxNewTokens: 40, stop: ['Lily'] })
    expect(result.stopReason).toBe('stop')
    expect(result.text).toBe(', there was a little girl named ')
    expect(result.streamed).toBe(result.text)
  })

  it('stops at max new tokens and at EOS', async () => {
    const short = await run(whole, STORIES_PROMPT, { maxNewTokens: 3 })
    expect(short.ids).toEqual(STORIES_REFERENCE_IDS.slice(0, 3))
    expect(short.stopReason).toBe('length')
    // Greedy stories260k never emits </s> early, so name the 6th reference token as the EOS id.
    const eos = STORIES_REFERENCE_IDS[5]
    const plan = planGeneration(STORIES_PROMPT_IDS, { maxNewTokens: 40 }, 512)
    const chain = await whole.openChain(plan.sessionLength)
    const stream = generateTokens(whole.head, chain, whole.tokenizer, [eos], plan)
    let step = await stream.next()
    while (step.done !== true) step = await stream.next()
    await chain.close()
    expect(step.value.stopReason).toBe('eos')
    expect(step.value.ids).toEqual(STORIES_REFERENCE_IDS.slice(0, 5))
  })

  it('applies a repetition penalty', async () => {
    const plain = await run(whole, STORIES_PROMPT, { maxNewTokens: 40 })
    const penalized = await run(whole, STORIES_PROMPT, { maxNewTokens: 40, repetitionPenalty: 1.5 })
    expect(penalized.ids).not.toEqual(plain.ids)
    expect(new Set(penalized.ids).size).toBeGreaterThan(new Set(plain.ids).size)
  })
})

describe('sub-spans', () => {
  it('a session can run part of a span: [0,3) of [0,5) then [3,5) of [2,5) equals the whole model', async () => {
    const { createClientHead, createSpanExecutor } = await import('../src/index.ts')
    const head = await createClientHead({ modelDir: STORIES, headQuant: 'none' })
    const first = await createSpanExecutor({ modelDir: STORIES, start: 0, end: 5, quant: 'none' })
    const second = await createSpanExecutor({ modelDir: STORIES, start: 2, end: 5, quant: 'none' })
    try {
      await first.openSession('s', 8, { start: 0, end: 3 })
      await second.openSession('s', 8, { start: 3, end: 5 })
      await first.openSession('whole', 8)
      const ids = STORIES_PROMPT_IDS
      const split = await second.forward('s', await first.forward('s', await head.embed(ids), { tokens: ids.length }), { tokens: ids.length })
      const whole = await first.forward('whole', await head.embed(ids), { tokens: ids.length })
      expect(Array.from(split)).toEqual(Array.from(whole))
      await expect(first.openSession('bad', 8, { start: 1, end: 7 })).rejects.toThrow('layers [1, 7) are not within this span [0, 5)')
    } finally {
      await Promise.all([head.close(), first.close(), second.close()])
    }
  })
})
