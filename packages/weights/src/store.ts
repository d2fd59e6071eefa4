// The local content store of one model, <cacheDir>/models/<model id>/: the verified manifest, the
// small files, and one sparse safetensors file whose header lists every tensor of the manifest while
// only the fetched chunks take disk. So the directory is a model directory the engine loads as it
// is, reading only its span's tensors. A chunk is written only once verified, and recorded in
// verified.log only once written: a fetch killed at any point resumes from what the log lists.
import { appendFileSync, closeSync, existsSync, fstatSync, ftruncateSync, linkSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { defaultCacheDir, encodeManifest, type ModelManifest } from '@minga/engine'
import { ChunkRangeError, StoreError } from './errors.ts'
import { chunkMatches, chunkTable, modelCid, verifyManifest, type Chunk } from './manifest.ts'

const WEIGHTS_FILE = 'model.safetensors'
const MANIFEST_FILE = 'manifest.json'
const LOG_FILE = 'verified.log'

/** What a provider serves: a model's manifest and the chunks it holds. */
export interface WeightSource {
  readonly modelId: string
  readonly manifestBytes: Uint8Array
  readonly chunks: Chunk[]
  has (index: number): boolean
  read (chunk: Chunk): Uint8Array
}

export interface WeightStoreInit {
  modelId: string
  /** Default: defaultCacheDir() (MINGA_CACHE, or ~/.cache/minga); the store is <cacheDir>/models/<id>. */
  cacheDir?: string
}

export interface WeightStore {
  readonly modelId: string
  /** The model directory the engine reads. */
  readonly dir: string
  /** The verified manifest, if the store has one. */
  readonly manifest: ModelManifest | undefined
  /** Verifies and keeps a manifest received from a peer, and prepares the weights file. */
  setManifest (bytes: Uint8Array): ModelManifest
  readonly chunks: Chunk[]
  has (index: number): boolean
  /** Verifies a chunk's bytes and writes them (false, and nothing written, if they do not match). */
  write (chunk: Chunk, bytes: Uint8Array): boolean
  read (chunk: Chunk): Uint8Array
  /** Chunks of these tensors (by name) and of every small file, in manifest order. */
  chunksOf (tensors: string[]): Chunk[]
  /** A provider's view of the store: serves what it holds. */
  source (): WeightSource
  close (): void
}

export function createWeightStore (init: WeightStoreInit): WeightStore {
  modelCid(init.modelId)
  return new LocalWeightStore(init.modelId, join(init.cacheDir ?? defaultCacheDir(), 'models', init.modelId))
}

class LocalWeightStore implements WeightStore {
  manifest: ModelManifest | undefined
  chunks: Chunk[] = []
  private manifestBytes: Uint8Array | undefined
  private readonly verified = new Set<number>()
  /** Data offset of each tensor in the weights file. */
  private tensorOffsets: number[] = []
  private fd: number | undefined
  /** Verified chunks of small files not yet complete (files are written whole). */
  private readonly pending = new Map<number, Map<number, Uint8Array>>()

  constructor (readonly modelId: string, readonly dir: string) {
    mkdirSync(dir, { recursive: true })
    const manifestFile = join(dir, MANIFEST_FILE)
    if (existsSync(manifestFile)) {
      try {
        this.open(new Uint8Array(readFileSync(manifestFile)))
      } catch {
        rmSync(manifestFile, { force: true }) // a manifest that no longer verifies is refetched
      }
    }
  }

  setManifest (bytes: Uint8Array): ModelManifest {
    if (this.manifest != null) return this.manifest
    const manifest = this.open(bytes)
    writeAtomically(join(this.dir, MANIFEST_FILE), bytes)
    return manifest
  }

  private open (bytes: Uint8Array): ModelManifest {
    const manifest = verifyManifest(bytes, this.modelId)
    this.manifestBytes = bytes
    this.chunks = chunkTable(manifest)
    const { header, offsets, dataBytes } = safetensorsHeader(manifest, this.modelId)
    const weights = join(this.dir, WEIGHTS_FILE)
    if (!existsSync(weights)) {
      // header, then holes: a sparse file takes disk only where chunks are written
      const tmp = `${weights}.${process.pid}.tmp`
      const fd = openSync(tmp, 'w')
      try {
        writeSync(fd, header, 0, header.length, 0)
        ftruncateSync(fd, header.length + dataBytes)
      } finally {
        closeSync(fd)
      }
      try {
        linkSync(tmp, weights) // never replaces a file another process made meanwhile
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new StoreError(`cannot create ${weights}: ${(err as Error).message}`)
      } finally {
        rmSync(tmp, { force: true })
      }
    }
    this.fd = openSync(weights, 'r+')
    if (fstatSync(this.fd).size !== header.length + dataBytes) throw new StoreError(`${weights} does not match the manifest of ${this.modelId}; delete ${this.dir} to start over`)
    this.tensorOffsets = offsets.map(o => o + header.length)
    this.manifest = manifest
    this.loadLog()
    return manifest
  }

  private loadLog (): void {
    const manifest = this.manifest!
    const log = join(this.dir, LOG_FILE)
    if (existsSync(log)) {
      const lines = readFileSync(log, 'utf8').split('\n')
      lines.pop() // '' after the last newline, or a line cut short (a crash mid-write): its chunk is fetched again
      for (const line of lines) {
        if (!/^\d+$/.test(line)) continue
        const index = Number(line)
        if (index < this.chunks.length && this.chunks[index].kind === 'tensor') this.verified.add(index)
      }
    }
    for (const chunk of this.chunks) {
      if (chunk.kind === 'file' && existsSync(join(this.dir, manifest.files[chunk.item].path))) this.verified.add(chunk.index)
    }
  }

  has (index: number): boolean {
    return this.verified.has(index)
  }

  write (chunk: Chunk, bytes: Uint8Array): boolean {
    const manifest = this.requireManifest()
    if (this.chunks[chunk.index]?.sha256 !== chunk.sha256) throw new ChunkRangeError(`chunk ${chunk.index} is not a chunk of ${this.modelId}`)
    if (!chunkMatches(chunk, bytes)) return false
    if (this.verified.has(chunk.index)) return true
    if (chunk.kind === 'tensor') {
      writeFully(this.fd!, bytes, this.tensorOffsets[chunk.item] + chunk.offset)
      appendFileSync(join(this.dir, LOG_FILE), `${chunk.index}\n`)
      this.verified.add(chunk.index)
      return true
    }
    const file = manifest.files[chunk.item]
    const pieces = this.pending.get(chunk.item) ?? new Map<number, Uint8Array>()
    this.pending.set(chunk.item, pieces)
    pieces.set(chunk.index, new Uint8Array(bytes))
    const indices = this.chunks.filter(c => c.kind === 'file' && c.item === chunk.item)
    if (indices.every(c => pieces.has(c.index))) {
      writeAtomically(join(this.dir, file.path), concat(indices.map(c => pieces.get(c.index)!), file.size))
      for (const c of indices) this.verified.add(c.index)
      this.pending.delete(chunk.item)
    }
    return true
  }

  read (chunk: Chunk): Uint8Array {
    const manifest = this.requireManifest()
    if (!this.verified.has(chunk.index)) throw new ChunkRangeError(`chunk ${chunk.index} of ${this.modelId} is not in the store`)
    const out = new Uint8Array(chunk.length)
    if (chunk.kind === 'tensor') {
      readFully(this.fd!, out, this.tensorOffsets[chunk.item] + chunk.offset)
    } else {
      const data = readFileSync(join(this.dir, manifest.files[chunk.item].path))
      out.set(data.subarray(chunk.offset, chunk.offset + chunk.length))
    }
    return out
  }

  chunksOf (tensors: string[]): Chunk[] {
    const manifest = this.requireManifest()
    const wanted = new Set(tensors)
    return this.chunks.filter(c => c.kind === 'file' || wanted.has(manifest.tensors[c.item].name))
  }

  source (): WeightSource {
    const manifestBytes = this.manifestBytes ?? encodeManifest(this.requireManifest())
    return {
      modelId: this.modelId,
      manifestBytes,
      chunks: this.chunks,
      has: index => this.verified.has(index),
      read: chunk => this.read(chunk)
    }
  }

  close (): void {
    if (this.fd != null) closeSync(this.fd)
    this.fd = undefined
  }

  private requireManifest (): ModelManifest {
    if (this.manifest == null) throw new StoreError(`the store of ${this.modelId} has no manifest yet`)
    return this.manifest
  }
}

/** A provider's view of a complete model directory (the original checkpoint). */
export function directorySource (modelDir: string, modelId: string, manifestBytes: Uint8Array, manifest: ModelManifest): WeightSource {
  const chunks = chunkTable(manifest)
  return {
    modelId,
    manifestBytes,
    chunks,
    has: index => index >= 0 && index < chunks.length,
    read: chunk => {
      const out = new Uint8Array(chunk.length)
      const path = chunk.kind === 'file' ? manifest.files[chunk.item].path : manifest.tensors[chunk.item].file
      const base = chunk.kind === 'file' ? 0 : manifest.tensors[chunk.item].begin
      const fd = openSync(join(modelDir, path), 'r')
      try {
        readFully(fd, out, base + chunk.offset)
      } finally {
        closeSync(fd)
      }
      return out
    }
  }
}

function safetensorsHeader (manifest: ModelManifest, modelId: string): { header: Uint8Array, offsets: number[], dataBytes: number } {
  const entries: Record<string, unknown> = { __metadata__: { format: 'pt', minga_model_id: modelId } }
  const offsets: number[] = []
  let at = 0
  for (const t of manifest.tensors) {
    offsets.push(at)
    entries[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.end - t.begin] }
    at += t.end - t.begin
  }
  let json = JSON.stringify(entries)
  json += ' '.repeat((8 - (json.length % 8)) % 8) // data starts 8-byte aligned
  const text = new TextEncoder().encode(json)
  const header = new Uint8Array(8 + text.length)
  new DataView(header.buffer).setBigUint64(0, BigInt(text.length), true)
  header.set(text, 8)
  return { header, offsets, dataBytes: at }
}

function concat (parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size)
  let at = 0
  for (const p of parts) { out.set(p, at); at += p.length }
  return out
}

function writeFully (fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done, bytes.length - done, position + done)
}

function readFully (fd: number, target: Uint8Array, position: number): void {
  for (let done = 0; done < target.length;) {
    const n = readSync(fd, target, done, target.length - done, position + done)
    if (n === 0) throw new StoreError('a weights file ended early (truncated?)')
    done += n
  }
}

function writeAtomically (file: string, bytes: Uint8Array): void {
  const tmp = `${file}.${process.pid}.tmp`
  writeFileSync(tmp, bytes)
  renameSync(tmp, file)
}
