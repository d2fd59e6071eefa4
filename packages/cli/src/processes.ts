// Starts minga CLI nodes (bootstrap, serve) as separate processes and waits for their JSON ready line.
// Shared by the demo, the fuzzer, the benchmarks and the cross-package tests (`@minga/cli/processes`).
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The checkout this CLI runs from. */
export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '../../..')
/** The `minga` command's entry (it runs the CLI's cached bundle). */
export const MINGA_BIN = join(REPO_ROOT, 'packages/cli/bin/minga.mjs')

export interface NodeProcess {
  readonly label: string
  readonly child: ChildProcess
  /** The node's ready line: `{ peerId, addrs, blocks? }`. */
  readonly ready: { peerId: string, addrs: string[], blocks?: [number, number] }
  /** Everything the node wrote to stderr so far. */
  log (): string
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code or signal. */
  stop (graceMs?: number): Promise<number | string>
  kill (): Promise<number | string>
}

export interface StartOptions {
  label: string
  /** Called with each stderr line (e.g. to show logs). */
  onLog?: (line: string) => void
  timeoutMs?: number
  env?: NodeJS.ProcessEnv
  /** A command to run the node through, e.g. ['ip', 'netns', 'exec', NS] (it must exec the rest). */
  prefix?: string[]
}

/** The command line that runs the CLI: [program, ...args], behind `prefix` if given. */
function mingaCommand (args: string[], prefix: string[] = []): [string, string[]] {
  const command = [...prefix, process.execPath, MINGA_BIN, ...args]
  return [command[0], command.slice(1)]
}

/** Runs `minga <args> --json` and resolves once it prints its ready line. */
export async function startNode (args: string[], options: StartOptions): Promise<NodeProcess> {
  const [program, argv] = mingaCommand([...args, '--json'], options.prefix)
  const child = spawn(program, argv, {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, MINGA_PARENT_PID: String(process.pid), ...options.env }
  })
  let stderr = ''
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk
    if (options.onLog != null) for (const line of chunk.split('\n')) if (line !== '') options.onLog(line)
  })
  const exited = new Promise<number | string>(resolve => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)))
  const ready = await new Promise<NodeProcess['ready']>((resolve, reject) => {
    let stdout = ''
    const timer = setTimeout(() => fail(new Error(`${options.label} did not become ready in ${options.timeoutMs ?? 60_000} ms`)), options.timeoutMs ?? 60_000)
    const fail = (err: Error): void => {
      clearTimeout(timer)
      child.kill('SIGKILL')
      reject(new Error(`${err.message}\n${stderr}`))
    }
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk
      const newline = stdout.indexOf('\n')
      if (newline < 0) return
      clearTimeout(timer)
      try {
        resolve(JSON.parse(stdout.slice(0, newline)))
      } catch (err) {
        fail(err as Error)
      }
    })
    void exited.then(code => fail(new Error(`${options.label} exited (${code}) before it was ready`)))
  })
  const stop = async (graceMs = 10_000): Promise<number | string> => {
    if (child.exitCode == null && child.signalCode == null) {
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
      void exited.then(() => clearTimeout(timer))
    }
    return await exited
  }
  return {
    label: options.label,
    child,
    ready,
    log: () => stderr,
    stop,
    kill: async () => { child.kill('SIGKILL'); return await exited }
  }
}

/** Runs `minga <args>` to completion: its exit code and output (for testing the command line). */
export async function runMinga (...args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return await runMingaWith({}, ...args)
}

/** runMinga through a command prefix (e.g. in a network namespace). */
export async function runMingaWith (options: { prefix?: string[] }, ...args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  const [program, argv] = mingaCommand(args, options.prefix)
  return await new Promise(resolve => {
    execFile(program, argv, { cwd: REPO_ROOT, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err == null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr })
    })
  })
}
