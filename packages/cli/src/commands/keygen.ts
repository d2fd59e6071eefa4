// `minga keygen --swarm-key FILE`: a new pre-shared key for a private swarm (libp2p pnet format).
import type { Command } from 'commander'
import type { CliIo } from '../index.ts'
import { userPath } from '../options.ts'

export function registerKeygen (program: Command, io: CliIo): void {
  program.command('keygen')
    .description('write a new swarm key: only nodes given the same file (--swarm-key) can join the swarm')
    .requiredOption('--swarm-key <file>', 'where to write the key (mode 0600); never replaces a file unless --force')
    .option('--force', 'replace an existing file (every node of the swarm then needs the new key)')
    .action(async (flags: { swarmKey: string, force?: boolean }) => {
      const { writeSwarmKey } = await import('@minga/p2p')
      const file = userPath(flags.swarmKey)
      await writeSwarmKey(file, { force: flags.force === true })
      io.stdout.write(`wrote a new swarm key to ${file}\ngive a copy to every node of the swarm and pass it with --swarm-key ${file} to serve, bootstrap, status and generate; keep it secret\n`)
    })
}
