// Prepares the client's head once, like a layer: final norm and LM head (quantized a slice of rows at a
// time) in a weights file beside the span's layers, loaded by ORT as external data. Later starts
// neither read the head from the checkpoint nor quantize it again.
import { defaultCacheDir } from '../cache-dir.ts'
import { loadModelConfig } from '../config.ts'
import { buildHeadGraph } from '../graph/head-graph.ts'
import { computeModelId } from '../manifest.ts'
import { HEAD_QUANT_FORMATS, type QuantFormat, type Quantization } from '../quantize.ts'
import { SafetensorsCheckpoint } from '../safetensors.ts'
import { LayerFile } from './layer-file.ts'
import { PreparedStore } from './store.ts'

export const EMBEDDINGS = 'model.embed_tokens.weight'

export interface PrepareHeadInit {
  modelDir: string
  quant: Quantization
  /** The LM head's quantized format (default HEAD_QUANT_FORMATS[quant]). */
  format?: QuantFormat
  /** The cache folder (default: defaultCacheDir()). */
  cacheDir?: string
  /** The checkpoint's model id, if the caller already has it. */
  modelId?: string
  log?: (message: string) => void
}

export interface PreparedHead {
  /** The head's graph file. */
  graph: string
  /** Graph and weights files on disk. */
  bytes: number
  /** Bytes of the final norm and LM head tensors (without the file's page padding). */
  weightBytes: number
  /** Checkpoint bytes read (0 when it was already prepared). */
  bytesRead: number
  built: boolean
}

export function prepareHead (init: PrepareHeadInit): PreparedHead {
  const config = loadModelConfig(init.modelDir)
  const store = new PreparedStore(init.cacheDir ?? defaultCacheDir(), init.modelId ?? computeModelId(init.modelDir), init.quant,
    init.format ?? (init.quant === 'none' ? undefined : HEAD_QUANT_FORMATS[init.quant]))
  const sizing = new LayerFile(store.format, 'sizing')
  buildHeadGraph(config, sizing, EMBEDDINGS)
  const weightBytes = sizing.tensorBytes
  const state = store.check('head')
  if (state.state === 'ok') return { graph: store.headGraphPath(), bytes: state.bytes, weightBytes, bytesRead: 0, built: false }
  if (state.state === 'damaged') init.log?.(`prepared head in ${store.dir} is damaged (${state.reason}), rebuilding`)
  store.removeOlderFormats(init.log)
  const checkpoint = new SafetensorsCheckpoint(init.modelDir)
  try {
    const tied = config.tieWordEmbeddings || !checkpoint.has('lm_head.weight')
    const bytes = store.commit('head', paths => {
      const file = new LayerFile(store.format, store.weightsName('head'))
      file.save(checkpoint, { graph: buildHeadGraph(config, file, tied ? EMBEDDINGS : 'lm_head.weight') }, paths)
    })
    return { graph: store.headGraphPath(), bytes, weightBytes, bytesRead: checkpoint.bytesRead, built: true }
  } finally {
    checkpoint.close()
  }
}
