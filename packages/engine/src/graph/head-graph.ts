// The client's end of the model: final RMSNorm and the LM head, hidden states in, logits out.
import type { ModelConfig } from '../config.ts'
import type { QuantizedWeight } from '../quantize.ts'
import { matMulNBits } from './matmul-nbits.ts'
import { GraphBuilder } from './onnx.ts'
import { linear } from './span-graph.ts'

export const HEAD_IO = { hidden: 'hidden_states', logits: 'logits' }

/** The LM head's weight: f32 rows [vocab, hidden], or already block-quantized. */
export type HeadWeight = Float32Array | QuantizedWeight

export function buildHeadGraph (config: ModelConfig, finalNorm: Float32Array, lmHead: HeadWeight): Uint8Array {
  const g = new GraphBuilder()
  g.input(HEAD_IO.hidden, 'float32', [1, 'sequence', config.hiddenSize])
  const gamma = g.initializer('final_norm.weight', 'float32', [config.hiddenSize], finalNorm)
  const [normed] = g.node('SimplifiedLayerNormalization', [HEAD_IO.hidden, gamma], { epsilon: config.rmsNormEps, axis: -1, stash_type: 1 })
  const logits = lmHead instanceof Float32Array
    ? linear(g, 'none', 'lm_head', normed, lmHead, undefined, config.vocabSize, config.hiddenSize)
    : matMulNBits(g, 'lm_head', normed, lmHead)
  g.node('Identity', [logits], {}, { outputs: [HEAD_IO.logits] })
  g.output(HEAD_IO.logits, 'float32', [1, 'sequence', config.vocabSize])
  return g.toBytes('minga_head')
}
