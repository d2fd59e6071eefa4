// `minga serve`: host a span of a model's layers for the swarm until SIGINT/SIGTERM (the first one
// drains: withdraw, refuse new sessions, let open ones finish; a second one stops at once).
import { InvalidArgumentError, type Command } from 'commander'
import { DEFAULT_BATCH_WAIT_MS, DEFAULT_QUANT, MAX_BATCH_WAIT_MS } from '@minga/engine'
// (@minga/server loads libp2p itself once the span's worker is started: see createServer)
import { createServer } from '@minga/server'
import type { CliIo } from '../index.ts'
import { addRelayOptions, integer, modelChoice, number, parseBlocks, quantization, relayLimits, userPath, untilSignal, type RelayFlags } from '../options.ts'
import { prepareProgressView } from '../progress.ts'

interface ServeFlags extends RelayFlags {
  reachability: 'auto' | 'public' | 'private'
  rebalanceInterval: number
  model?: string
  modelId?: string
  share: boolean
  shareMbps?: number
  maxTransfers: number
  blocks: { start: number, end: number } | 'auto'
  numBlocks?: number
  listen: string[]
  bootstrap?: string[]
  publicName?: string
  maxSessions: number
  cacheMb?: number
  cacheTokens?: number
  cacheDir?: string
  quant: 'none' | 'int8' | 'int4'
  identity?: string
  throughput?: number
  announceTtl: number
  sessionIdle: number
  threads?: number
  workers?: number
  batchWait?: number
  swarmKey?: string
  allow?: string[]
  maxSessionsPerPeer: number
  maxFrameMb?: number
  drainTimeout: number
  metricsPort?: number
  metricsHost: string
  json?: boolean
}

export function registerServe (program: Command, io: CliIo): void {
  addRelayOptions(program.command('serve')
    .description('host a span of a model\'s layers for the swarm'))
    .option('--model <dir>', 'Hugging Face model directory')
    .option('--model-id <id>', 'or only the model id: fetch this span\'s weights from the swarm (verified, resumable)')
    .option('--no-share', 'do not share this node\'s weights with the swarm')
    .option('--share-mbps <Mbit/s>', 'upload cap for sharing weights', number(0, Infinity, { minExclusive: true }))
    .option('--max-transfers <n>', 'weight chunks sent at once', integer(1), 8)
    .requiredOption('--blocks <start:end|auto>', 'layers to host, e.g. 0:2, or auto to fill the swarm\'s gaps', parseBlocks)
    .option('--num-blocks <n>', 'with --blocks auto: how many consecutive layers (default: all)', integer(1))
    .option('--listen <multiaddr...>', 'addresses to listen on', ['/ip4/127.0.0.1/tcp/0'])
    .option('--bootstrap <multiaddr...>', 'join the swarm through these nodes (none: start a new swarm)')
    .option('--public-name <name>', 'a name shown by `minga status`')
    .option('--max-sessions <n>', 'inference sessions open at once', integer(1), 16)
    .option('--max-sessions-per-peer <n>', 'sessions one peer may hold at once', integer(1), 8)
    .option('--cache-mb <MiB>', 'KV cache budget of all sessions together; caches grow as sessions fill them (default 256)', number(0, Infinity, { minExclusive: true }))
    .option('--cache-tokens <n>', 'the KV cache budget in tokens of the whole span, instead of --cache-mb', integer(1))
    .option('--cache-dir <dir>', 'the cache folder: prepared spans go under its prepared/ (default $MINGA_CACHE or ~/.cache/minga)')
    .option('--quant <q>', 'weights of the linear layers: none (f32), int8 or int4', quantization, DEFAULT_QUANT)
    .option('--identity <file>', 'keep this node\'s peer id in a key file (created if missing)')
    .option('--throughput <tokens/s>', 'announce this speed instead of measuring it', number(0, Infinity, { minExclusive: true }))
    .option('--announce-ttl <seconds>', 'lifetime of the DHT announcement (renewed every third)', integer(2, 3600), 60)
    .option('--session-idle <seconds>', 'close sessions idle this long', integer(1), 300)
    .option('--threads <n>', 'onnxruntime threads (default: all cores)', integer(1))
    .option('--workers <n>', 'worker threads the span is split into, to create its layers on several cores (default: one per 900 MiB of weights or part of it, at most one per core and 4)', integer(1, 64))
    .option('--batch-wait <ms>', `the longest a step may wait for other sessions' steps to run with it as one batch; it waits only for sessions due back within about one batch's run (0 to ${MAX_BATCH_WAIT_MS}; default ${DEFAULT_BATCH_WAIT_MS})`, number(0, MAX_BATCH_WAIT_MS))
    .option('--swarm-key <file>', 'a private swarm: only nodes with this key (minga keygen) can connect')
    .option('--allow <peerid...>', 'only these peers may open sessions (default: anyone)')
    .option('--max-frame-mb <MiB>', 'largest inference frame accepted; bigger ones get TOO_LARGE (default 64)', number(0, 1024, { minExclusive: true }))
    .option('--drain-timeout <seconds>', 'on SIGINT/SIGTERM, how long open sessions may go on before they are told to move', number(0, 86_400), 30)
    .option('--metrics-port <n>', 'serve Prometheus metrics at http://HOST:N/metrics (0: any free port)', integer(0, 65535))
    .option('--metrics-host <host>', 'with --metrics-port: the address to listen on', '127.0.0.1')
    .option('--rebalance-interval <seconds>', 'with --blocks auto: how often (on average) to check whether moving would heal the swarm', number(0.1, 86_400), 120)
    .option('--reachability <mode>', 'auto: take a relay slot if peers cannot dial this node back; public: never; private: always', reachabilityMode, 'auto')
    .option('--json', 'print one JSON line when serving; logs go to stderr')
    .action(async (flags: ServeFlags) => { await serve(flags, io) })
}

async function serve (flags: ServeFlags, io: CliIo): Promise<void> {
  const log = (message: string): void => { io.stderr.write(`minga serve: ${message}\n`) }
  const progress = prepareProgressView(io, 'minga serve: preparing')
  const server = await createServer({
    ...(await modelChoice(flags)),
    share: flags.share,
    shareMbps: flags.shareMbps,
    maxTransfers: flags.maxTransfers,
    blocks: flags.blocks,
    numBlocks: flags.numBlocks,
    listen: flags.listen,
    bootstrap: flags.bootstrap,
    publicName: flags.publicName,
    maxSessions: flags.maxSessions,
    cacheMb: flags.cacheMb,
    cacheTokens: flags.cacheTokens,
    cacheDir: flags.cacheDir != null ? userPath(flags.cacheDir) : undefined,
    onPrepareProgress: progress.update,
    quant: flags.quant,
    identityFile: flags.identity != null ? userPath(flags.identity) : undefined,
    throughput: flags.throughput,
    announceTtlMs: flags.announceTtl * 1000,
    sessionIdleMs: flags.sessionIdle * 1000,
    threads: flags.threads,
    workers: flags.workers,
    batchWaitMs: flags.batchWait,
    swarmKeyFile: flags.swarmKey != null ? userPath(flags.swarmKey) : undefined,
    allow: flags.allow,
    maxSessionsPerPeer: flags.maxSessionsPerPeer,
    maxFrameBytes: flags.maxFrameMb != null ? Math.round(flags.maxFrameMb * 2 ** 20) : undefined,
    drainTimeoutMs: flags.drainTimeout * 1000,
    metricsPort: flags.metricsPort,
    metricsHost: flags.metricsHost,
    rebalanceIntervalMs: Math.round(flags.rebalanceInterval * 1000),
    relay: relayLimits(flags),
    reachability: flags.reachability,
    log
  }).finally(progress.stop)
  const ready = { peerId: server.peerId, addrs: server.addrs(), blocks: [server.start, server.end], ...(server.metricsUrl != null ? { metricsUrl: server.metricsUrl } : {}) }
  if (flags.json === true) io.stdout.write(JSON.stringify(ready) + '\n')
  else io.stdout.write(`serving blocks [${server.start}, ${server.end}) of model ${server.modelId}\n${server.addrs().map(a => `  ${a}`).join('\n')}\n`)
  const signal = await untilSignal()
  log(`${signal}: withdrawing the span and refusing new sessions; open sessions may finish (up to ${flags.drainTimeout} s, ${server.openSessions} open now); send it again to stop at once`)
  const again = (second: NodeJS.Signals): void => {
    log(`${second} again: stopping now`)
    void server.stop({ immediate: true })
  }
  process.once('SIGINT', again)
  process.once('SIGTERM', again)
  try {
    await server.stop()
  } finally {
    process.off('SIGINT', again)
    process.off('SIGTERM', again)
  }
  log('stopped')
}

function reachabilityMode (value: string): 'auto' | 'public' | 'private' {
  if (value !== 'auto' && value !== 'public' && value !== 'private') throw new InvalidArgumentError('expected auto, public or private.')
  return value
}

