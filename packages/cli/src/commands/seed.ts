// `minga seed`: share a model directory with the swarm without serving any layers: announce it as
// provided in the DHT and send its manifest and chunks to whoever fetches it.
import type { Command } from 'commander'
import type { CliIo } from '../index.ts'
import { existingModelDir, integer, number, swarmKeyOption, untilSignal, userPath } from '../options.ts'

interface SeedFlags {
  model: string
  listen: string[]
  bootstrap?: string[]
  shareMbps?: number
  maxTransfers: number
  identity?: string
  swarmKey?: string
  json?: boolean
}

export function registerSeed (program: Command, io: CliIo): void {
  program.command('seed')
    .description('share a model directory\'s weights with the swarm (no layers served)')
    .requiredOption('--model <dir>', 'Hugging Face model directory')
    .option('--listen <multiaddr...>', 'addresses to listen on', ['/ip4/127.0.0.1/tcp/0'])
    .option('--bootstrap <multiaddr...>', 'join the swarm through these nodes')
    .option('--share-mbps <Mbit/s>', 'upload cap', number(0, Infinity, { minExclusive: true }))
    .option('--max-transfers <n>', 'chunks sent at once', integer(1), 8)
    .option('--identity <file>', 'keep this node\'s peer id in a key file (created if missing)')
    .option('--swarm-key <file>', 'a private swarm: only nodes with this key (minga keygen) can connect')
    .option('--json', 'print one JSON line {"peerId", "addrs", "modelId"} when sharing; logs go to stderr')
    .action(async (flags: SeedFlags) => {
      const [{ createMingaNode, loadOrCreateIdentity }, { resolveModel, serveWeights }] = await Promise.all([import('@minga/p2p'), import('@minga/weights')])
      const log = (message: string): void => { io.stderr.write(`minga seed: ${message}\n`) }
      log('reading the manifest (the first time, this hashes every byte of the model; then it is cached)')
      const model = await resolveModel({ modelDir: existingModelDir(flags.model) })
      const node = await createMingaNode({
        listen: flags.listen,
        bootstrap: flags.bootstrap,
        privateKey: flags.identity != null ? await loadOrCreateIdentity(userPath(flags.identity)) : undefined,
        swarmKey: await swarmKeyOption(flags.swarmKey)
      })
      try {
        const provider = await serveWeights(node, [model.source], { shareMbps: flags.shareMbps, maxTransfers: flags.maxTransfers, log })
        const ready = { peerId: node.peerId.toString(), addrs: node.addrs(), modelId: model.modelId }
        if (flags.json === true) io.stdout.write(JSON.stringify(ready) + '\n')
        else io.stdout.write(`sharing model ${model.modelId}\n${ready.addrs.map(a => `  ${a}`).join('\n')}\n`)
        log(`stopping (${await untilSignal()}); sent ${provider.chunksSent} chunks, ${(provider.bytesSent / 1e6).toFixed(1)} MB`)
        await provider.close()
      } finally {
        await node.stop()
      }
    })
}
