// Named errors, checked by `err.name` as in js-libp2p: callers (CLI, server) map them to messages and codes.

export class ModelLoadError extends Error {
  override readonly name = 'ModelLoadError'
}

export class UnsupportedModelError extends Error {
  override readonly name = 'UnsupportedModelError'
}

export class InvalidArgumentError extends Error {
  override readonly name = 'InvalidArgumentError'
}

export class ContextLengthError extends Error {
  override readonly name = 'ContextLengthError'
}

export class UnknownSessionError extends Error {
  override readonly name = 'UnknownSessionError'
}

export class SessionLimitError extends Error {
  override readonly name = 'SessionLimitError'
}

export class ShapeError extends Error {
  override readonly name = 'ShapeError'
}

export class PositionError extends Error {
  override readonly name = 'PositionError'
}

export class WorkerError extends Error {
  override readonly name = 'WorkerError'
}

/** A chat request for a model whose tokenizer_config.json has no chat template. */
export class NoChatTemplateError extends Error {
  override readonly name = 'NoChatTemplateError'
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
