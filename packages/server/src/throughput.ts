// What a server announces as its speed: decode tokens per second through its whole span, measured
// at start-up on the span itself (a short prefill, then single-token steps).
import { randomUUID } from 'node:crypto'
import type { SpanExecutor } from '@minga/engine'

export async function measureThroughput (executor: SpanExecutor, steps = 8): Promise<number> {
  const sessionId = `throughput-${randomUUID()}`
  const { hiddenSize } = executor.config
  await executor.openSession(sessionId, steps + 8)
  try {
    await executor.forward(sessionId, randomHidden(8 * hiddenSize), { tokens: 8 })
    const started = performance.now()
    for (let i = 0; i < steps; i++) await executor.forward(sessionId, randomHidden(hiddenSize), { tokens: 1 })
    return steps / ((performance.now() - started) / 1000)
  } finally {
    await executor.closeSession(sessionId)
  }
}

function randomHidden (n: number): Float32Array {
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) out[i] = Math.random() * 2 - 1
  return out
}
