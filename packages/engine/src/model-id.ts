// A model's identity in the swarm, derived from its checkpoint so that different models never mix:
// the parsed config, every safetensors header (names, dtypes, shapes, offsets) and samples of the
// weight bytes (a fine-tune keeps the headers but not the values). Cheap: no full read of the weights.
import { createHash } from 'node:crypto'
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs'
import { join } from 'node:path'
import { ModelLoadError } from './errors.ts'

const SAMPLES_PER_FILE = 16
const SAMPLE_BYTES = 4096

export function computeModelId (modelDir: string): string {
  const hash = createHash('sha256')
  const configPath = join(modelDir, 'config.json')
  if (!existsSync(configPath)) throw new ModelLoadError(`missing file ${configPath}`)
  hash.update(canonicalJson(JSON.parse(readFileSync(configPath, 'utf8'))))
  for (const file of weightFiles(modelDir)) {
    const fd = openSync(join(modelDir, file), 'r')
    try {
      const size = fstatSync(fd).size
      const sample = new Uint8Array(SAMPLE_BYTES)
      for (let i = 0; i < SAMPLES_PER_FILE; i++) {
        const offset = Math.floor(((size - SAMPLE_BYTES) * i) / (SAMPLES_PER_FILE - 1))
        const n = readSync(fd, sample, 0, SAMPLE_BYTES, Math.max(0, offset))
        hash.update(sample.subarray(0, n))
      }
      hash.update(String(size))
    } finally {
      closeSync(fd)
    }
  }
  return hash.digest('hex').slice(0, 24)
}

function weightFiles (modelDir: string): string[] {
  if (existsSync(join(modelDir, 'model.safetensors'))) return ['model.safetensors']
  const index = join(modelDir, 'model.safetensors.index.json')
  if (!existsSync(index)) throw new ModelLoadError(`missing weights in ${modelDir}: neither model.safetensors nor model.safetensors.index.json`)
  return [...new Set(Object.values<string>(JSON.parse(readFileSync(index, 'utf8')).weight_map))].sort()
}

function canonicalJson (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value != null && typeof value === 'object') {
    return `{${Object.keys(value).sort().map(k => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(',')}}`
  }
  return JSON.stringify(value)
}
