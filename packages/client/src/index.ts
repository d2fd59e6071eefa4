export { createClient, type ClientInit, type MingaClient, type SwarmGenerationResult, type SwarmServer, type SwarmStatus } from './client.ts'
export { planRoute, hopCostMs, describeBlocks, type RouteHop, type RouteServer } from './routing.ts'
export { NoRouteError, SwarmError } from './errors.ts'
