// Joining through a bootstrap peer whose first answer to a ping is lost: kad-dht pings a new contact
// before it adds it to the routing table and never tries again by itself, so a node that only waited
// would give up. The node dials the peer afresh and joins.
import { afterAll, expect, it } from 'vitest'
import { createMingaNode, type MingaNode } from '../src/index.ts'

/** @libp2p/ping's protocol, which kad-dht uses to check a new contact. */
const PING_PROTOCOL = '/ipfs/ping/1.0.0'

const nodes: MingaNode[] = []
afterAll(async () => { await Promise.all(nodes.map(async node => { await node.stop() })) })

it('joins the DHT although the bootstrap peer dropped its first ping', async () => {
  const bootstrap = await createMingaNode({})
  nodes.push(bootstrap)
  // the ping service's own handler, from the registrar (the node's components are not public API)
  const registrar = (bootstrap.libp2p as unknown as { components: { registrar: { getHandler: (protocol: string) => { handler: (...args: any[]) => void | Promise<void>, options: object } } } }).components.registrar
  const ping = registrar.getHandler(PING_PROTOCOL)
  let pings = 0
  await bootstrap.libp2p.unhandle(PING_PROTOCOL)
  await bootstrap.libp2p.handle(PING_PROTOCOL, (stream: { abort: (err: Error) => void }, ...rest: unknown[]): void | Promise<void> => {
    if (pings++ === 0) {
      stream.abort(new Error('the first ping is dropped'))
      return
    }
    return ping.handler(stream, ...rest)
  }, ping.options)

  const joining = await createMingaNode({ bootstrap: bootstrap.addrs(), bootstrapTimeoutMs: 15_000 })
  nodes.push(joining)
  expect(pings).toBeGreaterThanOrEqual(2)
  expect(joining.dhtPeers()).toBeGreaterThan(0)
}, 30_000)
