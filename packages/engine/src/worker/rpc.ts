// Typed request/response between the caller's thread and an engine worker. Model sessions block the
// thread they run on, so they live in workers and the caller's event loop (libp2p, the CLI) stays free.
import { isMainThread, parentPort, Worker } from 'node:worker_threads'
import { ENGINE_ERRORS, WorkerError } from '../errors.ts'

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
  private readonly worker: Worker
  private readonly pending = new Map<number, { resolve: (value: any) => void, reject: (err: Error) => void }>()
  private nextId = 1
  private failure?: Error

  constructor (entry: URL, readonly label: string, onEvent?: (event: any) => void) {
    this.worker = new Worker(new URL('./bootstrap.mjs', import.meta.url), { workerData: { entry: entry.href }, execArgv: [] })
    this.worker.on('message', (response: Response | WorkerEvent) => {
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
    this.worker.on('error', err => this.fail(new WorkerError(`${label} worker failed: ${err.message}`)))
    this.worker.on('exit', code => this.fail(new WorkerError(`${label} worker exited (code ${code})`)))
  }

  async call<T> (method: string, args: unknown, transfer: ArrayBuffer[] = []): Promise<T> {
    if (this.failure != null) throw this.failure
    const id = this.nextId++
    return await new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      this.worker.postMessage({ id, method, args } satisfies Request, transfer)
    })
  }

  async terminate (): Promise<void> {
    this.failure ??= new WorkerError(`${this.label} worker was closed`)
    await this.worker.terminate()
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

/** Runs in the worker: answers requests with the named handlers, one at a time, in arrival order. */
export function serveRequests (handlers: Record<string, (args: any) => unknown>): void {
  if (isMainThread || parentPort == null) throw new Error('serveRequests must run in a worker thread')
  const port = parentPort
  let queue = Promise.resolve()
  port.on('message', (request: Request) => {
    queue = queue.then(async () => {
      try {
        const handler = handlers[request.method]
        if (handler == null) throw new WorkerError(`unknown worker method ${request.method}`)
        const result = await handler(request.args)
        if (result instanceof Transfer) port.postMessage({ id: request.id, ok: true, value: result.value } satisfies Response, result.transfer)
        else port.postMessage({ id: request.id, ok: true, value: result } satisfies Response)
      } catch (err: any) {
        port.postMessage({ id: request.id, ok: false, name: err?.name ?? 'Error', message: err?.message ?? String(err) } satisfies Response)
      }
    })
  })
}
