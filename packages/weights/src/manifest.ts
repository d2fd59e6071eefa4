// Manifests on the wire: checking one against its model id, numbering its chunks, and choosing the
// tensors a span or a client needs. Building and encoding live in @minga/engine (the model id is
// computed there, and the engine depends on nothing of ours).
import { createHash } from 'node:crypto'
import { loadManifest, manifestId, type LoadedManifest, type ManifestOptions, type ModelManifest } from '@minga/engine'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { InvalidModelIdError, ManifestError } from './errors.ts'

/** Builds (or loads from the cache) the manifest of a model directory, with its model id. */
export function buildManifest (modelDir: string, options: ManifestOptions = {}): LoadedManifest {
  return loadManifest(modelDir, options)
}

/** The CID a model id stands for (the DHT key of its providers); InvalidModelIdError if it is not one. */
export function modelCid (modelId: string): CID {
  let cid: CID
  try {
    cid = CID.parse(modelId)
  } catch (err) {
    throw new InvalidModelIdError(`"${modelId}" is not a model id (expected a CID like bafkrei…, see \`minga manifest\`): ${(err as Error).message}`)
  }
  if (cid.version !== 1 || cid.code !== raw.code || cid.multihash.code !== sha256.code || cid.toString() !== modelId) {
    throw new InvalidModelIdError(`"${modelId}" is not a model id (expected a base32 CIDv1 of a raw sha2-256 hash, see \`minga manifest\`)`)
  }
  return cid
}

/** Parses manifest bytes received from a peer: they must hash to the model id and be well formed. */
export function verifyManifest (bytes: Uint8Array, modelId: string): ModelManifest {
  modelCid(modelId)
  const actual = manifestId(bytes)
  if (actual !== modelId) throw new ManifestError(`the manifest received hashes to ${actual}, not to the model id ${modelId}`)
  let value: any
  try {
    value = JSON.parse(new TextDecoder().decode(bytes))
  } catch (err) {
    throw new ManifestError(`the manifest of ${modelId} is not JSON: ${(err as Error).message}`)
  }
  checkManifest(value)
  return value
}

const HEX64 = /^[0-9a-f]{64}$/

function checkManifest (m: any): asserts m is ModelManifest {
  const fail = (what: string): never => { throw new ManifestError(`malformed manifest: ${what}`) }
  if (m == null || typeof m !== 'object' || m.v !== 1) fail('not a version 1 manifest')
  if (!Number.isInteger(m.chunkBytes) || m.chunkBytes < 1024 || m.chunkBytes > 64 * 2 ** 20) fail('bad chunkBytes')
  if (!Array.isArray(m.files) || !Array.isArray(m.tensors)) fail('files and tensors must be lists')
  const chunksOk = (chunks: unknown, size: number): boolean =>
    Array.isArray(chunks) && chunks.length === Math.ceil(size / m.chunkBytes) && chunks.every(c => typeof c === 'string' && HEX64.test(c))
  for (const f of m.files) {
    if (typeof f?.path !== 'string' || !/^[\w.-]+$/.test(f.path) || f.path.startsWith('.')) fail(`bad file path ${JSON.stringify(f?.path)}`)
    if (!Number.isSafeInteger(f.size) || f.size < 0 || typeof f.sha256 !== 'string' || !HEX64.test(f.sha256) || !chunksOk(f.chunks, f.size)) fail(`bad file entry ${f.path}`)
  }
  for (const t of m.tensors) {
    if (typeof t?.name !== 'string' || t.name.length === 0 || t.name.length > 512 || typeof t.dtype !== 'string' || typeof t.file !== 'string') fail('bad tensor entry')
    if (!Array.isArray(t.shape) || !t.shape.every((d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0)) fail(`bad shape of ${t.name}`)
    if (!Number.isSafeInteger(t.begin) || !Number.isSafeInteger(t.end) || t.begin < 0 || t.end < t.begin || !chunksOk(t.chunks, t.end - t.begin)) fail(`bad byte range of ${t.name}`)
  }
}

/** One chunk of a manifest, numbered across its files (first) and then its tensors, in manifest order. */
export interface Chunk {
  index: number
  kind: 'file' | 'tensor'
  /** Index into manifest.files or manifest.tensors. */
  item: number
  /** Offset within the file or the tensor's data. */
  offset: number
  length: number
  sha256: string
}

export function chunkTable (manifest: ModelManifest): Chunk[] {
  const out: Chunk[] = []
  const add = (kind: Chunk['kind'], item: number, size: number, hashes: string[]): void => {
    hashes.forEach((sha256, i) => {
      const offset = i * manifest.chunkBytes
      out.push({ index: out.length, kind, item, offset, length: Math.min(manifest.chunkBytes, size - offset), sha256 })
    })
  }
  manifest.files.forEach((f, i) => { add('file', i, f.size, f.chunks) })
  manifest.tensors.forEach((t, i) => { add('tensor', i, t.end - t.begin, t.chunks) })
  return out
}

export function chunkMatches (chunk: Chunk, bytes: Uint8Array): boolean {
  return bytes.length === chunk.length && createHash('sha256').update(bytes).digest('hex') === chunk.sha256
}

/** What to fetch: the tensors of decoder layers [start, end), and/or what a client runs. */
export interface TensorSelection {
  blocks?: { start: number, end: number }
  /** Embeddings, final norm and (unless tied) the LM head. */
  head?: boolean
  /** Every tensor. */
  all?: boolean
}

/** Names of the manifest's tensors a selection covers; `tied`: the LM head is the embedding matrix. */
export function selectTensors (manifest: ModelManifest, selection: TensorSelection, tied: boolean): string[] {
  const layer = /^model\.layers\.(\d+)\./
  return manifest.tensors.map(t => t.name).filter(name => {
    if (selection.all === true) return true
    const m = layer.exec(name)
    if (m != null) return selection.blocks != null && Number(m[1]) >= selection.blocks.start && Number(m[1]) < selection.blocks.end
    if (selection.head !== true) return false
    return name === 'model.embed_tokens.weight' || name === 'model.norm.weight' || (name === 'lm_head.weight' && !tied)
  })
}
