// Named errors (check err.name). A provider sends the code of a request's error to the fetcher.

export class InvalidModelIdError extends Error {
  override readonly name = 'InvalidModelIdError'
}

/** No provider (or this provider) has the model. */
export class UnknownModelError extends Error {
  override readonly name = 'UnknownModelError'
}

/** A manifest whose bytes do not hash to the model id, or that is malformed. */
export class ManifestError extends Error {
  override readonly name = 'ManifestError'
}

/** A chunk index outside the manifest, or a chunk this provider does not hold. */
export class ChunkRangeError extends Error {
  override readonly name = 'ChunkRangeError'
}

/** The provider is at its bound of concurrent transfers. */
export class ProviderBusyError extends Error {
  override readonly name = 'ProviderBusyError'
}

/** A malformed request or reply on the weights protocol. */
export class WeightsProtocolError extends Error {
  override readonly name = 'WeightsProtocolError'
}

/** A fetch that could not complete: no provider left for some chunks. */
export class FetchError extends Error {
  override readonly name = 'FetchError'
}

export class StoreError extends Error {
  override readonly name = 'StoreError'
}
