export { createClient, type ClientInit, type MingaClient, type SwarmGenerationResult } from './client.ts'
export { getSwarmStatus, type SwarmServer, type SwarmStatus, type SwarmStatusInit } from './status.ts'
export { planRoute, hopCostMs, describeBlocks, type RouteHop, type RouteServer } from './routing.ts'
export { NoRouteError, SwarmError } from './errors.ts'
