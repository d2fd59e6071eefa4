// `minga bootstrap`: a swarm node that hosts no layers, only the DHT: an address others can join through.
import type { Command } from 'commander'
import type { CliIo } from '../index.ts'
import { addRelayOptions, relayLimits, swarmKeyOption, untilSignal, userPath, type RelayFlags } from '../options.ts'

export function registerBootstrap (program: Command, io: CliIo): void {
  addRelayOptions(program.command('bootstrap')
    .description('run a DHT-only node that others join through (with --relay, also a relay for nodes behind NAT)'))
    .option('--listen <multiaddr...>', 'addresses to listen on', ['/ip4/127.0.0.1/tcp/0'])
    .option('--bootstrap <multiaddr...>', 'join an existing swarm through these nodes')
    .option('--identity <file>', 'keep this node\'s peer id in a key file (created if missing)')
    .option('--swarm-key <file>', 'a private swarm: only nodes with this key (minga keygen) can connect')
    .option('--json', 'print one JSON line when listening')
    .action(async (flags: { listen: string[], bootstrap?: string[], identity?: string, swarmKey?: string, json?: boolean } & RelayFlags) => {
      const { createMingaNode, loadOrCreateIdentity } = await import('@minga/p2p')
      const swarmKey = await swarmKeyOption(flags.swarmKey)
      const node = await createMingaNode({
        listen: flags.listen,
        bootstrap: flags.bootstrap,
        privateKey: flags.identity != null ? await loadOrCreateIdentity(userPath(flags.identity)) : undefined,
        swarmKey,
        relay: relayLimits(flags),
        reachability: 'public'
      })
      if (flags.json === true) io.stdout.write(JSON.stringify({ peerId: node.peerId.toString(), addrs: node.addrs() }) + '\n')
      else io.stdout.write(`bootstrap node listening\n${node.addrs().map(a => `  ${a}`).join('\n')}\n`)
      await untilSignal()
      await node.stop()
    })
}
