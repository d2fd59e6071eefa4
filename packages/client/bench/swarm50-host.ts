// One process of the 50-node benchmark: hosts several minga nodes (DHT-only nodes and servers) in
// one event loop, started and stopped on request of the parent over IPC. See swarm50.bench.ts.
import '@minga/p2p/polyfill'
import { createMingaNode } from '@minga/p2p'
import { createServer } from '@minga/server'

export type HostCommand =
  | { cmd: 'dht', bootstrap: string[] }
  | { cmd: 'serve', bootstrap: string[], modelDir: string, blocks: { start: number, end: number } | 'auto', numBlocks?: number, ttlMs: number }
  /** `crash`: close at once without withdrawing (the span lingers in the DHT until it expires). */
  | { cmd: 'stop', node: string, crash: boolean }

export type HostRequest = HostCommand & { id: number }

export type HostReply =
  | { id: number, ok: true, peerId: string, addrs: string[], blocks?: [number, number] }
  | { id: number, ok: false, error: string }

const nodes = new Map<string, (crash: boolean) => Promise<void>>()

/**
 * libp2p limits inbound connections per remote host (5 a second by default), and on loopback every
 * node is the same host: a join refused that way is retried after a pause.
 */
async function retried<T> (fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn()
    } catch (err: any) {
      if (attempt >= 10 || err?.name !== 'BootstrapError') throw err
      await new Promise(resolve => setTimeout(resolve, 500 * attempt + Math.random() * 500))
    }
  }
}

async function handle (req: HostRequest): Promise<HostReply> {
  if (req.cmd === 'dht') {
    const node = await retried(async () => await createMingaNode({ bootstrap: req.bootstrap, reachability: 'public' }))
    nodes.set(node.peerId.toString(), async () => { await node.stop() })
    return { id: req.id, ok: true, peerId: node.peerId.toString(), addrs: node.addrs() }
  }
  if (req.cmd === 'serve') {
    const server = await retried(async () => await createServer({
      modelDir: req.modelDir,
      blocks: req.blocks,
      numBlocks: req.numBlocks,
      bootstrap: req.bootstrap,
      reachability: 'public',
      throughput: 100, // no measuring: 20 servers measuring at once would only measure each other
      threads: 1,
      maxSessions: 8,
      announceTtlMs: req.ttlMs,
      drainTimeoutMs: 0
    }))
    nodes.set(server.peerId, async (crash) => { await server.stop({ immediate: crash }) })
    return { id: req.id, ok: true, peerId: server.peerId, addrs: server.addrs(), blocks: [server.start, server.end] }
  }
  const stop = nodes.get(req.node)
  if (stop == null) throw new Error(`no node ${req.node} in this process`)
  nodes.delete(req.node)
  await stop(req.crash)
  return { id: req.id, ok: true, peerId: req.node, addrs: [] }
}

process.on('message', (req: HostRequest) => {
  void handle(req).then(
    reply => { if (process.connected) process.send!(reply) },
    (err: any) => { if (process.connected) process.send!({ id: req.id, ok: false, error: err?.message ?? String(err) } satisfies HostReply) }
  )
})
process.on('disconnect', () => {
  void Promise.allSettled([...nodes.values()].map(async stop => { await stop(true) })).finally(() => process.exit(0))
})
