// A minga node inside your own Node program: it joins the swarm, hosts some of the model's layers
// and serves them while the program does whatever else it does, and leaves cleanly on SIGINT/SIGTERM.
//   pnpm --filter @minga/example-embed-server start --model DIR --bootstrap MULTIADDR [--blocks 0:5|auto]
// (or MINGA_MODEL / MINGA_BOOTSTRAP in the environment).
import '@minga/p2p/polyfill' // libp2p needs Promise.withResolvers (Node 22+): import it first
import { once } from 'node:events'
import { parseArgs } from 'node:util'
import { createServer } from '@minga/server'

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: process.env.MINGA_MODEL },
    bootstrap: { type: 'string', default: process.env.MINGA_BOOTSTRAP },
    blocks: { type: 'string', default: 'auto' }, // START:END, or auto: fill the swarm's weakest layers
    name: { type: 'string', default: 'embedded-example' }
  }
})
if (args.model == null || args.bootstrap == null) throw new Error('give --model DIR and --bootstrap MULTIADDR (or MINGA_MODEL and MINGA_BOOTSTRAP)')
const [start, end] = args.blocks.split(':').map(Number)

const server = await createServer({
  modelDir: args.model,
  bootstrap: [args.bootstrap],
  blocks: args.blocks === 'auto' ? 'auto' : { start, end },
  publicName: args.name, // what `minga status` and the gateway's swarm map show
  maxSessions: 4, // a shared machine: leave room for the program's own work
  log: message => { console.error(`[minga] ${message}`) } // the node's logs, into the program's
})
// One line for whoever started us (the example's test reads it).
console.log(JSON.stringify({ peerId: server.peerId, blocks: [server.start, server.end], throughput: server.throughput }))

// The host program's own work goes on; here it reports the node's load now and then.
const report = setInterval(() => { console.error(`[host] ${server.openSessions} minga session(s) open`) }, 10_000)

// Leave the swarm gracefully: withdraw the span, let open sessions finish (drainTimeoutMs), stop.
await Promise.race([once(process, 'SIGINT'), once(process, 'SIGTERM')])
clearInterval(report)
await server.stop()
console.error('[host] the minga node has stopped')
