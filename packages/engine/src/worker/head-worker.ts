// Worker: the client's own part of the model — token embeddings, final norm and LM head.
// Embeddings are read from the checkpoint row by row as tokens need them (a row is a few KB, and
// the OS page cache keeps the hot ones), so the vocab × hidden f32 matrix is never held here; the
// LM head is quantized a chunk of rows at a time, even when it is tied to the embeddings.
import * as ort from 'onnxruntime-node'
import { loadModelConfig, type ModelConfig } from '../config.ts'
import { InvalidArgumentError, ShapeError } from '../errors.ts'
import { buildHeadGraph, HEAD_IO, type HeadWeight } from '../graph/head-graph.ts'
import { quantizeByRows, quantizedBytes, type Quantization } from '../quantize.ts'
import { SafetensorsCheckpoint } from '../safetensors.ts'
import { collectGarbage } from './collect-garbage.ts'
import { sessionOptions } from './ort-options.ts'
import { serveRequests, Transfer } from './rpc.ts'

export interface HeadLoadArgs { modelDir: string, headQuant: Quantization, threads?: number }

export interface HeadLoadResult {
  config: ModelConfig
  bytesRead: number
  /** Bytes of the head's weights as the graph holds them (final norm + LM head, quantized or not). */
  preparedBytes: number
}

const EMBEDDINGS = 'model.embed_tokens.weight'

let config: ModelConfig
let checkpoint: SafetensorsCheckpoint
let head: ort.InferenceSession

async function load ({ modelDir, headQuant, threads }: HeadLoadArgs): Promise<HeadLoadResult> {
  config = loadModelConfig(modelDir)
  checkpoint = new SafetensorsCheckpoint(modelDir) // stays open: embeddings are read per token
  try {
    checkpoint.checkShape(EMBEDDINGS, [config.vocabSize, config.hiddenSize])
    let graph: Uint8Array | undefined
    let preparedBytes: number
    ;({ graph, preparedBytes } = buildGraph(headQuant))
    // Peak memory: only the graph's bytes are alive when onnxruntime copies them, not the JS weights.
    collectGarbage()
    head = await ort.InferenceSession.create(graph, sessionOptions(threads))
    graph = undefined
    setImmediate(collectGarbage) // after this call's frames, which still hold the graph, are gone
    return { config, bytesRead: checkpoint.bytesRead, preparedBytes }
  } catch (err) {
    checkpoint.close()
    throw err
  }
}

function buildGraph (headQuant: Quantization): { graph: Uint8Array, preparedBytes: number } {
  const finalNorm = checkpoint.readShaped('model.norm.weight', [config.hiddenSize])
  const tied = config.tieWordEmbeddings || !checkpoint.has('lm_head.weight')
  const lmHead = readHeadWeight(tied ? EMBEDDINGS : 'lm_head.weight', headQuant)
  const preparedBytes = finalNorm.byteLength + (lmHead instanceof Float32Array ? lmHead.byteLength : quantizedBytes(lmHead))
  return { graph: buildHeadGraph(config, finalNorm, lmHead), preparedBytes }
}

function readHeadWeight (name: string, quant: Quantization): HeadWeight {
  const { vocabSize, hiddenSize } = config
  if (quant === 'none') return checkpoint.readShaped(name, [vocabSize, hiddenSize])
  checkpoint.checkShape(name, [vocabSize, hiddenSize])
  return quantizeByRows(vocabSize, hiddenSize, quant === 'int4' ? 4 : 8, (from, to) => checkpoint.readRows(name, from, to))
}

function embed ({ ids }: { ids: number[] }): Transfer<Float32Array> {
  const { hiddenSize, vocabSize } = config
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw new InvalidArgumentError(`token id ${id} is outside the vocabulary of ${vocabSize}`)
  }
  const out = new Float32Array(ids.length * hiddenSize)
  ids.forEach((id, i) => { out.set(checkpoint.readRows(EMBEDDINGS, id, id + 1), i * hiddenSize) })
  return new Transfer(out, [out.buffer])
}

async function logits ({ hidden, tokens }: { hidden: Float32Array, tokens: number }): Promise<Transfer<Float32Array>> {
  if (hidden.length !== tokens * config.hiddenSize) {
    throw new ShapeError(`hidden states of ${hidden.length} values do not match ${tokens} tokens × hidden size ${config.hiddenSize}`)
  }
  const out = await head.run({ [HEAD_IO.hidden]: new ort.Tensor('float32', hidden, [1, tokens, config.hiddenSize]) })
  const result = out[HEAD_IO.logits].data as Float32Array
  return new Transfer(result, [result.buffer as ArrayBuffer])
}

/** File descriptors belong to the process, not the worker: close them before the worker ends. */
async function close (): Promise<void> {
  checkpoint?.close()
  await head?.release()
}

serveRequests({ load, embed, logits, close })
