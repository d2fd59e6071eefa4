// Reads one decoder layer's tensors by their Hugging Face names, checking shapes against the config.
import type { ModelConfig } from './config.ts'
import type { SafetensorsCheckpoint } from './safetensors.ts'

export interface LayerWeights {
  inputNorm: Float32Array
  postAttentionNorm: Float32Array
  /** q, k and v projections stacked as rows: [(heads + 2 kvHeads) * headDim, hidden] */
  qkv: Float32Array
  qkvBias?: Float32Array
  /** [hidden, heads * headDim] */
  output: Float32Array
  outputBias?: Float32Array
  /** gate and up projections stacked as rows: [2 * intermediate, hidden] */
  gateUp: Float32Array
  gateUpBias?: Float32Array
  /** [hidden, intermediate] */
  down: Float32Array
  downBias?: Float32Array
}

export function readLayerWeights (checkpoint: SafetensorsCheckpoint, config: ModelConfig, layer: number): LayerWeights {
  const { hiddenSize: h, intermediateSize: ffn, numHeads, numKvHeads, headDim } = config
  const p = `model.layers.${layer}.`
  const read = (name: string, shape: number[]): Float32Array => checkpoint.readShaped(p + name, shape)
  const qDim = numHeads * headDim
  const kvDim = numKvHeads * headDim
  return {
    inputNorm: read('input_layernorm.weight', [h]),
    postAttentionNorm: read('post_attention_layernorm.weight', [h]),
    qkv: concat([read('self_attn.q_proj.weight', [qDim, h]), read('self_attn.k_proj.weight', [kvDim, h]), read('self_attn.v_proj.weight', [kvDim, h])]),
    qkvBias: config.qkvBias
      ? concat([read('self_attn.q_proj.bias', [qDim]), read('self_attn.k_proj.bias', [kvDim]), read('self_attn.v_proj.bias', [kvDim])])
      : undefined,
    output: read('self_attn.o_proj.weight', [h, qDim]),
    outputBias: config.outputBias ? read('self_attn.o_proj.bias', [h]) : undefined,
    gateUp: concat([read('mlp.gate_proj.weight', [ffn, h]), read('mlp.up_proj.weight', [ffn, h])]),
    gateUpBias: config.mlpBias ? concat([read('mlp.gate_proj.bias', [ffn]), read('mlp.up_proj.bias', [ffn])]) : undefined,
    down: read('mlp.down_proj.weight', [h, ffn]),
    downBias: config.mlpBias ? read('mlp.down_proj.bias', [h]) : undefined
  }
}

function concat (parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0))
  let offset = 0
  for (const part of parts) {
    out.set(part, offset)
    offset += part.length
  }
  return out
}
