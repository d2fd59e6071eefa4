// Everything a server needs from libp2p and the modules built on it, as one module: createServer
// imports it only after its span's worker has started, so importing libp2p (the longest part of a
// process's start) overlaps the span's load instead of coming before it.
export {
  createMingaNode, ErrorCode, findSpans, handleChannel, INFERENCE_PROTOCOL, loadOrCreateIdentity, loadSwarmKey, ProtocolError, serveInfo,
  startAnnouncer
} from '@minga/p2p'
export { resolveModel, serveWeights } from '@minga/weights'
export { ChainForwarder } from './forwarding.ts'
export { SessionHandler } from './handler.ts'
export { createServerMetrics, serveMetrics } from './metrics.ts'
export { startRebalancer } from './rebalance.ts'
export { measureThroughput } from './throughput.ts'
