// The client head is prepared once like a layer: a second load reads none of the checkpoint's head
// tensors and gives identical logits; a damaged head entry is logged and rebuilt, never loaded.
import { truncateSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { computeModelId, createClientHead, HEAD_QUANT_FORMATS, preparedDirName } from '../src/index.ts'
import { prepareHead } from '../src/prepared/prepare-head.ts'
import { STORIES, STORIES_PROMPT_IDS, tempDir } from './helpers.ts'

/** Logits of the prompt's embeddings through a head loaded from `cacheDir`, and the load's log. */
async function headLogits (cacheDir: string): Promise<{ logits: Float32Array, log: string[] }> {
  const log: string[] = []
  const head = await createClientHead({ modelDir: STORIES, cacheDir, log: message => log.push(message) })
  try {
    return { logits: await head.logits(await head.embed(STORIES_PROMPT_IDS), STORIES_PROMPT_IDS.length), log }
  } finally {
    await head.close()
  }
}

describe('prepared client head', () => {
  const cache = tempDir('prepared-head')
  afterAll(() => { cache.remove() })
  const dir = join(cache.path, 'prepared', computeModelId(STORIES), preparedDirName('int8', HEAD_QUANT_FORMATS.int8))

  it('is prepared on the first load; the second reads no head tensor and gives identical logits', async () => {
    const first = await headLogits(cache.path)
    const again = prepareHead({ modelDir: STORIES, quant: 'int8', cacheDir: cache.path })
    expect(again).toMatchObject({ graph: join(dir, 'head.onnx'), built: false, bytesRead: 0 })
    const second = await headLogits(cache.path)
    expect(second.logits).toEqual(first.logits)
    expect(second.log).toEqual([])
  })

  it('a truncated head weights file is logged and rebuilt, never loaded', async () => {
    const before = await headLogits(cache.path)
    truncateSync(join(dir, 'head.weights'), 100)
    const after = await headLogits(cache.path)
    expect(after.log.join('\n')).toMatch(/prepared head in .* is damaged \(head\.weights has 100 bytes, expected \d+\), rebuilding/)
    expect(after.logits).toEqual(before.logits)
  })
})
