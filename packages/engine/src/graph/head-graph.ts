// The client's end of the model: final RMSNorm and the LM head, hidden states in, logits out.
import type { ModelConfig } from '../config.ts'
import type { Quantization } from '../quantize.ts'
import { GraphBuilder } from './onnx.ts'
import { linear } from './span-graph.ts'

export const HEAD_IO = { hidden: 'hidden_states', logits: 'logits' }

export function buildHeadGraph (config: ModelConfig, finalNorm: Float32Array, lmHead: Float32Array, quant: Quantization): Uint8Array {
  const g = new GraphBuilder()
  g.input(HEAD_IO.hidden, 'float32', [1, 'sequence', config.hiddenSize])
  const gamma = g.initializer('final_norm.weight', 'float32', [config.hiddenSize], finalNorm)
  const [normed] = g.node('SimplifiedLayerNormalization', [HEAD_IO.hidden, gamma], { epsilon: config.rmsNormEps, axis: -1, stash_type: 1 })
  const logits = linear(g, quant, 'lm_head', normed, lmHead, undefined, config.vocabSize, config.hiddenSize)
  g.node('Identity', [logits], {}, { outputs: [HEAD_IO.logits] })
  g.output(HEAD_IO.logits, 'float32', [1, 'sequence', config.vocabSize])
  return g.toBytes('minga_head')
}
