// The relay's limits, apart from the node: the CLI shows the defaults in --help without loading libp2p.

/** Relay limits per relayed connection (a volunteer's relay should not carry whole swarms). */
export const DEFAULT_RELAY_LIMITS = { maxBytes: 64 * 2 ** 20, maxDurationMs: 10 * 60_000, maxReservations: 32 }

export interface RelayLimits {
  /** Bytes one relayed connection may carry (both directions) before the relay resets it. Default 64 MiB. */
  maxBytes?: number
  /** How long one relayed connection may last. Default 10 min. */
  maxDurationMs?: number
  /** Nodes that may hold a slot at once. Default 32. */
  maxReservations?: number
}
