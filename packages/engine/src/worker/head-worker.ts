// Worker: the client's own part of the model — token embeddings, final norm and LM head.
import * as ort from 'onnxruntime-node'
import { loadModelConfig, type ModelConfig } from '../config.ts'
import { InvalidArgumentError, ShapeError } from '../errors.ts'
import { buildHeadGraph, HEAD_IO } from '../graph/head-graph.ts'
import type { Quantization } from '../quantize.ts'
import { SafetensorsCheckpoint } from '../safetensors.ts'
import { sessionOptions } from './ort-options.ts'
import { serveRequests, Transfer } from './rpc.ts'

export interface HeadLoadArgs { modelDir: string, quant: Quantization, threads?: number }

let config: ModelConfig
let embeddings: Float32Array
let head: ort.InferenceSession

async function load ({ modelDir, quant, threads }: HeadLoadArgs): Promise<{ config: ModelConfig, bytesRead: number }> {
  config = loadModelConfig(modelDir)
  const { vocabSize, hiddenSize } = config
  const checkpoint = new SafetensorsCheckpoint(modelDir)
  try {
    embeddings = checkpoint.readShaped('model.embed_tokens.weight', [vocabSize, hiddenSize])
    const finalNorm = checkpoint.readShaped('model.norm.weight', [hiddenSize])
    const tied = config.tieWordEmbeddings || !checkpoint.has('lm_head.weight')
    const lmHead = tied ? embeddings : checkpoint.readShaped('lm_head.weight', [vocabSize, hiddenSize])
    head = await ort.InferenceSession.create(buildHeadGraph(config, finalNorm, lmHead, quant), sessionOptions(threads))
    return { config, bytesRead: checkpoint.bytesRead }
  } finally {
    checkpoint.close()
  }
}

function embed ({ ids }: { ids: number[] }): Transfer<Float32Array> {
  const { hiddenSize, vocabSize } = config
  const out = new Float32Array(ids.length * hiddenSize)
  ids.forEach((id, i) => {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw new InvalidArgumentError(`token id ${id} is outside the vocabulary of ${vocabSize}`)
    out.set(embeddings.subarray(id * hiddenSize, (id + 1) * hiddenSize), i * hiddenSize)
  })
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

serveRequests({ load, embed, logits })
