// Typed request/response between the caller's thread and an engine worker. Model sessions block the
// thread they run on, so they live in workers and the caller's event loop (libp2p, the CLI) stays free.
import { fileURLToPath } from 'node:url'
import { isMainThread, parentPort, Worker } from 'node:worker_threads'
import { ENGINE_ERRORS, WorkerError } from '../errors.ts'
import { bundleWorker } from './bundle.ts'

interface Request { id: number, method: string, args: unknown }
type Response = { id: number, ok: true, value: unknown } | { id: number, ok: false, name: string, message: string }
/** A note from the worker outside any response (progress of a long load). */
interface WorkerEvent { event: unknown }

/** Marks a handler's result whose buffers move to the caller instead of being copied. */
export class Transfer<T> {
  constructor (readonly value: T, readonly transfer: ArrayBuffer[]) {}
}

/** A typed array whose whole buffer can be transferred: itself, or a copy when it views a larger buffer. */
export function ownBuffer (array: Float32Array): Float32Array<ArrayBuffer> {
  if (array.byteOffset === 0 && array.byteLength === array.buffer.byteLength && array.buffer instanceof ArrayBuffer) return array as Float32Array<ArrayBuffer>
  return array.slice()
}

export class WorkerClient {
  /** The worker, once its code is built. */
  private readonly started: Promise<Worker>
  /** The same worker once started: steps then reach it without awaiting `started` each time. */
  private worker?: Worker
  private readonly pending = new Map<number, { resolve: (value: any) => void, reject: (err: Error) => void }>()
  private nextId = 1
  private failure?: Error

  constructor (entry: URL, readonly label: string, onEvent?: (event: any) => void) {
    this.started = bundleWorker(entry).then(code => {
      const worker = new Worker(code, { execArgv: [] })
      worker.on('message', (response: Response | WorkerEvent) => {
        if ('event' in response) {
          onEvent?.(response.event)
          return
        }
        const call = this.pending.get(response.id)
        if (call == null) return
        this.pending.delete(response.id)
        if (response.ok) call.resolve(response.value)
        else call.reject(new (ENGINE_ERRORS[response.name] ?? Error)(response.message))
      })
      worker.on('error', err => this.fail(new WorkerError(`${label} worker failed: ${err.message}`)))
      worker.on('exit', code => this.fail(new WorkerError(`${label} worker exited (code ${code})`)))
      this.worker = worker
      return worker
    }, (err: any) => {
      throw new WorkerError(`${label} worker could not be built from ${fileURLToPath(entry)}: ${err?.message ?? err}`)
    })
    this.started.catch((err: Error) => { this.fail(err) })
  }

  async call<T> (method: string, args: unknown, transfer: ArrayBuffer[] = []): Promise<T> {
    const worker = this.worker ?? await this.started
    if (this.failure != null) throw this.failure
    const id = this.nextId++
    return await new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      worker.postMessage({ id, method, args } satisfies Request, transfer)
    })
  }

  async terminate (): Promise<void> {
    this.failure ??= new WorkerError(`${this.label} worker was closed`)
    const worker = await this.started.catch(() => undefined)
    await worker?.terminate()
  }

  private fail (err: Error): void {
    this.failure ??= err
    for (const call of this.pending.values()) call.reject(this.failure)
    this.pending.clear()
  }
}

/** Runs in the worker: sends an event to the WorkerClient's `onEvent`. */
export function emitEvent (event: unknown): void {
  parentPort?.postMessage({ event } satisfies WorkerEvent)
}

/**
 * A method whose requests the worker runs together: when it becomes free it takes every queued
 * request of the method (up to the first request of another method, so that order across methods
 * holds; one per key, a second one waits for the next batch) and may wait a while for more.
 */
export interface BatchedMethod<A = any> {
  /** Requests with the same key never share a batch (e.g. two steps of one session); without keys, any may. */
  key?: (args: A) => string
  /** One result (or Error: that request alone fails) per request, in order. */
  run: (batch: A[]) => Promise<unknown[]>
  /**
   * Until when (performance.now()) a batch that began gathering at `since` waits for companions;
   * asked again whenever a request arrives. A time not after now starts the batch.
   */
  waitUntil: (batch: A[], since: number) => number
}

/**
 * Runs in the worker: answers requests with the named handlers, one at a time, in arrival order;
 * requests of a `batched` method are answered a batch at a time.
 */
export function serveRequests (handlers: Record<string, (args: any) => unknown>, batched: Record<string, BatchedMethod> = {}): void {
  if (isMainThread || parentPort == null) throw new Error('serveRequests must run in a worker thread')
  const port = parentPort
  const queue: Request[] = []
  let busy = false
  /** Wakes a batch waiting for companions when a request arrives. */
  let arrived: (() => void) | undefined

  const reply = (request: Request, result: unknown): void => {
    if (result instanceof Error) port.postMessage({ id: request.id, ok: false, name: result.name ?? 'Error', message: result.message ?? String(result) } satisfies Response)
    else if (result instanceof Transfer) port.postMessage({ id: request.id, ok: true, value: result.value } satisfies Response, result.transfer)
    else port.postMessage({ id: request.id, ok: true, value: result } satisfies Response)
  }

  const answer = async (request: Request): Promise<void> => {
    try {
      const handler = handlers[request.method]
      if (handler == null) throw new WorkerError(`unknown worker method ${request.method}`)
      reply(request, await handler(request.args))
    } catch (err: any) {
      reply(request, err instanceof Error ? err : new Error(String(err)))
    }
  }

  /** Moves the queued requests that may join `batch` into it. */
  const gather = (method: string, spec: BatchedMethod, batch: Request[], keys: Set<string>): void => {
    for (let i = 0; i < queue.length;) {
      const request = queue[i]
      if (request.method !== method) return
      const key = spec.key?.(request.args)
      if (key != null && keys.has(key)) {
        i++
        continue
      }
      if (key != null) keys.add(key)
      batch.push(request)
      queue.splice(i, 1)
    }
  }

  const answerBatch = async (method: string, spec: BatchedMethod, first: Request): Promise<void> => {
    const batch = [first]
    const keys = new Set<string>()
    const firstKey = spec.key?.(first.args)
    if (firstKey != null) keys.add(firstKey)
    gather(method, spec, batch, keys)
    const since = performance.now()
    const waitLeft = (): number => spec.waitUntil(batch.map(r => r.args), since) - performance.now()
    for (let wait = waitLeft(); wait > 0; wait = waitLeft()) {
      let timer: NodeJS.Timeout | undefined
      await new Promise<void>(resolve => {
        arrived = resolve
        timer = setTimeout(resolve, wait)
      })
      arrived = undefined
      clearTimeout(timer)
      gather(method, spec, batch, keys)
    }
    let results: unknown[]
    try {
      results = await spec.run(batch.map(r => r.args))
    } catch (err: any) {
      results = batch.map(() => err instanceof Error ? err : new Error(String(err)))
    }
    for (const [i, request] of batch.entries()) reply(request, results[i])
  }

  // Work starts from setImmediate, and each request or batch ends with a turn of the event loop: ORT
  // runs block the thread, so requests that came meanwhile are only queued once their message events
  // have run, and they should all be there when the next batch is gathered.
  const drain = async (): Promise<void> => {
    for (let request = queue.shift(); request != null; request = queue.shift()) {
      const spec = batched[request.method]
      if (spec == null) await answer(request)
      else await answerBatch(request.method, spec, request)
      await new Promise(resolve => setImmediate(resolve))
    }
    busy = false
  }

  port.on('message', (request: Request) => {
    queue.push(request)
    arrived?.()
    if (!busy) {
      busy = true
      setImmediate(() => { void drain() })
    }
  })
}
