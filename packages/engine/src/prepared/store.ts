// Where prepared layers live and how an entry is known to be whole. One folder per model id,
// quantization and format version; per layer a graph (layer-N.onnx), its weights (layer-N.weights)
// and a manifest (layer-N.json) with both files' sizes and CRC-32s; the client's head (final norm and
// LM head) is the entry `head` (head.onnx, head.weights, head.json) beside them. Files are written under
// temporary names and renamed; the manifest goes last, so an entry without one is unfinished.
// A file whose inode and modification time are still those the manifest recorded has not been
// touched since it was checksummed, and is not read again: warm starts stay fast. Anything else
// (rewritten, truncated, copied elsewhere) is checksummed in full.
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { crc32 } from 'node:zlib'
import type { Quantization } from '../quantize.ts'

/** Bump when the prepared layout or graph changes: older entries are then never looked at. */
export const PREPARED_FORMAT = 1

/** A decoder layer, or the client's head. */
export type PreparedEntry = number | 'head'

interface Manifest {
  format: number
  modelId: string
  layer: PreparedEntry
  quant: Quantization
  files: Record<string, { bytes: number, crc32: number, stamp: string }>
}

export type LayerState = { state: 'ok', bytes: number } | { state: 'missing' } | { state: 'damaged', reason: string }

export class PreparedStore {
  readonly dir: string

  constructor (cacheDir: string, readonly modelId: string, readonly quant: Quantization) {
    this.dir = join(resolve(cacheDir), 'prepared', modelId, `${quant}-v${PREPARED_FORMAT}`)
  }

  graphPath (layer: PreparedEntry): string { return join(this.dir, `${baseName(layer)}.onnx`) }
  weightsName (layer: PreparedEntry): string { return `${baseName(layer)}.weights` }
  private manifestPath (layer: PreparedEntry): string { return join(this.dir, `${baseName(layer)}.json`) }

  /** Whether layer `layer` is prepared and whole: its manifest, sizes and checksums all agree. */
  check (layer: PreparedEntry): LayerState {
    const files = [`${baseName(layer)}.onnx`, this.weightsName(layer)]
    const manifestPath = this.manifestPath(layer)
    if (!existsSync(manifestPath)) {
      const leftover = files.filter(f => existsSync(join(this.dir, f)))
      return leftover.length === 0 ? { state: 'missing' } : { state: 'damaged', reason: `${leftover.join(' and ')} without a manifest: preparation was interrupted` }
    }
    let manifest: Manifest
    try {
      manifest = JSON.parse(readFileSync(manifestPath, 'utf8'))
    } catch (err: any) {
      return { state: 'damaged', reason: `unreadable manifest: ${err.message}` }
    }
    if (manifest?.format !== PREPARED_FORMAT) return { state: 'damaged', reason: `format ${JSON.stringify(manifest?.format)}, expected ${PREPARED_FORMAT}` }
    if (manifest.modelId !== this.modelId || manifest.layer !== layer || manifest.quant !== this.quant) {
      return { state: 'damaged', reason: `the manifest describes layer ${manifest.layer} of ${manifest.modelId} ${manifest.quant}` }
    }
    let bytes = 0
    for (const file of files) {
      const expected = manifest.files?.[file]
      if (expected == null) return { state: 'damaged', reason: `the manifest does not list ${file}` }
      const path = join(this.dir, file)
      const size = existsSync(path) ? statSync(path).size : -1
      if (size < 0) return { state: 'damaged', reason: `${file} is missing` }
      if (size !== expected.bytes) return { state: 'damaged', reason: `${file} has ${size} bytes, expected ${expected.bytes}` }
      if (stamp(path) !== expected.stamp && fileCrc32(path) !== expected.crc32) return { state: 'damaged', reason: `${file} fails its checksum` }
      bytes += size
    }
    return { state: 'ok', bytes }
  }

  /**
   * Writes layer `layer`: `writeFiles` fills the graph and weights files at the temporary paths it
   * is given; they are checksummed and renamed into place, then the manifest is written.
   */
  commit (layer: PreparedEntry, writeFiles: (paths: { graph: string, weights: string }) => void): number {
    mkdirSync(this.dir, { recursive: true })
    this.removeStale(layer)
    const suffix = `.${process.pid}-${Math.random().toString(36).slice(2, 8)}.tmp`
    const names = { graph: `${baseName(layer)}.onnx`, weights: this.weightsName(layer) }
    const temp = { graph: join(this.dir, names.graph + suffix), weights: join(this.dir, names.weights + suffix) }
    const manifestTemp = this.manifestPath(layer) + suffix
    try {
      writeFiles(temp)
      const manifest: Manifest = { format: PREPARED_FORMAT, modelId: this.modelId, layer, quant: this.quant, files: {} }
      for (const kind of ['graph', 'weights'] as const) {
        manifest.files[names[kind]] = { bytes: statSync(temp[kind]).size, crc32: fileCrc32(temp[kind]), stamp: stamp(temp[kind]) }
      }
      for (const kind of ['graph', 'weights'] as const) renameSync(temp[kind], join(this.dir, names[kind]))
      writeFileSync(manifestTemp, JSON.stringify(manifest, null, 2) + '\n')
      renameSync(manifestTemp, this.manifestPath(layer))
      return Object.values(manifest.files).reduce((n, f) => n + f.bytes, 0)
    } finally {
      for (const path of [temp.graph, temp.weights, manifestTemp]) rmSync(path, { force: true })
    }
  }

  /** Temporary files of this layer left by a process that no longer runs (killed mid-write). */
  private removeStale (layer: PreparedEntry): void {
    const pattern = new RegExp(`^${baseName(layer)}\\.(onnx|weights|json)\\.(\\d+)-\\w+\\.tmp$`)
    for (const name of readdirSync(this.dir)) {
      const match = pattern.exec(name)
      if (match != null && !alive(Number(match[2]))) rmSync(join(this.dir, name), { force: true })
    }
  }
}

function baseName (layer: PreparedEntry): string {
  return layer === 'head' ? 'head' : `layer-${layer}`
}

/** Inode and modification time (ns): a rename keeps both, any write changes the time. */
function stamp (path: string): string {
  const { ino, mtimeNs } = statSync(path, { bigint: true })
  return `${ino}:${mtimeNs}`
}

function fileCrc32 (path: string): number {
  const fd = openSync(path, 'r')
  try {
    const buffer = new Uint8Array(1 << 24)
    let crc = 0
    for (let position = 0; ;) {
      const n = readSync(fd, buffer, 0, buffer.length, position)
      if (n === 0) return crc
      crc = crc32(buffer.subarray(0, n), crc)
      position += n
    }
  } finally {
    closeSync(fd)
  }
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err: any) {
    return err.code === 'EPERM'
  }
}
