// Prepares a span once: each layer converted (and quantized) from the checkpoint into an ONNX graph
// with external weights in the cache folder. Later loads find the layers prepared and never read the
// checkpoint's tensors. Layers are stored one by one, so a prepared [0, 22) also serves [0, 8).
import { loadModelConfig, type ModelConfig } from '../config.ts'
import { InvalidArgumentError } from '../errors.ts'
import { buildLayerGraphs } from '../graph/span-graph.ts'
import { computeModelId } from '../manifest.ts'
import { DEFAULT_QUANT, quantFormat, type QuantFormat, type Quantization } from '../quantize.ts'
import { rotaryTables } from '../rope.ts'
import { SafetensorsCheckpoint } from '../safetensors.ts'
import { LayerFile } from './layer-file.ts'
import { defaultCacheDir } from '../cache-dir.ts'
import { PreparedStore } from './store.ts'

export interface PrepareSpanInit {
  modelDir: string
  /** Layers [start, end). */
  start: number
  end: number
  /** Default DEFAULT_QUANT (int8); 'none' keeps f32. */
  quant?: Quantization
  /** The quantized weights' block size and zero points (default QUANT_FORMATS[quant]; for measuring other formats). */
  format?: QuantFormat
  /** The cache folder; layers go under its prepared/. Default: defaultCacheDir() ($MINGA_CACHE, $XDG_CACHE_HOME/minga or ~/.cache/minga). */
  cacheDir?: string
  /** The checkpoint's model id, if the caller already has it. */
  modelId?: string
  /** Called after each layer that had to be prepared. */
  onProgress?: (progress: PrepareProgress) => void
  /** Damaged entries being rebuilt, and similar notes. */
  log?: (message: string) => void
}

export interface PrepareProgress {
  layer: number
  /** Layers prepared so far in this call, of `total` that needed it. */
  done: number
  total: number
}

export interface PreparedSpan {
  /** The folder of this model and quantization. */
  dir: string
  /** The graph files of each layer, in order. */
  graphs: Array<{ pre: string, post: string }>
  /** Layers that were prepared by this call (the others were already there). */
  built: number[]
  /** Size of the prepared span on disk (graphs and weights). */
  bytes: number
  /** Checkpoint bytes read (0 when every layer was already prepared). */
  bytesRead: number
}

/** The store of `init`'s span and its layers, once the span is checked against the model. */
function spanStore (init: PrepareSpanInit): { config: ModelConfig, store: PreparedStore, layers: number[] } {
  const config = loadModelConfig(init.modelDir)
  const { start, end } = init
  if (!(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start < end && end <= config.numLayers)) {
    throw new InvalidArgumentError(`span [${start}, ${end}) is not within the model's ${config.numLayers} layers`)
  }
  const store = new PreparedStore(init.cacheDir ?? defaultCacheDir(), init.modelId ?? computeModelId(init.modelDir), init.quant ?? DEFAULT_QUANT, init.format)
  return { config, store, layers: Array.from({ length: end - start }, (_, i) => start + i) }
}

/** Whether every layer of the span is prepared and whole (nothing is read but the manifests and file stamps). */
export function isSpanPrepared (init: PrepareSpanInit): boolean {
  const { store, layers } = spanStore(init)
  return layers.every(layer => store.check(layer).state === 'ok')
}

export async function prepareSpan (init: PrepareSpanInit): Promise<PreparedSpan> {
  const { config, store, layers } = spanStore(init)
  let bytes = 0
  const missing: number[] = []
  for (const layer of layers) {
    const state = store.check(layer)
    if (state.state === 'ok') {
      bytes += state.bytes
      continue
    }
    if (state.state === 'damaged') {
      // (rebuilt files replace it by rename: a process still reading the old ones is not disturbed)
      init.log?.(`prepared layer ${layer} in ${store.dir} is damaged (${state.reason}), rebuilding`)
    }
    missing.push(layer)
  }

  let bytesRead = 0
  if (missing.length > 0) {
    store.removeOlderFormats(init.log)
    const checkpoint = new SafetensorsCheckpoint(init.modelDir)
    const rotary = { ...rotaryTables(config, config.maxPositionEmbeddings), positions: config.maxPositionEmbeddings }
    try {
      for (const [i, layer] of missing.entries()) {
        bytes += store.commit(layer, paths => { writeLayer(checkpoint, config, store.format, layer, rotary, paths, store.weightsName(layer)) })
        init.onProgress?.({ layer, done: i + 1, total: missing.length })
        // let the event loop breathe between layers (progress bars, signals)
        await new Promise(resolve => setImmediate(resolve))
      }
    } finally {
      bytesRead = checkpoint.bytesRead
      checkpoint.close()
    }
  }
  return { dir: store.dir, graphs: layers.map(l => store.graphPaths(l)), built: missing, bytes, bytesRead }
}

/** Bytes a prepared span of `layers` layers takes (weights files; the graphs add a few KB each). */
export function preparedSpanBytes (config: ModelConfig, quant: Quantization, layers: number, format?: QuantFormat): number {
  const file = new LayerFile(quantFormat(quant, format), 'sizing')
  // (a LayerFile sizes tensors by their dims, so empty rotary tables will do)
  buildLayerGraphs(config, 0, file, { cos: new Float32Array(0), sin: new Float32Array(0), positions: config.maxPositionEmbeddings })
  return file.bytes * layers
}

function writeLayer (checkpoint: SafetensorsCheckpoint, config: ModelConfig, format: QuantFormat | undefined, layer: number,
  rotary: { cos: Float32Array, sin: Float32Array, positions: number }, paths: { pre: string, post: string, weights: string }, weightsName: string): void {
  const file = new LayerFile(format, weightsName)
  const { pre, post } = buildLayerGraphs(config, layer, file, rotary)
  file.save(checkpoint, { pre, post }, paths)
}
