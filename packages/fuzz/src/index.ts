export { runFuzz } from './run.ts'
export { summary } from './summary.ts'
export { Rng } from './rng.ts'
export type { FuzzOptions, FuzzReport, GenerationCheck } from './report.ts'
