// Private swarms: a pre-shared key (libp2p pnet, the same file format as IPFS's swarm.key) that every
// node of the swarm holds. Connections are encrypted with it before anything else happens, so a
// peer without the key (or with another one) cannot take part at all: no DHT, no inference.
//
// The file is three lines: `/key/swarm/psk/1.0.0/`, `/base16/`, then 32 random bytes in hex.

import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { generateKey } from '@libp2p/pnet'
import { SwarmKeyError } from './errors.ts'

const HEADER = '/key/swarm/psk/1.0.0/'
const CODEC = '/base16/'
/** Bytes of a key file as generateKey writes it (header, codec, 64 hex digits, two newlines). */
const KEY_FILE_BYTES = HEADER.length + CODEC.length + 64 + 2

/** A new random swarm key, in the file format `preSharedKey` (and `createMingaNode`'s `swarmKey`) takes. */
export function generateSwarmKey (): Uint8Array {
  const key = new Uint8Array(KEY_FILE_BYTES)
  generateKey(key)
  return key
}

/**
 * Checks a swarm key file's contents and returns them normalized (lowercase hex, no trailing
 * newline); throws SwarmKeyError naming `source` if they are not a libp2p v1 pre-shared key.
 */
export function parseSwarmKey (bytes: Uint8Array, source = 'the swarm key'): Uint8Array {
  const lines = new TextDecoder('utf-8', { fatal: false }).decode(bytes).split(/\r\n|\r|\n/)
  while (lines.length > 0 && lines[lines.length - 1].trim() === '') lines.pop()
  const [header, codec, hex] = lines.map(l => l.trim())
  if (lines.length !== 3 || header !== HEADER || codec !== CODEC || !/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new SwarmKeyError(`${source} is not a swarm key: expected the lines "${HEADER}", "${CODEC}" and 64 hex digits (create one with \`minga keygen --swarm-key FILE\`)`)
  }
  return new TextEncoder().encode(`${HEADER}\n${CODEC}\n${hex.toLowerCase()}`)
}

/** Reads and checks a swarm key file. */
export async function loadSwarmKey (file: string): Promise<Uint8Array> {
  let bytes: Uint8Array
  try {
    bytes = await readFile(file)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw new SwarmKeyError(`swarm key file ${file} does not exist (create one with \`minga keygen --swarm-key ${file}\`, or copy the swarm's key there)`)
    throw new SwarmKeyError(`cannot read swarm key file ${file}: ${(err as Error).message}`)
  }
  return parseSwarmKey(bytes, `swarm key file ${file}`)
}

/**
 * Writes a new swarm key to `file` with mode 0600 and returns it. Refuses to replace an existing
 * file unless `force` (replacing a key splits the swarm: every node needs the new file).
 */
export async function writeSwarmKey (file: string, { force = false } = {}): Promise<Uint8Array> {
  const key = generateSwarmKey()
  try {
    await mkdir(dirname(file), { recursive: true })
    await writeFile(file, key, { mode: 0o600, flag: force ? 'w' : 'wx' })
    // an existing file keeps its mode on overwrite: tighten it
    if (force) await chmod(file, 0o600)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') throw new SwarmKeyError(`${file} already exists; not replacing it (use --force to overwrite: every node of the swarm would then need the new key)`)
    throw new SwarmKeyError(`cannot write swarm key file ${file}: ${(err as Error).message}`)
  }
  return key
}
