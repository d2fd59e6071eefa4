// The minga command line. Each command lives in its own file under commands/.
import { Command, CommanderError } from 'commander'
import { registerBootstrap } from './commands/bootstrap.ts'
import { registerGenerate } from './commands/generate.ts'
import { registerKeygen } from './commands/keygen.ts'
import { registerPrepare } from './commands/prepare.ts'
import { registerServe } from './commands/serve.ts'
import { registerStatus } from './commands/status.ts'

export interface CliIo {
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
  registerGenerate(program, io)
  registerServe(program, io)
  registerPrepare(program, io)
  registerStatus(program, io)
  registerBootstrap(program, io)
  registerKeygen(program, io)
  try {
    await program.parseAsync(argv)
    return 0
  } catch (err: any) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2 // commander printed the message
    io.stderr.write(`minga: error: ${err?.message ?? String(err)}\n`)
    return 1
  }
}
