// Flag parsers shared by the commands: each rejects a bad value with a message naming the flag's rule.
import { existsSync, statSync } from 'node:fs'
import { isAbsolute, resolve } from 'node:path'
import { InvalidArgumentError, type Command } from 'commander'
import { isProcessAlive, QUANTIZATIONS, type Quantization } from '@minga/engine'
// (libp2p and what is built on it are imported where a command needs them, not here: a command's
// start, `minga serve`'s above all, should not wait for modules it does not use yet)
import { DEFAULT_RELAY_LIMITS, type RelayLimits } from '@minga/p2p/relay-limits'

export function integer (min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value)
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected an integer from ${min}${max < Number.MAX_SAFE_INTEGER ? ` to ${max}` : ''}.`)
    return n
  }
}

export function number (min: number, max: number, { minExclusive = false } = {}) {
  return (value: string): number => {
    const n = Number(value)
    if (value.trim() === '' || !Number.isFinite(n) || n > max || (minExclusive ? n <= min : n < min)) {
      throw new InvalidArgumentError(`expected a number ${minExclusive ? '>' : '≥'} ${min}${Number.isFinite(max) ? ` and ≤ ${max}` : ''}.`)
    }
    return n
  }
}

export function quantization (value: string): Quantization {
  if (!(QUANTIZATIONS as string[]).includes(value)) throw new InvalidArgumentError(`expected one of ${QUANTIZATIONS.join(', ')}.`)
  return value as Quantization
}

export function collect (value: string, previous: string[] = []): string[] {
  return [...previous, value]
}

/** Paths on the command line are relative to where the user ran it, even through `pnpm minga`. */
export function userPath (path: string): string {
  return isAbsolute(path) ? path : resolve(process.env.INIT_CWD ?? process.cwd(), path)
}

export function addSamplingOptions (command: Command): Command {
  return command
    .option('--max-new-tokens <n>', 'most tokens to generate', integer(1), 128)
    .option('--temperature <t>', 'sampling temperature; 0 picks the most likely token', number(0, Infinity), 0)
    .option('--top-k <k>', 'sample among the k most likely tokens (0: all)', integer(0), 0)
    .option('--top-p <p>', 'sample among the most likely tokens that reach probability p', number(0, 1, { minExclusive: true }), 1)
    .option('--seed <s>', 'random seed: the same seed gives the same output', integer(0))
    .option('--repetition-penalty <r>', 'discourage tokens already seen (> 1)', number(0, Infinity, { minExclusive: true }), 1)
    .option('--presence-penalty <p>', 'subtract p from the logits of tokens already generated (-2 to 2)', number(-2, 2), 0)
    .option('--frequency-penalty <f>', 'subtract f per time a token was already generated (-2 to 2)', number(-2, 2), 0)
    .option('--stop <text>', 'stop when the output contains this text (repeatable)', collect, [])
}

/** The model directory named on the command line, which must exist. */
export function existingModelDir (path: string): string {
  const dir = userPath(path)
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`model directory ${dir} does not exist`)
  return dir
}

/**
 * The model named by `--model DIR` or `--model-id ID` (exactly one): what createServer and
 * createClient take. An id is fetched from the swarm, so it needs `--bootstrap`.
 */
export async function modelChoice (flags: { model?: string, modelId?: string, bootstrap?: string[] }): Promise<{ modelDir?: string, modelId?: string }> {
  if ((flags.model == null) === (flags.modelId == null)) throw new Error('give either --model DIR or --model-id ID (see `minga manifest`)')
  if (flags.model != null) return { modelDir: existingModelDir(flags.model) }
  const { modelCid } = await import('@minga/weights')
  modelCid(flags.modelId!)
  if ((flags.bootstrap ?? []).length === 0) throw new Error('--model-id needs --bootstrap: the model is fetched from the swarm')
  return { modelId: flags.modelId }
}

/** The swarm key named by --swarm-key (checked: a missing or malformed file is a one-line error). */
export async function swarmKeyOption (path: string | undefined): Promise<Uint8Array | undefined> {
  if (path == null) return undefined
  const { loadSwarmKey } = await import('@minga/p2p')
  return await loadSwarmKey(userPath(path))
}

/**
 * Resolves on SIGINT or SIGTERM, with the signal's name, or when the process named by
 * MINGA_PARENT_PID is gone: nodes started by a test or the demo never outlive their starter.
 */
export async function untilSignal (): Promise<string> {
  return await new Promise(resolve => {
    const parent = Number(process.env.MINGA_PARENT_PID)
    const watch = Number.isInteger(parent) && parent > 0
      ? setInterval(() => { if (!isProcessAlive(parent)) stop('parent process exited') }, 1000)
      : undefined
    const stop = (reason: string): void => {
      process.off('SIGINT', stop)
      process.off('SIGTERM', stop)
      clearInterval(watch)
      resolve(reason)
    }
    process.on('SIGINT', stop)
    process.on('SIGTERM', stop)
  })
}

/** `START:END` layers (START < END), or `auto` where allowed. */
export function parseBlocks (value: string): { start: number, end: number } | 'auto' {
  if (value === 'auto') return 'auto'
  const match = /^(\d+):(\d+)$/.exec(value)
  if (match == null || Number(match[1]) >= Number(match[2])) throw new InvalidArgumentError('expected START:END with START < END (e.g. 0:2), or auto.')
  return { start: Number(match[1]), end: Number(match[2]) }
}

export interface RelayFlags { relay?: boolean, relayMaxMb: number, relayMaxDuration: number, relayMaxReservations: number }

/** --relay and its limits (serve and bootstrap). */
export function addRelayOptions (command: Command): Command {
  return command
    .option('--relay', 'relay connections for nodes behind NAT (circuit relay v2), within the limits below')
    .option('--relay-max-mb <MiB>', 'bytes one relayed connection may carry before it is reset', number(0, 1 << 20, { minExclusive: true }), DEFAULT_RELAY_LIMITS.maxBytes / 2 ** 20)
    .option('--relay-max-duration <seconds>', 'how long one relayed connection may last', number(0, 86_400, { minExclusive: true }), DEFAULT_RELAY_LIMITS.maxDurationMs / 1000)
    .option('--relay-max-reservations <n>', 'nodes that may hold a relay slot at once', integer(1), DEFAULT_RELAY_LIMITS.maxReservations)
}

export function relayLimits (flags: RelayFlags): RelayLimits | undefined {
  if (flags.relay !== true) return undefined
  return { maxBytes: Math.round(flags.relayMaxMb * 2 ** 20), maxDurationMs: Math.round(flags.relayMaxDuration * 1000), maxReservations: flags.relayMaxReservations }
}
