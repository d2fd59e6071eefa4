// y = x Wᵀ for a block-quantized weight, as one com.microsoft MatMulNBits node.
import { QUANT_BLOCK_SIZE, type QuantizedWeight } from '../quantize.ts'
import { MS_DOMAIN, type GraphBuilder } from './onnx.ts'

export function matMulNBits (g: GraphBuilder, name: string, input: string, q: QuantizedWeight): string {
  const blob = (QUANT_BLOCK_SIZE * q.bits) / 8
  const data = g.initializer(`${name}.qweight`, 'uint8', [q.n, q.blocksPerRow, blob], q.data)
  const scales = g.initializer(`${name}.scales`, 'float32', [q.n * q.blocksPerRow], q.scales)
  const zeros = g.initializer(`${name}.zero_points`, 'uint8', [q.zeroPoints.length], q.zeroPoints)
  const [out] = g.node('MatMulNBits', [input, data, scales, zeros], {
    K: q.k, N: q.n, bits: q.bits, block_size: QUANT_BLOCK_SIZE, accuracy_level: 4
  }, { name, domain: MS_DOMAIN })
  return out
}
