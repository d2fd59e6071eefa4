export class NoRouteError extends Error {
  override readonly name = 'NoRouteError'
}

export class SwarmError extends Error {
  override readonly name = 'SwarmError'
}
