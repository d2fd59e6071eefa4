// The ONNX graphs of one decoder layer, read top to bottom like llama2.c's forward(): rmsnorm, qkv,
// rotary, attention over the cache, output projection, residual, rmsnorm, SwiGLU, residual. A layer is
// cut around attention into two graphs with its weights, `pre` (norm, QKV, rotary) and `post` (output
// projection, residual, norm, SwiGLU, residual), and one weightless `attention` graph serves every
// layer. `pre` and `post` are row-wise, so a batch of sessions runs them once over all its rows
// ([1, M, hidden]: every linear layer reads its weights once per batch) while attention runs per
// session over that session's own cache. A span runs such graphs per layer, so that a client can use
// any part of it (routes over overlapping spans need that).
//
// The KV cache lives outside the graphs, in the worker, growing per session in blocks of tokens.
// `pre` returns the new tokens' rotated keys and values, which the worker writes into the cache; the
// attention graph then reads the cache as `past_key`/`past_value` (inputs are zero-copy), with a mask
// that hides each row's future and the cache's unused tail. It is two batched MatMuls and a softmax,
// not GroupQueryAttention: onnxruntime-node copies every graph output back to JS, so GQA's
// `present_*` (the whole cache) would be copied on every step, and its CPU kernel also copies the
// past into the present; at 1900 cached tokens it took 1.6–2.0 ms per layer against 0.5–0.6.
//
// Weights are not in the graphs: a LayerWeights (prepared/layer-file.ts) names each initializer and
// puts its bytes in the layer's weights file, which ORT reads itself as external data.
import type { ModelConfig } from '../config.ts'
import { isRowFormat, type RowFormat } from '../quantize.ts'
import { matMulInt8RowsNode, type RowInt8Tensors } from './matmul-int8-rows.ts'
import { matMulNBitsNode, type NBitsTensors } from './matmul-nbits.ts'
import { GraphBuilder, MS_DOMAIN } from './onnx.ts'

/** A linear layer's initializers: an f32 [k, n] matrix, MatMulNBits' three tensors, or int8 rows and their scales. */
export type LinearTensors = { format: undefined, weight: string } | NBitsTensors | ({ format: RowFormat } & RowInt8Tensors)

/** The initializers of one layer, declared by its graphs as they are built. */
export interface LayerWeights {
  /** The graph being built: initializers declared now belong to it. */
  readonly graph: GraphBuilder
  /** Starts the layer's next graph (its weights share the layer's one weights file). */
  startGraph (): GraphBuilder
  /** Checkpoint vectors (norm weights, biases) concatenated, as f32. */
  vector (name: string, sources: Array<{ name: string, rows: number }>): string
  /** Values computed here (the rotary tables). */
  values (name: string, dims: number[], data: Float32Array): string
  /** y = x Wᵀ for W the rows of `sources` ([rows, k] each) stacked. */
  linear (name: string, sources: Array<{ name: string, rows: number }>, k: number): LinearTensors
}

/** Graph input and output names, shared with the worker that feeds the graphs. */
export const SPAN_IO = {
  /** pre and post: the layer's input rows (post adds them back as the residual). */
  hidden: 'hidden_states',
  positions: 'position_ids',
  /** pre → attention: rotated queries, rotated new keys, new values. */
  query: 'query',
  newKey: 'new_key',
  newValue: 'new_value',
  /** attention: the session's cache (new rows included) and which cached positions each row sees. */
  pastKey: 'past_key',
  pastValue: 'past_value',
  mask: 'attention_mask',
  /** attention → post. */
  attended: 'attended',
  hiddenOut: 'hidden_states_out'
}

export interface LayerGraphs { pre: Uint8Array, post: Uint8Array }

/** The two graphs of decoder layer `index`; their initializers are declared through `w`. */
export function buildLayerGraphs (config: ModelConfig, index: number, w: LayerWeights, rotary: { cos: Float32Array, sin: Float32Array, positions: number }): LayerGraphs {
  const l = `layer${index}`
  const p = `model.layers.${index}.`
  return { pre: buildPre(config, w.startGraph(), w, l, p, rotary), post: buildPost(config, w.startGraph(), w, l, p) }
}

/** Rows [1, M, hidden] (with each row's position) → rotated q, k and v rows. */
function buildPre (config: ModelConfig, g: GraphBuilder, w: LayerWeights, l: string, p: string, rotary: { cos: Float32Array, sin: Float32Array, positions: number }): Uint8Array {
  const { hiddenSize, numHeads, numKvHeads, headDim } = config
  const qDim = numHeads * headDim
  const kvDim = numKvHeads * headDim
  const a = p + 'self_attn.'
  const x = g.input(SPAN_IO.hidden, 'float32', [1, 'rows', hiddenSize])
  g.input(SPAN_IO.positions, 'int64', [1, 'rows'])
  w.values('rotary_cos', [rotary.positions, headDim / 2], rotary.cos)
  w.values('rotary_sin', [rotary.positions, headDim / 2], rotary.sin)
  const [normed] = g.node('SimplifiedLayerNormalization', [x, w.vector(`${l}.input_norm.weight`, [{ name: p + 'input_layernorm.weight', rows: hiddenSize }])],
    { epsilon: config.rmsNormEps, axis: -1, stash_type: 1 }, { name: `${l}.input_norm` })
  const qkvWeight = w.linear(`${l}.qkv_proj`, [{ name: a + 'q_proj.weight', rows: qDim }, { name: a + 'k_proj.weight', rows: kvDim }, { name: a + 'v_proj.weight', rows: kvDim }], hiddenSize)
  const qkvBias = config.qkvBias ? w.vector(`${l}.qkv_proj.bias`, [{ name: a + 'q_proj.bias', rows: qDim }, { name: a + 'k_proj.bias', rows: kvDim }, { name: a + 'v_proj.bias', rows: kvDim }]) : undefined
  const qkv = linearNodes(g, `${l}.qkv_proj`, normed, qkvWeight, qkvBias, qDim + 2 * kvDim, hiddenSize)
  const split = g.int64s(`${l}.qkv_split`, [qDim, kvDim, kvDim])
  const [q, k] = g.node('Split', [qkv, split], { axis: -1 }, { outputs: [`${l}.q`, `${l}.k`, SPAN_IO.newValue] })
  g.node('RotaryEmbedding', [q, SPAN_IO.positions, 'rotary_cos', 'rotary_sin'], { num_heads: numHeads, interleaved: 0 }, { domain: MS_DOMAIN, outputs: [SPAN_IO.query] })
  g.node('RotaryEmbedding', [k, SPAN_IO.positions, 'rotary_cos', 'rotary_sin'], { num_heads: numKvHeads, interleaved: 0 }, { domain: MS_DOMAIN, outputs: [SPAN_IO.newKey] })
  g.output(SPAN_IO.query, 'float32', [1, 'rows', qDim])
  g.output(SPAN_IO.newKey, 'float32', [1, 'rows', kvDim])
  g.output(SPAN_IO.newValue, 'float32', [1, 'rows', kvDim])
  return g.toBytes(`minga_${l}_pre`)
}

/**
 * One session's S new rows attending over its cache [1, kvHeads, capacity, headDim], which already
 * holds them (rotary applied). The query heads of one KV head are stacked into the rows of one
 * matrix, so each KV head is one MatMul over its cached keys and one over its values:
 *   q [1, S, heads·d] → [kvHeads, group·S, d];  scores = q kᵀ / √d + mask;  softmax;  × v.
 * The mask [group·S, capacity] is 0 where a row may look and −∞ elsewhere (the row (g, s) sees
 * positions ≤ past + s), built by the worker once per step and shared by every layer.
 */
export function buildAttentionGraph (config: ModelConfig): Uint8Array {
  const { numHeads, numKvHeads, headDim } = config
  const group = numHeads / numKvHeads
  const g = new GraphBuilder()
  g.input(SPAN_IO.query, 'float32', [1, 'sequence', numHeads * headDim])
  g.input(SPAN_IO.pastKey, 'float32', [1, numKvHeads, 'capacity', headDim])
  g.input(SPAN_IO.pastValue, 'float32', [1, numKvHeads, 'capacity', headDim])
  g.input(SPAN_IO.mask, 'float32', ['group_rows', 'capacity'])
  const [byToken] = g.node('Reshape', [SPAN_IO.query, g.int64s('query_heads', [-1, numKvHeads, group, headDim])])
  const [byHead] = g.node('Transpose', [byToken], { perm: [1, 2, 0, 3] })
  const [query] = g.node('Reshape', [byHead, g.int64s('query_rows', [numKvHeads, -1, headDim])])
  const cacheRows = g.int64s('cache_rows', [numKvHeads, -1, headDim])
  const [keys] = g.node('Reshape', [SPAN_IO.pastKey, cacheRows])
  const [values] = g.node('Reshape', [SPAN_IO.pastValue, cacheRows])
  const [scores] = g.node('FusedMatMul', [query, keys], { transB: 1, alpha: 1 / Math.sqrt(headDim) }, { domain: MS_DOMAIN })
  const [masked] = g.node('Add', [scores, SPAN_IO.mask])
  const [weights] = g.node('Softmax', [masked], { axis: -1 })
  const [mixed] = g.node('MatMul', [weights, values])
  const [mixedByHead] = g.node('Reshape', [mixed, g.int64s('mixed_heads', [numKvHeads, group, -1, headDim])])
  const [mixedByToken] = g.node('Transpose', [mixedByHead], { perm: [2, 0, 1, 3] })
  g.node('Reshape', [mixedByToken, g.int64s('attended_rows', [1, -1, numHeads * headDim])], {}, { outputs: [SPAN_IO.attended] })
  g.output(SPAN_IO.attended, 'float32', [1, 'sequence', numHeads * headDim])
  return g.toBytes('minga_attention')
}

/** Attention output and the layer's input rows [1, M, ·] → the layer's output rows. */
function buildPost (config: ModelConfig, g: GraphBuilder, w: LayerWeights, l: string, p: string): Uint8Array {
  const { hiddenSize, numHeads, headDim } = config
  const qDim = numHeads * headDim
  const a = p + 'self_attn.'
  const x = g.input(SPAN_IO.hidden, 'float32', [1, 'rows', hiddenSize])
  const attended = g.input(SPAN_IO.attended, 'float32', [1, 'rows', qDim])
  const oWeight = w.linear(`${l}.o_proj`, [{ name: a + 'o_proj.weight', rows: hiddenSize }], qDim)
  const oBias = config.outputBias ? w.vector(`${l}.o_proj.bias`, [{ name: a + 'o_proj.bias', rows: hiddenSize }]) : undefined
  const attention = linearNodes(g, `${l}.o_proj`, attended, oWeight, oBias, hiddenSize, qDim)
  // the residual add is fused into the second RMSNorm
  const postNormed = `${l}.post_attention_norm/out`
  const residual = `${l}.post_attention_norm/sum`
  g.node('SkipSimplifiedLayerNormalization', [attention, x, w.vector(`${l}.post_attention_norm.weight`, [{ name: p + 'post_attention_layernorm.weight', rows: hiddenSize }])],
    { epsilon: config.rmsNormEps }, { name: `${l}.post_attention_norm`, outputs: [postNormed, '', '', residual], domain: MS_DOMAIN })
  const mlp = makeMlp(g, w, config, l, p, postNormed)
  g.node('Add', [mlp, residual], {}, { outputs: [SPAN_IO.hiddenOut] })
  g.output(SPAN_IO.hiddenOut, 'float32', [1, 'rows', hiddenSize])
  return g.toBytes(`minga_${l}_post`)
}

function makeMlp (g: GraphBuilder, w: LayerWeights, config: ModelConfig, l: string, p: string, input: string): string {
  const { hiddenSize, intermediateSize: ffn } = config
  const m = p + 'mlp.'
  const gateUpWeight = w.linear(`${l}.gate_up_proj`, [{ name: m + 'gate_proj.weight', rows: ffn }, { name: m + 'up_proj.weight', rows: ffn }], hiddenSize)
  const gateUpBias = config.mlpBias ? w.vector(`${l}.gate_up_proj.bias`, [{ name: m + 'gate_proj.bias', rows: ffn }, { name: m + 'up_proj.bias', rows: ffn }]) : undefined
  const gateUp = linearNodes(g, `${l}.gate_up_proj`, input, gateUpWeight, gateUpBias, 2 * ffn, hiddenSize)
  const split = g.int64s(`${l}.gate_up_split`, [ffn, ffn])
  const [gate, up] = g.node('Split', [gateUp, split], { axis: -1 }, { outputs: 2 })
  const [sigmoid] = g.node('Sigmoid', [gate])
  const [silu] = g.node('Mul', [gate, sigmoid])
  const [product] = g.node('Mul', [silu, up])
  const downWeight = w.linear(`${l}.down_proj`, [{ name: m + 'down_proj.weight', rows: hiddenSize }], ffn)
  const downBias = config.mlpBias ? w.vector(`${l}.down_proj.bias`, [{ name: m + 'down_proj.bias', rows: hiddenSize }]) : undefined
  return linearNodes(g, `${l}.down_proj`, product, downWeight, downBias, hiddenSize, ffn)
}

/** The nodes of y = x Wᵀ + b: MatMul over an f32 [k, n] weight, or MatMulNBits. */
export function linearNodes (g: GraphBuilder, name: string, input: string, weight: LinearTensors, bias: string | undefined, n: number, k: number): string {
  const out = weight.format == null
    ? g.node('MatMul', [input, weight.weight], {}, { name })[0]
    : isRowFormat(weight.format)
      ? matMulInt8RowsNode(g, name, input, weight as RowInt8Tensors)
      : matMulNBitsNode(g, name, input, weight as NBitsTensors, n, k)
  return bias == null ? out : g.node('Add', [out, bias])[0]
}
