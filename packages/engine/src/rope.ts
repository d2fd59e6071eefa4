// Rotary position tables (cos, sin) as Hugging Face computes them, including llama3 and linear scaling.
import type { ModelConfig } from './config.ts'

export function inverseFrequencies (config: ModelConfig): Float64Array {
  const half = config.headDim / 2
  const inv = new Float64Array(half)
  for (let i = 0; i < half; i++) inv[i] = 1 / config.ropeTheta ** ((2 * i) / config.headDim)
  const scaling = config.ropeScaling
  if (scaling?.type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] /= scaling.factor
  } else if (scaling?.type === 'llama3') {
    const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: original } = scaling
    const lowFreqWavelen = original / lowFreqFactor
    const highFreqWavelen = original / highFreqFactor
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i]
      if (wavelen > lowFreqWavelen) {
        inv[i] = inv[i] / factor
      } else if (wavelen >= highFreqWavelen) {
        const smooth = (original / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor)
        inv[i] = (1 - smooth) * (inv[i] / factor) + smooth * inv[i]
      }
    }
  }
  return inv
}

/** Tables of shape [positions, headDim / 2], the layout of ORT's RotaryEmbedding caches. */
export function rotaryTables (config: ModelConfig, positions: number): { cos: Float32Array, sin: Float32Array } {
  const inv = inverseFrequencies(config)
  const half = inv.length
  const cos = new Float32Array(positions * half)
  const sin = new Float32Array(positions * half)
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      // HF computes the angle in f32 (position * inv_freq); doing the same keeps large positions identical.
      const angle = Math.fround(p * Math.fround(inv[i]))
      cos[p * half + i] = Math.cos(angle)
      sin[p * half + i] = Math.sin(angle)
    }
  }
  return { cos, sin }
}
