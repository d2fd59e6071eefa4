// The client's end of the model: final RMSNorm and the LM head, hidden states in, logits out. Like a
// decoder layer, its initializers are declared through a LayerWeights (prepared/layer-file.ts), which
// puts their bytes in a weights file ORT reads as external data.
import type { ModelConfig } from '../config.ts'
import { linearNodes, type LayerWeights } from './span-graph.ts'

export const HEAD_IO = { hidden: 'hidden_states', logits: 'logits' }

/** The head's graph; `lmHead` names the checkpoint tensor of its [vocab, hidden] weight (the embeddings when tied). */
export function buildHeadGraph (config: ModelConfig, w: LayerWeights, lmHead: string): Uint8Array {
  const g = w.graph
  g.input(HEAD_IO.hidden, 'float32', [1, 'sequence', config.hiddenSize])
  const gamma = w.vector('final_norm.weight', [{ name: 'model.norm.weight', rows: config.hiddenSize }])
  const [normed] = g.node('SimplifiedLayerNormalization', [HEAD_IO.hidden, gamma], { epsilon: config.rmsNormEps, axis: -1, stash_type: 1 })
  const weight = w.linear('lm_head', [{ name: lmHead, rows: config.vocabSize }], config.hiddenSize)
  const logits = linearNodes(g, 'lm_head', normed, weight, undefined, config.vocabSize, config.hiddenSize)
  g.node('Identity', [logits], {}, { outputs: [HEAD_IO.logits] })
  g.output(HEAD_IO.logits, 'float32', [1, 'sequence', config.vocabSize])
  return g.toBytes('minga_head')
}
