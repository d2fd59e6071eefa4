// The ONNX graph of a run of consecutive decoder layers, read top to bottom like llama2.c's forward():
// for each layer: rmsnorm, qkv, rotary, attention over the cache, output projection, residual,
// rmsnorm, SwiGLU, residual. Hidden states in, hidden states out.
//
// The KV cache lives outside the graph, in the worker, at a fixed capacity per session. Each run feeds
// it as `past_key_i`/`past_value_i` (zero-copy) and returns only the new tokens' rotated keys and values
// (`new_key_i`/`new_value_i`), which the worker writes into the cache. Fetching GQA's `present_*` instead
// would make onnxruntime-node copy the whole cache back to JS on every step.
import type { ModelConfig } from '../config.ts'
import type { LayerWeights } from '../layer-weights.ts'
import { QUANT_BLOCK_SIZE, quantizeBlockwise, type Quantization } from '../quantize.ts'
import { GraphBuilder, MS_DOMAIN } from './onnx.ts'

export interface SpanGraphInit {
  config: ModelConfig
  /** Absolute indices of the layers, in order, with their weights. */
  layers: Array<{ index: number, weights: LayerWeights }>
  quant: Quantization
  rotary: { cos: Float32Array, sin: Float32Array, positions: number }
}

/** Graph input and output names, shared with the worker that feeds the graph. */
export const SPAN_IO = {
  hidden: 'hidden_states',
  positions: 'position_ids',
  seqlensK: 'seqlens_k',
  totalLength: 'total_sequence_length',
  hiddenOut: 'hidden_states_out',
  pastKey: (layer: number) => `past_key_${layer}`,
  pastValue: (layer: number) => `past_value_${layer}`,
  newKey: (layer: number) => `new_key_${layer}`,
  newValue: (layer: number) => `new_value_${layer}`
}

export function buildSpanGraph ({ config, layers, quant, rotary }: SpanGraphInit): Uint8Array {
  const { hiddenSize, numHeads, numKvHeads, headDim } = config
  const g = new GraphBuilder()
  const x = g.input(SPAN_IO.hidden, 'float32', [1, 'sequence', hiddenSize])
  g.input(SPAN_IO.positions, 'int64', [1, 'sequence'])
  g.input(SPAN_IO.seqlensK, 'int32', [1])
  g.input(SPAN_IO.totalLength, 'int32', [])
  g.initializer('rotary_cos', 'float32', [rotary.positions, headDim / 2], rotary.cos)
  g.initializer('rotary_sin', 'float32', [rotary.positions, headDim / 2], rotary.sin)

  // `pending` is the last block's output not yet added to the residual stream: the add is fused into
  // the next RMSNorm (SkipSimplifiedLayerNormalization), and done plainly after the last layer.
  let residual = x
  let pending: string | undefined
  for (const { index, weights } of layers) {
    const l = `layer${index}`
    g.input(SPAN_IO.pastKey(index), 'float32', [1, numKvHeads, 'capacity', headDim])
    g.input(SPAN_IO.pastValue(index), 'float32', [1, numKvHeads, 'capacity', headDim])

    let normed: string
    ;[normed, residual] = rmsNorm(g, config, `${l}.input_norm`, weights.inputNorm, residual, pending)
    const attention = makeAttention(g, config, quant, l, index, weights, normed)
    ;[normed, residual] = rmsNorm(g, config, `${l}.post_attention_norm`, weights.postAttentionNorm, residual, attention)
    pending = makeMlp(g, config, quant, l, weights, normed)
  }
  g.node('Add', [pending ?? residual, residual], {}, { outputs: [SPAN_IO.hiddenOut] })
  g.output(SPAN_IO.hiddenOut, 'float32', [1, 'sequence', hiddenSize])
  return g.toBytes(`minga_span_${layers[0].index}_${layers[layers.length - 1].index + 1}`)
}

/** RMSNorm of `residual + pending`; returns [normed, new residual]. */
function rmsNorm (g: GraphBuilder, config: ModelConfig, name: string, weight: Float32Array, residual: string, pending?: string): [string, string] {
  const gamma = g.initializer(`${name}.weight`, 'float32', [config.hiddenSize], weight)
  const attributes = { epsilon: config.rmsNormEps, axis: -1, stash_type: 1 }
  if (pending == null) {
    const [normed] = g.node('SimplifiedLayerNormalization', [residual, gamma], attributes, { name })
    return [normed, residual]
  }
  const normed = `${name}/out`
  const sum = `${name}/sum`
  g.node('SkipSimplifiedLayerNormalization', [pending, residual, gamma], { epsilon: config.rmsNormEps }, { name, outputs: [normed, '', '', sum], domain: MS_DOMAIN })
  return [normed, sum]
}

function makeAttention (g: GraphBuilder, config: ModelConfig, quant: Quantization, l: string, index: number, w: LayerWeights, input: string): string {
  const { hiddenSize, numHeads, numKvHeads, headDim } = config
  const qDim = numHeads * headDim
  const kvDim = numKvHeads * headDim
  const qkv = linear(g, quant, `${l}.qkv_proj`, input, w.qkv, w.qkvBias, qDim + 2 * kvDim, hiddenSize)
  const split = g.initializer(`${l}.qkv_split`, 'int64', [3], BigInt64Array.from([qDim, kvDim, kvDim].map(BigInt)))
  const [q, k, v] = g.node('Split', [qkv, split], { axis: -1 }, { outputs: 3 })
  const [qRotated] = g.node('RotaryEmbedding', [q, SPAN_IO.positions, 'rotary_cos', 'rotary_sin'], { num_heads: numHeads, interleaved: 0 }, { domain: MS_DOMAIN })
  g.node('RotaryEmbedding', [k, SPAN_IO.positions, 'rotary_cos', 'rotary_sin'], { num_heads: numKvHeads, interleaved: 0 }, { domain: MS_DOMAIN, outputs: [SPAN_IO.newKey(index)] })
  g.node('Identity', [v], {}, { outputs: [SPAN_IO.newValue(index)] })
  g.output(SPAN_IO.newKey(index), 'float32', [1, 'sequence', kvDim])
  g.output(SPAN_IO.newValue(index), 'float32', [1, 'sequence', kvDim])
  const [attended] = g.node('GroupQueryAttention', [
    qRotated, SPAN_IO.newKey(index), SPAN_IO.newValue(index),
    SPAN_IO.pastKey(index), SPAN_IO.pastValue(index), SPAN_IO.seqlensK, SPAN_IO.totalLength
  ], { num_heads: numHeads, kv_num_heads: numKvHeads, scale: 1 / Math.sqrt(headDim) }, { domain: MS_DOMAIN, outputs: 3, name: `${l}.attention` })
  return linear(g, quant, `${l}.o_proj`, attended, w.output, w.outputBias, hiddenSize, qDim)
}

function makeMlp (g: GraphBuilder, config: ModelConfig, quant: Quantization, l: string, w: LayerWeights, input: string): string {
  const { hiddenSize, intermediateSize } = config
  const gateUp = linear(g, quant, `${l}.gate_up_proj`, input, w.gateUp, w.gateUpBias, 2 * intermediateSize, hiddenSize)
  const split = g.initializer(`${l}.gate_up_split`, 'int64', [2], BigInt64Array.from([intermediateSize, intermediateSize].map(BigInt)))
  const [gate, up] = g.node('Split', [gateUp, split], { axis: -1 }, { outputs: 2 })
  const [sigmoid] = g.node('Sigmoid', [gate])
  const [silu] = g.node('Mul', [gate, sigmoid])
  const [product] = g.node('Mul', [silu, up])
  return linear(g, quant, `${l}.down_proj`, product, w.down, w.downBias, hiddenSize, intermediateSize)
}

/** y = x Wᵀ + b for a weight stored as [n, k] rows; MatMulNBits when quantized. */
export function linear (g: GraphBuilder, quant: Quantization, name: string, input: string, weight: Float32Array, bias: Float32Array | undefined, n: number, k: number): string {
  let out: string
  if (quant === 'none') {
    const w = g.initializer(`${name}.weight`, 'float32', [k, n], transpose(weight, n, k))
    ;[out] = g.node('MatMul', [input, w], {}, { name })
  } else {
    const q = quantizeBlockwise(weight, n, k, quant === 'int4' ? 4 : 8)
    const blob = (QUANT_BLOCK_SIZE * q.bits) / 8
    const data = g.initializer(`${name}.qweight`, 'uint8', [n, q.blocksPerRow, blob], q.data)
    const scales = g.initializer(`${name}.scales`, 'float32', [n * q.blocksPerRow], q.scales)
    const zeros = g.initializer(`${name}.zero_points`, 'uint8', [q.zeroPoints.length], q.zeroPoints)
    ;[out] = g.node('MatMulNBits', [input, data, scales, zeros], {
      K: k, N: n, bits: q.bits, block_size: QUANT_BLOCK_SIZE, accuracy_level: 4
    }, { name, domain: MS_DOMAIN })
  }
  if (bias == null) return out
  const b = g.initializer(`${name}.bias`, 'float32', [n], bias)
  return g.node('Add', [out, b])[0]
}

function transpose (weight: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(weight.length)
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = weight[r * cols + c]
  }
  return out
}
