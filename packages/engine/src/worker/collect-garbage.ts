// A worker's model load leaves hundreds of MB of garbage (the ModelProto bytes, JS copies of the
// weights) that onnxruntime has copied. V8 would free it only when the heap feels pressure, which a
// worker that allocates little per token may not for a long time: collect it once, right away.
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

let gc: (() => void) | undefined

export function collectGarbage (): void {
  if (gc == null) {
    setFlagsFromString('--expose-gc')
    gc = runInNewContext('gc') as () => void
  }
  gc()
}
