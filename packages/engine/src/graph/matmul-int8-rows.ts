// y = x Wᵀ for an 8-bit weight with a scale and zero point per output row (ROW_INT8, ROW_INT7), as
// an integer matmul. Each input row is quantized on its own, symmetrically (scale = max |x| / 127,
// shifted by 128 into uint8 with one zero point of 128 for all rows), so a row's result never
// depends on the rows batched with it. onnxruntime's x86 kernels for uint8 × int8 add pairs of
// products in 16 bits without VNNI (AVX2 and older), which saturates for full int8 weights: ROW_INT8
// stores uint8 weights (uint8 × uint8 is exact everywhere), ROW_INT7 int8 ones within [-64, 63]
// (2 × 255 × 64 fits in 16 bits), which gets the VNNI and AMX kernels (quantize.ts).
import { MS_DOMAIN, type GraphBuilder } from './onnx.ts'

/** A per-row weight's initializers: [k, n] (transposed: what the matmul packs), f32 scales and zero points [n]; uint8, or int8 for ROW_INT7. */
export interface RowInt8Tensors { weight: string, scales: string, zeroPoints: string }

export function matMulInt8RowsNode (g: GraphBuilder, name: string, input: string, weight: RowInt8Tensors): string {
  const constant = (suffix: string, value: number): string => g.initializer(`${name}.${suffix}`, 'float32', [], new Float32Array([value]))
  const [absMax] = g.node('ReduceMax', [g.node('Abs', [input])[0], g.int64s(`${name}.last_axis`, [-1])], { keepdims: 1 })
  // an all-zero row keeps a tiny scale instead of dividing by zero
  const [rowScale] = g.node('Max', [g.node('Div', [absMax, constant('int8_max', 127)])[0], constant('min_scale', 1e-30)])
  const [rounded] = g.node('Round', [g.node('Div', [input, rowScale])[0]])
  const [shifted] = g.node('Cast', [g.node('Add', [rounded, constant('shift', 128)])[0]], { to: 2 /* uint8 */ })
  const inputZeroPoint = g.initializer(`${name}.input_zero_point`, 'uint8', [], new Uint8Array([128]))
  const [products] = g.node('MatMulIntegerToFloat', [shifted, weight.weight, constant('unit_scale', 1), weight.scales, inputZeroPoint, weight.zeroPoints], {}, { name, domain: MS_DOMAIN })
  return g.node('Mul', [products, rowScale])[0]
}
