// Logits requests that reach the client head together run as one batch (one LM head run over all
// their rows): each request still gets exactly what it gets alone, whether into a logits buffer of
// its own or not, and a malformed one fails alone.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createClientHead, createLogitsBuffer, InvalidArgumentError, ShapeError, type ClientHead, type Quantization } from '../src/index.ts'
import { STORIES } from './helpers.ts'

for (const headQuant of ['int8', 'none'] as Quantization[]) {
  describe(`client head (${headQuant}), concurrent logits`, () => {
    let head: ClientHead
    beforeAll(async () => { head = await createClientHead({ modelDir: STORIES, headQuant }) })
    afterAll(async () => { await head?.close() })

    it('gives every request the logits it gets alone; a wrong shape fails alone', async () => {
      // requests of 1 token each (decode steps of different sessions) and one of 3 tokens
      const requests = [[12], [400], [7], [261, 378, 403], [5], [99], [310], [1]]
      const hidden = async (ids: number[]): Promise<Float32Array> => await head.embed(ids)
      const alone: Float32Array[] = []
      for (const ids of requests) alone.push(await head.logits(await hidden(ids), ids.length))
      const inputs = await Promise.all(requests.map(hidden))
      // every other request into a buffer of its own (generations reuse one from token to token)
      const buffers = requests.map((ids, i) => i % 2 === 0 ? createLogitsBuffer(head.config, ids.length) : undefined)
      const together = await Promise.allSettled([
        ...requests.map(async (ids, i) => await head.logits(inputs[i], ids.length, buffers[i])),
        head.logits(new Float32Array(5), 1)
      ])
      for (const [i, result] of together.slice(0, requests.length).entries()) {
        expect(result.status).toBe('fulfilled')
        expect((result as PromiseFulfilledResult<Float32Array>).value).toEqual(alone[i])
        if (buffers[i] != null) expect(buffers[i]).toEqual(alone[i])
      }
      const wrong = together[requests.length] as PromiseRejectedResult
      expect(wrong.status).toBe('rejected')
      expect(wrong.reason).toBeInstanceOf(ShapeError)
      expect(wrong.reason.message).toMatch(/hidden states of 5 values do not match 1 tokens × hidden size \d+/)
    })

    it('refuses a logits buffer that is too small or not shared, naming what it needs', async () => {
      const hidden = await head.embed([1, 2])
      await expect(head.logits(hidden.slice(), 2, createLogitsBuffer(head.config, 1))).rejects.toThrow(InvalidArgumentError)
      await expect(head.logits(hidden.slice(), 2, new Float32Array(2 * head.config.vocabSize))).rejects.toThrow(/need \d+ values in a SharedArrayBuffer \(createLogitsBuffer\), got \d+ in an unshared buffer/)
      // the head still serves
      expect((await head.logits(hidden.slice(), 2)).length).toBe(2 * head.config.vocabSize)
    })
  })
}
