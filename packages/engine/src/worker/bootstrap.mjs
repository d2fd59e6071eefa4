// Worker entry: Node 20 does not apply `--import` loader hooks to a worker's own entry file, so this
// plain-JS entry registers tsx and then imports the TypeScript worker named in workerData.
import { workerData } from 'node:worker_threads'
import { register } from 'tsx/esm/api'

register()
await import(workerData.entry)
