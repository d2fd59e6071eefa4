export { createServer, DEFAULT_REBALANCE_INTERVAL_MS, MINGA_VERSION, type MingaServer, type ServerInit } from './server.ts'
export { MIN_GAIN, planMove, startRebalancer, type MovePlan, type Rebalancer, type RebalancerInit } from './rebalance.ts'
export { chooseBlocks, type AnnouncedSpan } from './block-selection.ts'
export { ServerConfigError } from './errors.ts'
