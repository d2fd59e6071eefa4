// Named errors of @minga/p2p, checked by `err.name` (as in js-libp2p) rather than instanceof, so they
// survive duplicated module copies and structured logging.

/** A wire frame is malformed: short, bad magic, unknown type/dtype, sizes that do not add up… */
export class FrameError extends Error {
  override readonly name = 'FrameError'
}

/** A frame (or record) is larger than the configured limit. */
export class FrameTooLargeError extends Error {
  override readonly name = 'FrameTooLargeError'
}

/** A request got no reply within its timeout (the channel itself may still be fine). */
export class TimeoutError extends Error {
  override readonly name = 'TimeoutError'
}

/** The channel's stream closed or was reset; pending and later requests fail with this. */
export class ChannelClosedError extends Error {
  override readonly name = 'ChannelClosedError'
}

/** The remote answered a request with an ERROR frame; `code` is one of ErrorCode. */
export class RemoteError extends Error {
  override readonly name = 'RemoteError'
  readonly code: number
  readonly codeName: string
  constructor (code: number, codeName: string, message: string) {
    super(`${codeName}: ${message}`)
    this.code = code
    this.codeName = codeName
  }
}

/** Thrown by a channel FrameHandler to answer with a given ErrorCode (any error with a numeric `errorCode` works too). */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError'
  readonly errorCode: number
  constructor (errorCode: number, message: string) {
    super(message)
    this.errorCode = errorCode
  }
}

/** A DHT span record is malformed, expired, forged or otherwise unacceptable. */
export class InvalidRecordError extends Error {
  override readonly name = 'InvalidRecordError'
}

/** None of the bootstrap addresses could be reached (or none joined the DHT) in time. */
export class BootstrapError extends Error {
  override readonly name = 'BootstrapError'
}

/** An identity file exists but cannot be read as a libp2p private key. */
export class IdentityError extends Error {
  override readonly name = 'IdentityError'
}

/** A caller passed an argument that cannot work (bad multiaddr, negative TTL, wrong peer id…). */
export class InvalidArgumentError extends Error {
  override readonly name = 'InvalidArgumentError'
}

/** A swarm key file is missing, unreadable or not in the libp2p pre-shared key format. */
export class SwarmKeyError extends Error {
  override readonly name = 'SwarmKeyError'
}
