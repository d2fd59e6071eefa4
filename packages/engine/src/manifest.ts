// A checkpoint's manifest: its small files and its tensors, each cut into chunks with a SHA-256 per
// chunk. The model id is the CID (v1, raw, sha2-256) of the manifest's canonical encoding, so the id
// alone verifies every byte a peer sends. Hashing reads every weight byte once: manifests of large
// checkpoints are cached, keyed by the files' paths, sizes and modification times.
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs'
import { join, relative, resolve } from 'node:path'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { create as createDigest } from 'multiformats/hashes/digest'
import { sha256 } from 'multiformats/hashes/sha2'
import { defaultCacheDir } from './cache-dir.ts'
import { ModelLoadError } from './errors.ts'
import { SafetensorsCheckpoint } from './safetensors.ts'

export const MANIFEST_VERSION = 1
/** Default chunk size: small enough to refetch cheaply, large enough that a 7B model has a few thousand. */
export const DEFAULT_CHUNK_BYTES = 4 * 2 ** 20
/** The small files a model directory may hold besides its weights, in the manifest when present. */
export const MODEL_FILES = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']
/** Checkpoints below this many weight bytes are hashed every time (it takes milliseconds); larger ones are cached. */
const CACHE_MIN_BYTES = 64 * 2 ** 20

export interface ManifestFile {
  path: string
  size: number
  sha256: string
  /** SHA-256 (hex) of each chunkBytes-sized piece of the file. */
  chunks: string[]
}

export interface ManifestTensor {
  name: string
  dtype: string
  shape: number[]
  /** The safetensors file holding it in the original checkpoint, and its byte range [begin, end) there. */
  file: string
  begin: number
  end: number
  chunks: string[]
}

export interface ModelManifest {
  v: number
  chunkBytes: number
  /** Sorted by path. */
  files: ManifestFile[]
  /** Sorted by name. */
  tensors: ManifestTensor[]
}

export interface LoadedManifest {
  manifest: ModelManifest
  /** The canonical encoding: the model id is its hash. */
  bytes: Uint8Array
  id: string
}

export interface ManifestOptions {
  chunkBytes?: number
  /** Where manifests of large checkpoints are cached (default: defaultCacheDir()); null: never cache. */
  cacheDir?: string | null
}

/** The model id of a model directory: the CID of its manifest (cached for large checkpoints). */
export function computeModelId (modelDir: string, options: ManifestOptions = {}): string {
  return loadManifest(modelDir, options).id
}

/** The manifest of a model directory, from the cache when its files are unchanged. */
export function loadManifest (modelDir: string, options: ManifestOptions = {}): LoadedManifest {
  const chunkBytes = checkChunkBytes(options.chunkBytes ?? DEFAULT_CHUNK_BYTES)
  if (!existsSync(join(modelDir, 'config.json'))) throw new ModelLoadError(`missing file ${join(modelDir, 'config.json')}`)
  const checkpoint = new SafetensorsCheckpoint(modelDir)
  try {
    const weightFiles = [...new Set(checkpoint.entries().map(([, e]) => e.file))].sort()
    const weightBytes = weightFiles.reduce((n, f) => n + statSync(f).size, 0)
    const cacheDir = options.cacheDir === undefined ? defaultCacheDir() : options.cacheDir
    const cacheFile = cacheDir != null && weightBytes >= CACHE_MIN_BYTES
      ? join(cacheDir, 'manifests', `${cacheKey(modelDir, chunkBytes, weightFiles)}.json`)
      : undefined
    if (cacheFile != null && existsSync(cacheFile)) {
      const bytes = new Uint8Array(readFileSync(cacheFile))
      return { manifest: JSON.parse(new TextDecoder().decode(bytes)), bytes, id: manifestId(bytes) }
    }
    const manifest = buildManifest(modelDir, checkpoint, chunkBytes)
    const bytes = encodeManifest(manifest)
    if (cacheFile != null) writeAtomically(cacheFile, bytes)
    return { manifest, bytes, id: manifestId(bytes) }
  } finally {
    checkpoint.close()
  }
}

function buildManifest (modelDir: string, checkpoint: SafetensorsCheckpoint, chunkBytes: number): ModelManifest {
  const files: ManifestFile[] = []
  for (const path of [...MODEL_FILES].sort()) {
    const full = join(modelDir, path)
    if (!existsSync(full)) continue
    const data = readFileSync(full)
    const chunks: string[] = []
    for (let at = 0; at < data.length; at += chunkBytes) chunks.push(sha256Hex(data.subarray(at, at + chunkBytes)))
    files.push({ path, size: data.length, sha256: sha256Hex(data), chunks })
  }
  const tensors: ManifestTensor[] = []
  const buffer = new Uint8Array(chunkBytes)
  for (const [name, entry] of checkpoint.entries().sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)) {
    const size = entry.end - entry.begin
    const chunks: string[] = []
    for (let at = 0; at < size; at += chunkBytes) {
      const piece = buffer.subarray(0, Math.min(chunkBytes, size - at))
      checkpoint.readRaw(name, piece, at)
      chunks.push(sha256Hex(piece))
    }
    tensors.push({ name, dtype: entry.dtype, shape: entry.shape, file: relative(modelDir, entry.file), begin: entry.begin, end: entry.end, chunks })
  }
  return { v: MANIFEST_VERSION, chunkBytes, files, tensors }
}

/** The canonical encoding: JSON with sorted keys and no whitespace, UTF-8. */
export function encodeManifest (manifest: ModelManifest): Uint8Array {
  return new TextEncoder().encode(canonicalJson(manifest))
}

/** The model id of a manifest's bytes: CIDv1 (raw codec, sha2-256), base32 ("bafkrei…"). */
export function manifestId (bytes: Uint8Array): string {
  return CID.create(1, raw.code, createDigest(sha256.code, createHash('sha256').update(bytes).digest())).toString()
}

export function sha256Hex (bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

export function canonicalJson (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value != null && typeof value === 'object') {
    return `{${Object.keys(value).sort().map(k => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(',')}}`
  }
  return JSON.stringify(value)
}

function checkChunkBytes (n: number): number {
  if (!Number.isInteger(n) || n < 1024 || n > 64 * 2 ** 20) throw new ModelLoadError(`chunk size must be an integer from 1 KiB to 64 MiB, got ${n}`)
  return n
}

function cacheKey (modelDir: string, chunkBytes: number, weightFiles: string[]): string {
  const files = [...MODEL_FILES.map(f => join(modelDir, f)).filter(f => existsSync(f)), ...weightFiles]
  const stamp = files.map(f => { const s = statSync(f); return [resolve(f), s.size, s.mtimeMs] })
  return sha256Hex(new TextEncoder().encode(JSON.stringify([MANIFEST_VERSION, chunkBytes, stamp])))
}

function writeAtomically (file: string, bytes: Uint8Array): void {
  try {
    mkdirSync(join(file, '..'), { recursive: true })
    const tmp = `${file}.${process.pid}.tmp`
    writeFileSync(tmp, bytes)
    renameSync(tmp, file)
  } catch {
    // a cache that cannot be written only costs a rehash next time
  }
}
