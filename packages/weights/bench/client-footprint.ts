// Child of fetch.bench.ts: starts a client with only the model id, prints what it fetched and its memory.
import '@minga/p2p/polyfill'
import { readFileSync } from 'node:fs'
import { createClient } from '@minga/client'

const [modelId, bootstrap, cacheDir] = process.argv.slice(2)
const started = performance.now()
const client = await createClient({ modelId, bootstrap: [bootstrap], cacheDir })
const startMs = performance.now() - started
const status = readFileSync('/proc/self/status', 'utf8')
const kb = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0)
const fetched = client.fetched!
console.log(JSON.stringify({ startMs, bytesFetched: fetched.bytesFetched, tensors: fetched.tensors, rssMb: kb('VmRSS') / 1024, peakRssMb: kb('VmHWM') / 1024 }))
await client.close()
