// Which blocks a new server should host: the window whose weakest blocks have the least announced
// throughput, so that new nodes fill gaps first (Petals' rule: compare windows by their sorted
// per-block throughput, lowest first; ties go to the earliest window).
import { ServerConfigError } from './errors.ts'

export interface AnnouncedSpan { start: number, end: number, throughput: number }

export function chooseBlocks (numLayers: number, numBlocks: number, spans: AnnouncedSpan[]): { start: number, end: number } {
  if (!(Number.isInteger(numBlocks) && numBlocks >= 1 && numBlocks <= numLayers)) {
    throw new ServerConfigError(`--num-blocks must be between 1 and the model's ${numLayers} layers, got ${numBlocks}`)
  }
  const perBlock = new Array<number>(numLayers).fill(0)
  for (const span of spans) {
    for (let b = Math.max(0, span.start); b < Math.min(numLayers, span.end); b++) perBlock[b] += span.throughput
  }
  let best = 0
  let bestKey: number[] | undefined
  for (let start = 0; start + numBlocks <= numLayers; start++) {
    const key = perBlock.slice(start, start + numBlocks).sort((a, b) => a - b)
    if (bestKey == null || compare(key, bestKey) < 0) {
      best = start
      bestKey = key
    }
  }
  return { start: best, end: best + numBlocks }
}

function compare (a: number[], b: number[]): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i]
  return 0
}
