// A node's Prometheus metrics (minga_ prefix, base units, _total counters), on a registry of its
// own, and the small HTTP server `serve --metrics-port` exposes them on.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { errorCodeName } from '@minga/p2p'
import type { SpanStats } from '@minga/engine'

export interface ServerMetrics {
  readonly registry: Registry
  /** One FORWARD through layers `span` ("start:end"), of `tokens` tokens, that took `seconds`. */
  forward (span: string, tokens: number, seconds: number): void
  /** One frame answered: its bytes, and its error code if it was refused. */
  answered (answer: { bytesIn: number, bytesOut: number, errorCode?: number }): void
}

export interface ServerMetricsSources {
  openSessions: () => number
  /** undefined while no span is loaded (starting, or moving to other blocks) */
  stats: () => Promise<SpanStats | undefined>
}

const STEP_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

export function createServerMetrics (sources: ServerMetricsSources): ServerMetrics {
  const registry = new Registry()
  const registers = [registry]
  new Gauge({ name: 'minga_server_sessions_open', help: 'Inference sessions open.', registers, collect () { this.set(sources.openSessions()) } })
  new Gauge({ name: 'minga_server_cache_tokens_used', help: 'KV cache tokens reserved by open sessions.', registers, async collect () { this.set((await sources.stats())?.cacheTokens ?? 0) } })
  new Gauge({ name: 'minga_server_cache_tokens_free', help: 'KV cache tokens still free.', registers, async collect () { this.set((await sources.stats())?.freeCacheTokens ?? 0) } })
  new Gauge({ name: 'minga_server_forward_batches', help: 'Batches the span has run since it loaded (concurrent sessions\' steps share one).', registers, async collect () { this.set((await sources.stats())?.batches ?? 0) } })
  new Gauge({ name: 'minga_server_forward_largest_batch', help: 'Most steps one batch has held since the span loaded.', registers, async collect () { this.set((await sources.stats())?.largestBatch ?? 0) } })
  const steps = new Counter({ name: 'minga_server_forward_steps_total', help: 'FORWARD steps run, by span and phase (prefill: more than one token).', labelNames: ['span', 'phase'], registers })
  const duration = new Histogram({ name: 'minga_server_forward_duration_seconds', help: 'Time to run one FORWARD step through the span.', labelNames: ['span', 'phase'], buckets: STEP_BUCKETS, registers })
  const tokens = new Counter({ name: 'minga_server_forward_tokens_total', help: 'Tokens run through the span.', labelNames: ['span'], registers })
  const refused = new Counter({ name: 'minga_server_frames_refused_total', help: 'Frames answered with an ERROR, by error code.', labelNames: ['code'], registers })
  const bytesIn = new Counter({ name: 'minga_server_received_bytes_total', help: 'Inference frame bytes received.', registers })
  const bytesOut = new Counter({ name: 'minga_server_sent_bytes_total', help: 'Inference frame bytes sent.', registers })
  return {
    registry,
    forward (span, count, seconds) {
      const labels = { span, phase: count > 1 ? 'prefill' : 'decode' }
      steps.inc(labels)
      duration.observe(labels, seconds)
      tokens.inc({ span }, count)
    },
    answered (answer) {
      bytesIn.inc(answer.bytesIn)
      bytesOut.inc(answer.bytesOut)
      if (answer.errorCode != null) refused.inc({ code: errorCodeName(answer.errorCode) })
    }
  }
}

/** Serves GET /metrics on host:port (0: any free port); resolves with the server and its URL. */
export async function serveMetrics (registry: Registry, host: string, port: number): Promise<{ server: Server, url: string }> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || new URL(req.url ?? '/', 'http://node').pathname !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('only GET /metrics here\n')
      return
    }
    registry.metrics().then(text => {
      res.writeHead(200, { 'content-type': registry.contentType }).end(text)
    }, (err: Error) => {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${err.message}\n`)
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => { server.off('error', reject); resolve() })
  })
  const address = server.address() as AddressInfo
  return { server, url: `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}/metrics` }
}
