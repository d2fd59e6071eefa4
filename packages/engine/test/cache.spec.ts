// Decoding through the KV cache must equal recomputing the whole sequence from scratch.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { argmax, createClientHead, createSpanExecutor, type ClientHead, type SpanExecutor } from '../src/index.ts'
import { forwardThrough, logitsOf, maxAbsDiff, STORIES, STORIES_PROMPT_IDS } from './helpers.ts'

let head: ClientHead
let spans: SpanExecutor[]
beforeAll(async () => {
  head = await createClientHead({ modelDir: STORIES, headQuant: 'none' })
  spans = [await createSpanExecutor({ modelDir: STORIES, start: 0, end: 3, quant: 'none' }), await createSpanExecutor({ modelDir: STORIES, start: 3, end: 5, quant: 'none' })]
})
afterAll(async () => { await Promise.all([head?.close(), ...(spans ?? []).map(async s => { await s.close() })]) })

it('cached decoding matches recomputing the full sequence (logits within 1e-4)', async () => {
  const ids = [...STORIES_PROMPT_IDS]
  const steps = 24
  await Promise.all(spans.map(async s => await s.openSession('cached', ids.length + steps)))
  let hidden = await forwardThrough(spans, 'cached', await head.embed(ids), ids.length)
  let cached = await head.logits(hidden.subarray(hidden.length - head.config.hiddenSize), 1)
  let worst = 0
  for (let step = 0; step < steps; step++) {
    const full = await logitsOf(head, spans, ids, `full-${step}`)
    worst = Math.max(worst, maxAbsDiff(cached, full[full.length - 1]))
    const next = argmax(cached)
    ids.push(next)
    hidden = await forwardThrough(spans, 'cached', await head.embed([next]), 1)
    cached = await head.logits(hidden, 1)
  }
  expect(worst).toBeLessThan(1e-4)
})
