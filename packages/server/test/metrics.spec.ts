// A node's /metrics (serve --metrics-port): Prometheus text whose gauges and counters follow real
// frames from a real libp2p peer.
import parsePrometheusTextFormat from 'parse-prometheus-text-format'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createMingaNode, DType, FrameType, INFERENCE_PROTOCOL, newSessionId, openChannel, type Channel, type FrameInit, type MingaNode } from '@minga/p2p'
import { createServer, type MingaServer } from '../src/index.ts'
import { STORIES } from '../../engine/test/helpers.ts'

const HIDDEN = 64
const forward = (sessionId: Uint8Array, position: number, tokens: number): FrameInit => ({
  type: FrameType.FORWARD, sessionId, dtype: DType.F32, startBlock: 0, endBlock: 2, position, tokens, hiddenSize: HIDDEN,
  payload: new Uint8Array(new Float32Array(tokens * HIDDEN).fill(0.25).buffer)
})

describe('node metrics', () => {
  let server: MingaServer
  let peer: MingaNode
  let channel: Channel
  beforeAll(async () => {
    server = await createServer({ modelDir: STORIES, blocks: { start: 0, end: 2 }, throughput: 100, metricsPort: 0 })
    peer = await createMingaNode({})
    channel = await openChannel(peer, server.addrs()[0], INFERENCE_PROTOCOL)
  })
  afterAll(async () => {
    await channel?.close()
    await peer?.stop()
    await server?.stop({ immediate: true })
  })

  /** The value of a counter or gauge, summed over the series with these labels. */
  const scrape = async (): Promise<((name: string, labels?: Record<string, string>) => number) & { text: string }> => {
    const res = await fetch(server.metricsUrl!)
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/)
    const text = await res.text()
    const families = parsePrometheusTextFormat(text)
    return Object.assign((name: string, labels: Record<string, string> = {}) => {
      const family = families.find(f => f.name === name)
      if (family == null) throw new Error(`no metric ${name}`)
      return family.metrics
        .filter(m => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))
        .reduce((sum, m) => sum + Number(m.value ?? 0), 0)
    }, { text })
  }

  it('serves Prometheus text at /metrics that follows sessions, steps, refusals and bytes', async () => {
    expect(server.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/)
    const before = await scrape()
    expect(before('minga_server_sessions_open')).toBe(0)
    expect(before('minga_server_cache_tokens_used')).toBe(0)
    const free = before('minga_server_cache_tokens_free')
    expect(free).toBeGreaterThan(0)

    const id = newSessionId()
    await channel.request({ type: FrameType.OPEN_SESSION, sessionId: id, startBlock: 0, endBlock: 2, maxLength: 16 })
    await channel.request(forward(id, 0, 3))
    await channel.request(forward(id, 3, 1))
    await channel.request(forward(newSessionId(), 0, 1)).catch(() => {}) // UNKNOWN_SESSION

    const during = await scrape()
    expect(during('minga_server_sessions_open')).toBe(1)
    expect(during('minga_server_cache_tokens_used')).toBe(16)
    expect(during('minga_server_cache_tokens_free')).toBe(free - 16)
    expect(during('minga_server_forward_steps_total', { span: '0:2', phase: 'prefill' })).toBe(1)
    expect(during('minga_server_forward_steps_total', { span: '0:2', phase: 'decode' })).toBe(1)
    // (the parser mishandles labelled histograms: read their counts from the text)
    expect(during.text).toContain('minga_server_forward_duration_seconds_count{span="0:2",phase="prefill"} 1\n')
    expect(during.text).toContain('minga_server_forward_duration_seconds_count{span="0:2",phase="decode"} 1\n')
    expect(during('minga_server_forward_tokens_total', { span: '0:2' })).toBe(4)
    // one step after the other: each its own batch
    expect(during('minga_server_forward_batches') - before('minga_server_forward_batches')).toBe(2)
    expect(during('minga_server_forward_largest_batch')).toBeGreaterThanOrEqual(1)
    expect(during('minga_server_frames_refused_total', { code: 'UNKNOWN_SESSION' })).toBe(1)
    // at least the two FORWARD payloads in and the two results out
    expect(during('minga_server_received_bytes_total') - before('minga_server_received_bytes_total')).toBeGreaterThan(4 * HIDDEN * 4)
    expect(during('minga_server_sent_bytes_total') - before('minga_server_sent_bytes_total')).toBeGreaterThan(4 * HIDDEN * 4)

    await channel.request({ type: FrameType.CLOSE_SESSION, sessionId: id })
    expect((await scrape())('minga_server_sessions_open')).toBe(0)
  })
})
