// Peer ids from the command line, apart from the node: a server checks --allow before it loads
// libp2p (see @minga/server), through the `@minga/p2p/peer-id` subpath.
import type { PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { InvalidArgumentError } from './errors.ts'

/** A peer id from its string form (12D3Koo…, Qm…); InvalidArgumentError naming the value if it is not one. */
export function parsePeerId (value: string): PeerId {
  try {
    return peerIdFromString(value)
  } catch (err) {
    throw new InvalidArgumentError(`"${value}" is not a peer id (${(err as Error).message})`)
  }
}
