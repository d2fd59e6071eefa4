export class ServerConfigError extends Error {
  override readonly name = 'ServerConfigError'
}
