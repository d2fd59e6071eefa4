// `minga status`: the swarm's nodes, their spans, speed and free capacity, and per-block coverage.
import type { Command } from 'commander'
import { computeModelId, loadModelConfig } from '@minga/engine'
import type { SwarmStatus } from '@minga/client'
import type { CliIo } from '../index.ts'
import { existingModelDir, swarmKeyOption } from '../options.ts'

export function registerStatus (program: Command, io: CliIo): void {
  program.command('status')
    .description('show the swarm: nodes, spans, throughput, free capacity and coverage')
    .requiredOption('--bootstrap <multiaddr...>', 'any node of the swarm')
    .option('--model <dir>', 'only this model (default: every model the swarm serves)')
    .option('--swarm-key <file>', 'the swarm\'s key, if it is private')
    .option('--json', 'print one JSON object')
    .action(async (flags: { bootstrap: string[], model?: string, swarmKey?: string, json?: boolean }) => {
      const { getSwarmStatus } = await import('@minga/client')
      const swarmKey = await swarmKeyOption(flags.swarmKey)
      let model: { modelId: string, numBlocks: number } | undefined
      if (flags.model != null) {
        const dir = existingModelDir(flags.model)
        model = { modelId: computeModelId(dir), numBlocks: loadModelConfig(dir).numLayers }
      }
      const models = await getSwarmStatus({ bootstrap: flags.bootstrap, model, swarmKey })
      io.stdout.write(flags.json === true ? JSON.stringify({ models }) + '\n' : models.map(formatStatus).join('\n') || 'no model is served in this swarm\n')
    })
}

function formatStatus (status: SwarmStatus): string {
  const lines = [`model ${status.modelId} (${status.numBlocks} blocks)`]
  const rows = [['peer', 'name', 'blocks', 'weights', 'tokens/s', 'free sessions', 'free cache tokens', 'via', 'last moved']]
  for (const s of status.servers) {
    const moved = s.lastMove != null
      ? `${Math.max(0, Math.round((Date.now() - s.lastMove.at) / 1000))} s ago from ${s.lastMove.from.join(':')}: ${s.lastMove.reason}`
      : ''
    rows.push([s.peerId, s.name ?? '', `${s.start}:${s.end}`, s.weights ?? '', s.throughput.toFixed(1), String(s.freeSessions), String(s.freeCacheTokens), s.relayed ? 'relay' : 'direct', moved])
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map(r => r[c].length)))
  for (const row of rows) lines.push('  ' + row.map((cell, c) => cell.padEnd(widths[c])).join('  ').trimEnd())
  lines.push('  coverage: ' + status.coverage.map(c => `${c.block}:${c.servers}`).join(' ') + '  (block:servers)')
  const missing = status.coverage.filter(c => c.servers === 0).map(c => c.block)
  if (missing.length > 0) lines.push(`  no server holds block${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`)
  return lines.join('\n') + '\n'
}
