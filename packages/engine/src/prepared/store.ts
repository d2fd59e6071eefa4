// Where prepared layers live and how an entry is known to be whole. One folder per model id,
// quantization with its block format (preparedDirName) and format version; per layer its two graphs
// (layer-N.pre.onnx: norm, QKV and rotary; layer-N.post.onnx: output projection and MLP; attention runs between them, per session), their
// weights (layer-N.weights) and a manifest (layer-N.json) with the files' sizes and CRC-32s; the
// client's head (final norm and LM head) is the entry `head` (head.onnx, head.weights, head.json)
// beside them. Files are written under
// temporary names and renamed; the manifest goes last, so an entry without one is unfinished.
// A file whose inode and modification time are still those the manifest recorded has not been
// touched since it was checksummed, and is not read again: warm starts stay fast. Anything else
// (rewritten, truncated, copied elsewhere) is checksummed in full.
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { crc32 } from 'node:zlib'
import { formatLabel, quantFormat, type QuantFormat, type Quantization } from '../quantize.ts'
import { isProcessAlive } from '../process-alive.ts'

/** Bump when the prepared layout or graph changes: older entries are then never looked at. */
export const PREPARED_FORMAT = 3

/**
 * Folders of formats that were a quantization's default and no longer are any (int8 layers were
 * block 128 until per-row int7): nothing loads them unless a caller names that format, and they are
 * as large as the span, so preparing that quantization anew removes them.
 */
const RETIRED_DEFAULTS = ['int8-b128-v3']

/**
 * The folder of a quantization in its format, e.g. `int4-b32-v3` (`none-v3` for f32): entries of
 * another block size or zero-point choice live elsewhere, so changing a default never misreads them.
 */
export function preparedDirName (quant: Quantization, format?: QuantFormat): string {
  const resolved = quantFormat(quant, format)
  return resolved == null ? `${quant}-v${PREPARED_FORMAT}` : `${quant}-${formatLabel(resolved)}-v${PREPARED_FORMAT}`
}

/** A decoder layer, or the client's head. */
export type PreparedEntry = number | 'head'

interface Manifest {
  format: number
  modelId: string
  layer: PreparedEntry
  quant: Quantization
  /** formatLabel of the quantization's format. */
  quantFormat: string
  files: Record<string, { bytes: number, crc32: number, stamp: string }>
}

/** The files of one prepared entry: a layer's two graphs or the head's one, and its weights. */
export type EntryFiles = { pre: string, post: string, weights: string } | { graph: string, weights: string }

export type LayerState = { state: 'ok', bytes: number } | { state: 'missing' } | { state: 'damaged', reason: string }

export class PreparedStore {
  readonly dir: string
  /** The linear weights' format (undefined: f32). */
  readonly format: QuantFormat | undefined

  /** `format`: the quantization's own (QUANT_FORMATS) unless given. */
  constructor (cacheDir: string, readonly modelId: string, readonly quant: Quantization, format?: QuantFormat) {
    this.format = quantFormat(quant, format)
    this.dir = join(resolve(cacheDir), 'prepared', modelId, preparedDirName(quant, this.format))
  }

  /** The graphs of layer `layer` (before and after attention). */
  graphPaths (layer: number): { pre: string, post: string } {
    const names = layerFiles(layer)
    return { pre: join(this.dir, names.pre), post: join(this.dir, names.post) }
  }

  /** The head's graph. */
  headGraphPath (): string { return join(this.dir, 'head.onnx') }

  weightsName (entry: PreparedEntry): string { return `${baseName(entry)}.weights` }
  private fileNames (entry: PreparedEntry): EntryFiles {
    return entry === 'head' ? { graph: 'head.onnx', weights: this.weightsName(entry) } : layerFiles(entry)
  }

  private manifestPath (entry: PreparedEntry): string { return join(this.dir, `${baseName(entry)}.json`) }

  /** Whether layer `layer` is prepared and whole: its manifest, sizes and checksums all agree. */
  check (layer: PreparedEntry): LayerState {
    const files = Object.values(this.fileNames(layer))
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
    if (manifest.modelId !== this.modelId || manifest.layer !== layer || manifest.quant !== this.quant || manifest.quantFormat !== formatLabel(this.format)) {
      return { state: 'damaged', reason: `the manifest describes layer ${manifest.layer} of ${manifest.modelId} ${manifest.quant} ${manifest.quantFormat}` }
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
  commit (layer: number, writeFiles: (paths: { pre: string, post: string, weights: string }) => void): number
  commit (layer: 'head', writeFiles: (paths: { graph: string, weights: string }) => void): number
  commit (layer: PreparedEntry, writeFiles: (paths: any) => void): number {
    mkdirSync(this.dir, { recursive: true })
    this.removeStale(layer)
    const suffix = `.${process.pid}-${Math.random().toString(36).slice(2, 8)}.tmp`
    const names: Record<string, string> = this.fileNames(layer)
    const kinds = Object.keys(names)
    const temp: Record<string, string> = Object.fromEntries(kinds.map(kind => [kind, join(this.dir, names[kind] + suffix)]))
    const manifestTemp = this.manifestPath(layer) + suffix
    try {
      writeFiles(temp)
      const manifest: Manifest = { format: PREPARED_FORMAT, modelId: this.modelId, layer, quant: this.quant, quantFormat: formatLabel(this.format), files: {} }
      for (const kind of kinds) {
        manifest.files[names[kind]] = { bytes: statSync(temp[kind]).size, crc32: fileCrc32(temp[kind]), stamp: stamp(temp[kind]) }
      }
      for (const kind of kinds) renameSync(temp[kind], join(this.dir, names[kind]))
      writeFileSync(manifestTemp, JSON.stringify(manifest, null, 2) + '\n')
      renameSync(manifestTemp, this.manifestPath(layer))
      return Object.values(manifest.files).reduce((n, f) => n + f.bytes, 0)
    } finally {
      for (const path of [...Object.values(temp), manifestTemp]) rmSync(path, { force: true })
    }
  }

  /**
   * Removes this model's folders of the same quantization in older formats or retired defaults, saying so in `log`:
   * they are never read again, and a new version of minga would otherwise leave gigabytes behind.
   * Nodes starting together may all try: the one whose rename succeeds removes the folder.
   */
  removeOlderFormats (log?: (message: string) => void): void {
    const parent = dirname(this.dir)
    if (!existsSync(parent)) return
    // (int4-v2 named no block format yet; int4-b128-v3 and later do; .removing-PID: one being removed)
    const pattern = new RegExp(`^${this.quant}(?:-b\\d+(?:-sym)?)?-v(\\d+)(?:\\.removing-(\\d+))?$`)
    for (const name of readdirSync(parent)) {
      const match = pattern.exec(name)
      if (match == null || join(parent, name) === this.dir) continue // (a caller may name a retired format)
      const retired = RETIRED_DEFAULTS.includes(name.replace(/\.removing-\d+$/, ''))
      if (Number(match[1]) >= PREPARED_FORMAT && !retired) continue
      if (match[2] != null && isProcessAlive(Number(match[2]))) continue
      const claimed = join(parent, `${name.replace(/\.removing-\d+$/, '')}.removing-${process.pid}`)
      try {
        renameSync(join(parent, name), claimed)
      } catch {
        continue // another node got there first
      }
      let bytes = 0
      for (const file of readdirSync(claimed)) bytes += statSync(join(claimed, file)).size
      rmSync(claimed, { recursive: true, force: true })
      log?.(`removed ${(bytes / 2 ** 20).toFixed(0)} MB of prepared layers in ${retired ? 'a format that is no longer a default' : 'an older format'} (${join(parent, name)})`)
    }
  }

  /** Temporary files of this layer left by a process that no longer runs (killed mid-write). */
  private removeStale (layer: PreparedEntry): void {
    const pattern = new RegExp(`^${baseName(layer)}\\.(pre\\.onnx|post\\.onnx|onnx|weights|json)\\.(\\d+)-\\w+\\.tmp$`)
    for (const name of readdirSync(this.dir)) {
      const match = pattern.exec(name)
      if (match != null && !isProcessAlive(Number(match[2]))) rmSync(join(this.dir, name), { force: true })
    }
  }
}

function baseName (entry: PreparedEntry): string {
  return entry === 'head' ? 'head' : `layer-${entry}`
}

function layerFiles (layer: number): { pre: string, post: string, weights: string } {
  return { pre: `layer-${layer}.pre.onnx`, post: `layer-${layer}.post.onnx`, weights: `layer-${layer}.weights` }
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
