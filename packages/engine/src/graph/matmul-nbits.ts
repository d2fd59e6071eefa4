// y = x Wᵀ for a block-quantized weight, as one com.microsoft MatMulNBits node.
import { quantizedLayout, type BlockFormat, type QuantizedWeight } from '../quantize.ts'
import { MS_DOMAIN, type GraphBuilder } from './onnx.ts'

/** A MatMulNBits weight's initializers; a symmetric format stores no zero points. */
export interface NBitsTensors { format: BlockFormat, qweight: string, scales: string, zeroPoints?: string }

/** The node over initializers already declared (a symmetric weight gets no zero-point input: ORT then uses 2^(bits-1)). */
export function matMulNBitsNode (g: GraphBuilder, name: string, input: string, weight: NBitsTensors, n: number, k: number): string {
  const inputs = [input, weight.qweight, weight.scales]
  if (weight.zeroPoints != null) inputs.push(weight.zeroPoints)
  const [out] = g.node('MatMulNBits', inputs, {
    K: k, N: n, bits: weight.format.bits, block_size: weight.format.blockSize, accuracy_level: 4
  }, { name, domain: MS_DOMAIN })
  return out
}

/** The node with the weight's tensors as in-graph initializers. */
export function matMulNBits (g: GraphBuilder, name: string, input: string, q: QuantizedWeight): string {
  const { blobBytes } = quantizedLayout(q.format, q.k)
  const weight: NBitsTensors = {
    format: q.format,
    qweight: g.initializer(`${name}.qweight`, 'uint8', [q.n, q.blocksPerRow, blobBytes], q.data),
    scales: g.initializer(`${name}.scales`, 'float32', [q.n * q.blocksPerRow], q.scales),
    zeroPoints: q.zeroPoints == null ? undefined : g.initializer(`${name}.zero_points`, 'uint8', [q.zeroPoints.length], q.zeroPoints)
  }
  return matMulNBitsNode(g, name, input, weight, q.n, q.k)
}
