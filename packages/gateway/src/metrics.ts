// The gateway's Prometheus metrics (names after vLLM's and llama.cpp's, with a minga_ prefix, base
// units and _total counters), on a registry of its own so several gateways in one process never mix.
import { Counter, Gauge, Histogram, Registry } from 'prom-client'

export interface GatewayMetrics {
  readonly registry: Registry
  readonly requestsRunning: Gauge
  readonly requestsWaiting: Gauge
  readonly requests: Counter<'endpoint' | 'status'>
  readonly promptTokens: Counter
  readonly generationTokens: Counter
  readonly timeToFirstToken: Histogram
  readonly interTokenLatency: Histogram
  readonly requestLatency: Histogram
}

const LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

export function createGatewayMetrics (): GatewayMetrics {
  const registry = new Registry()
  const registers = [registry]
  return {
    registry,
    requestsRunning: new Gauge({ name: 'minga_requests_running', help: 'Requests generating tokens now.', registers }),
    requestsWaiting: new Gauge({ name: 'minga_requests_waiting', help: 'Requests admitted and waiting for their first token (route and prefill).', registers }),
    requests: new Counter({ name: 'minga_requests_total', help: 'Finished generation requests, by endpoint and HTTP status.', labelNames: ['endpoint', 'status'], registers }),
    promptTokens: new Counter({ name: 'minga_prompt_tokens_total', help: 'Prompt tokens prefilled.', registers }),
    generationTokens: new Counter({ name: 'minga_generation_tokens_total', help: 'Tokens generated.', registers }),
    timeToFirstToken: new Histogram({ name: 'minga_time_to_first_token_seconds', help: 'From the request to its first generated token.', buckets: LATENCY_BUCKETS, registers }),
    interTokenLatency: new Histogram({ name: 'minga_inter_token_latency_seconds', help: 'Between consecutive generated tokens of a request.', buckets: LATENCY_BUCKETS, registers }),
    requestLatency: new Histogram({ name: 'minga_e2e_request_latency_seconds', help: 'From the request to its last byte.', buckets: LATENCY_BUCKETS, registers })
  }
}
