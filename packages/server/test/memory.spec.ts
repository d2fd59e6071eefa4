// Before loading, a server works out what its span will take and refuses, saying what would fit,
// when that is more than the machine has.
import { expect, it } from 'vitest'
import { DEFAULT_CACHE_BYTES, loadModelConfig, preparedSpanBytes } from '@minga/engine'
import { availableMemory, createServer, RUNTIME_BASELINE_BYTES, spanMemory } from '../src/index.ts'
import { STORIES } from '../../engine/test/helpers.ts'

const config = loadModelConfig(STORIES)

it('estimates weights at the quantization, the KV budget and the runtime', () => {
  const f32 = spanMemory(config, 'none', 5, DEFAULT_CACHE_BYTES)
  const int8 = spanMemory(config, 'int8', 5, DEFAULT_CACHE_BYTES)
  expect(f32.weights).toBe(preparedSpanBytes(config, 'none', 5))
  expect(int8.weights).toBeLessThan(f32.weights)
  expect(int8.total).toBe(int8.weights + DEFAULT_CACHE_BYTES + RUNTIME_BASELINE_BYTES)
  const available = availableMemory()
  expect(available.bytes).toBeGreaterThan(0)
  expect(available.source).toMatch(/MemAvailable|cgroup|free memory/)
})

it('refuses a span that does not fit, suggesting fewer blocks or int4', async () => {
  const layer = preparedSpanBytes(config, 'none', 1)
  const availableMemory = RUNTIME_BASELINE_BYTES + 2 ** 20 + 2.5 * layer
  const failure = await createServer({ modelDir: STORIES, blocks: { start: 1, end: 5 }, quant: 'none', cacheMb: 1, throughput: 100, availableMemory })
    .then(async server => { await server.stop(); throw new Error('expected a refusal') }, (err: Error) => err)
  expect(failure.name).toBe('ServerConfigError')
  expect(failure.message).toMatch(/^not enough memory for blocks \[1, 5\) at none: they need ≈ \d+ MiB \(weights [\d.]+ MiB \+ KV cache up to 1\.0 MiB \+ runtime ≈ 200 MiB\), but only \d+ MiB are available \(as configured\); try --blocks 1:3 \(2 layers at none\), or --quant int4 \(4 of these 4 layers fit\)$/)
})

it('says what the span takes before loading it, int8 by default', async () => {
  const log: string[] = []
  const server = await createServer({ modelDir: STORIES, blocks: { start: 0, end: 5 }, cacheMb: 1, throughput: 100, log: m => log.push(m) })
  await server.stop()
  const estimate = log.findIndex(m => /^blocks \[0, 5\) at int8 take ≈ \d+ MiB \(weights 0\.\d MiB \+ KV cache up to 1\.0 MiB \+ runtime ≈ 200 MiB\)$/.test(m))
  const loaded = log.findIndex(m => /^(prepared 5 layers into|loaded the prepared span from) /.test(m))
  expect(estimate, log.join('\n')).toBeGreaterThanOrEqual(0)
  expect(loaded).toBeGreaterThan(estimate)
})
