// A span split into several workers (consecutive layers each, sessions created at once on several
// cores): a worker of its own prepares the whole span first, a step goes through the parts in order, and
// every output, batch and error is what one worker gives.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { argmax, createClientHead, createSpanExecutor, InvalidArgumentError, UnknownSessionError, type ClientHead, type SpanExecutor } from '../src/index.ts'
import { STORIES, STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS, tempDir } from './helpers.ts'

/** Greedy ids of `prompt` through `route` (each span with the session it opened there). */
async function greedy (head: ClientHead, route: Array<{ span: SpanExecutor, sessionId: string }>, prompt: number[], newTokens: number): Promise<number[]> {
  const through = async (hidden: Float32Array, tokens: number, position: number): Promise<Float32Array> => {
    for (const { span, sessionId } of route) hidden = await span.forward(sessionId, hidden, { tokens, position })
    return hidden
  }
  const { hiddenSize } = head.config
  let hidden = await through(await head.embed(prompt), prompt.length, 0)
  const ids: number[] = []
  for (let step = 0; ; step++) {
    ids.push(argmax(await head.logits(hidden.subarray(hidden.length - hiddenSize), 1)))
    if (ids.length === newTokens) return ids
    hidden = await through(await head.embed([ids[ids.length - 1]]), 1, prompt.length + step)
  }
}

describe('a span in several workers', () => {
  const cache = tempDir('span-workers')
  let head: ClientHead
  let split: SpanExecutor
  const progress: number[] = []
  beforeAll(async () => {
    head = await createClientHead({ modelDir: STORIES, headQuant: 'none' })
    // parts [0, 2) and [2, 5); the empty cache folder makes it prepare all five layers first
    split = await createSpanExecutor({ modelDir: STORIES, cacheDir: cache.path, start: 0, end: 5, quant: 'none', workers: 2, onPrepareProgress: p => { progress.push(p.layer) } })
  })
  afterAll(async () => {
    await Promise.all([head?.close(), split?.close()])
    cache.remove()
  })

  it('prepares the whole span once, then loads it prepared', async () => {
    expect(progress).toEqual([0, 1, 2, 3, 4])
    expect(split.prepared.built).toEqual([0, 1, 2, 3, 4])
    const again = await createSpanExecutor({ modelDir: STORIES, cacheDir: cache.path, start: 0, end: 5, quant: 'none', workers: 3 })
    try {
      expect(again.prepared.built).toEqual([])
      expect(again.bytesRead).toBe(0)
      expect(again.preparedBytes).toBe(split.preparedBytes)
    } finally {
      await again.close()
    }
  })

  it('gives the stories260k reference ids (f32, greedy, 40 tokens)', async () => {
    await split.openSession('reference', STORIES_PROMPT_IDS.length + STORIES_REFERENCE_IDS.length)
    try {
      expect(await greedy(head, [{ span: split, sessionId: 'reference' }], STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS.length)).toEqual(STORIES_REFERENCE_IDS)
    } finally {
      await split.closeSession('reference')
    }
  })

  it('concurrent sessions, and a session over [1, 4) then [4, 5) across the parts, give what one worker gives', async () => {
    const one = await createSpanExecutor({ modelDir: STORIES, cacheDir: cache.path, start: 0, end: 5, quant: 'none', workers: 1 })
    try {
      const prompts = [STORIES_PROMPT_IDS, [1, 9, 33, 100], [1, 260, 261, 300, 301, 302, 303]]
      const alone: number[][] = []
      for (const [i, prompt] of prompts.entries()) {
        await one.openSession(`alone-${i}`, 32)
        alone.push(await greedy(head, [{ span: one, sessionId: `alone-${i}` }], prompt, 12))
      }
      await Promise.all(prompts.map(async (_, i) => await split.openSession(`together-${i}`, 32)))
      await split.openSession('first-part', 32, { start: 0, end: 1 })
      await split.openSession('across', 32, { start: 1, end: 4 })
      await split.openSession('last', 32, { start: 4, end: 5 })
      expect((await split.stats()).sessions).toBe(6)
      const [together, across] = await Promise.all([
        Promise.all(prompts.map(async (prompt, i) => await greedy(head, [{ span: split, sessionId: `together-${i}` }], prompt, 12))),
        greedy(head, [{ span: split, sessionId: 'first-part' }, { span: split, sessionId: 'across' }, { span: split, sessionId: 'last' }], prompts[1], 12)
      ])
      expect(together).toEqual(alone)
      expect(across).toEqual(alone[1])
      const stats = await split.stats()
      expect(stats.cacheTokens).toBeGreaterThan(0)
      for (const id of ['first-part', 'across', 'last', ...prompts.map((_, i) => `together-${i}`)]) await split.closeSession(id)
      const closed = await split.stats()
      expect(closed.sessions).toBe(0)
      expect(closed.cacheTokens).toBe(0)
      expect(closed.cacheBytes).toBe(0)
    } finally {
      await one.close()
    }
  })

  it('names what is wrong: an unknown session, a session opened twice, layers outside the span', async () => {
    await expect(split.forward('nobody', new Float32Array(64), { tokens: 1 })).rejects.toThrow(UnknownSessionError)
    await split.openSession('twice', 8)
    try {
      await expect(split.openSession('twice', 8)).rejects.toThrow(InvalidArgumentError)
    } finally {
      await split.closeSession('twice')
    }
    await expect(split.openSession('outside', 8, { start: 3, end: 6 })).rejects.toThrow(/layers \[3, 6\) are not within this span \[0, 5\)/)
    await expect(createSpanExecutor({ modelDir: STORIES, cacheDir: cache.path, start: 0, end: 5, quant: 'none', workers: 0 })).rejects.toThrow(/workers 0/)
    expect((await split.stats()).sessions).toBe(0)
  })
})
