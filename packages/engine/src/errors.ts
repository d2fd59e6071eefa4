// Named errors, checked by `err.name` as in js-libp2p: callers (CLI, server) map them to messages and codes.

export class ModelLoadError extends Error {
  static readonly name = 'ModelLoadError'
  override readonly name = 'ModelLoadError'
}

export class UnsupportedModelError extends Error {
  static readonly name = 'UnsupportedModelError'
  override readonly name = 'UnsupportedModelError'
}

export class InvalidArgumentError extends Error {
  static readonly name = 'InvalidArgumentError'
  override readonly name = 'InvalidArgumentError'
}

export class ContextLengthError extends Error {
  static readonly name = 'ContextLengthError'
  override readonly name = 'ContextLengthError'
}

export class UnknownSessionError extends Error {
  static readonly name = 'UnknownSessionError'
  override readonly name = 'UnknownSessionError'
}

export class SessionLimitError extends Error {
  static readonly name = 'SessionLimitError'
  override readonly name = 'SessionLimitError'
}

export class ShapeError extends Error {
  static readonly name = 'ShapeError'
  override readonly name = 'ShapeError'
}

export class PositionError extends Error {
  static readonly name = 'PositionError'
  override readonly name = 'PositionError'
}

export class WorkerError extends Error {
  static readonly name = 'WorkerError'
  override readonly name = 'WorkerError'
}

/** Errors that cross the worker boundary keep their name (structured clone drops the class). */
export const ENGINE_ERRORS: Record<string, new (message: string) => Error> = {
  ModelLoadError,
  UnsupportedModelError,
  InvalidArgumentError,
  ContextLengthError,
  UnknownSessionError,
  SessionLimitError,
  ShapeError,
  PositionError,
  WorkerError
}
