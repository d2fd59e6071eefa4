// The minga command line. Each command lives in its own file under commands/.
import { Command, CommanderError } from 'commander'
import { registerApi } from './commands/api.ts'
import { registerBootstrap } from './commands/bootstrap.ts'
import { registerChat } from './commands/chat.ts'
import { registerGenerate } from './commands/generate.ts'
import { registerKeygen } from './commands/keygen.ts'
import { registerManifest } from './commands/manifest.ts'
import { registerSeed } from './commands/seed.ts'
import { registerPrepare } from './commands/prepare.ts'
import { registerServe } from './commands/serve.ts'
import { registerStatus } from './commands/status.ts'

export interface CliIo {
  /** Where `minga chat` reads messages (default process.stdin). */
  stdin?: NodeJS.ReadableStream
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
}

/** Runs the CLI; resolves to the exit code. Every failure is one line on stderr. */
export async function runCli (argv: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const program = new Command('minga')
    .description('Run a language model jointly on ordinary computers.')
    .exitOverride()
    .configureOutput({ writeOut: s => io.stdout.write(s), writeErr: s => io.stderr.write(s) })
    .showSuggestionAfterError(true)
    .option('--check', 'only parse and validate the flags (values, required ones; not files), then exit 0 without starting anything')
  // Runs after commander has parsed the subcommand's flags and checked the required ones: with
  // --check we stop there (deployment files such as docker-compose.yml are tested this way).
  program.hook('preAction', (_program, action) => {
    if (program.opts().check !== true) return
    io.stdout.write(`minga ${action.name()}: flags are valid\n`)
    throw new CommanderError(0, 'minga.check', 'flags are valid')
  })
  registerGenerate(program, io)
  registerChat(program, io)
  registerApi(program, io)
  registerServe(program, io)
  registerPrepare(program, io)
  registerStatus(program, io)
  registerBootstrap(program, io)
  registerKeygen(program, io)
  registerManifest(program, io)
  registerSeed(program, io)
  try {
    await program.parseAsync(argv)
    return 0
  } catch (err: any) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2 // commander printed the message
    io.stderr.write(`minga: error: ${err?.message ?? String(err)}\n`)
    return 1
  }
}
