// One configuration of `pnpm bench` in a process of its own (so its peak RSS is its own): the local
// engine, llama.cpp (node-llama-cpp) or a swarm client. It loads once, then runs what the parent
// asks over IPC, so the parent can alternate configurations run by run.
//
//   node --import tsx bench-runner.ts '<RunnerInit as JSON>'   (spawned by bench.ts with an IPC channel)
import '@minga/p2p/polyfill'
import { createLocalModel, untilDone, type GenerationResult, type LocalModel, type Quantization } from '@minga/engine'
import { procStatus } from '../../engine/bench/bench-helpers.ts'
import { loadLlamaCpp, type LlamaCppModel } from '../../engine/bench/llama-cpp.ts'
import { createClient, type MingaClient } from '../src/index.ts'

export type RunnerInit =
  | { kind: 'minga', modelDir: string, quant: Quantization, headQuant: Quantization, threads: number }
  | { kind: 'llama', entry: string, gguf: string, threads: number, contextSize: number, /** concurrent sequences (default 1) */ sequences?: number }
  | { kind: 'swarm', modelDir: string, bootstrap: string, threads: number, servers: number, chains?: boolean }

export type RunnerRequest =
  /** `prompts.length` generations at once (concurrent sessions), each of `newTokens` greedy tokens. */
  | { op: 'run', prompts: number[][], newTokens: number }
  /** The next-token distribution after the prompt (softmax of the logits), for the sanity check. */
  | { op: 'probabilities', prompt: number[], vocabSize: number }
  | { op: 'close' }

export interface SessionRun { prefillMs: number, tokensPerSecond: number, ids: number[], /** a swarm's route */ hops?: number }
export interface RunnerRun { sessions: SessionRun[], wallMs: number, peakRssBytes: number }

interface Runner {
  generate: (prompt: number[], newTokens: number) => Promise<SessionRun>
  /** The same generation as a stream of tokens (the concurrent runs pace it: see decodeTogether). */
  stream?: (prompt: number[], newTokens: number) => AsyncGenerator<unknown, { ids: number[], route?: unknown[] }>
  probabilities: (prompt: number[], vocabSize: number) => Promise<Float32Array>
  close: () => Promise<void>
}

const fromGeneration = (r: GenerationResult): SessionRun => ({ prefillMs: r.prefillMs, tokensPerSecond: r.tokensPerSecond, ids: r.ids })

function softmax (logits: Float32Array): Float32Array {
  let max = -Infinity
  for (const v of logits) if (v > max) max = v
  let sum = 0
  const out = Float32Array.from(logits, v => { const e = Math.exp(v - max); sum += e; return e })
  for (let i = 0; i < out.length; i++) out[i] /= sum
  return out
}

async function mingaRunner (init: Extract<RunnerInit, { kind: 'minga' }>): Promise<Runner> {
  const model: LocalModel = await createLocalModel({ modelDir: init.modelDir, quant: init.quant, headQuant: init.headQuant, threads: init.threads })
  return {
    generate: async (prompt, newTokens) => fromGeneration(await untilDone(model.generate(prompt, { maxNewTokens: newTokens, temperature: 0 }))),
    probabilities: async (prompt) => {
      const chain = await model.openChain(prompt.length)
      try {
        const hidden = await chain.forward(await model.head.embed(prompt), prompt.length)
        const size = model.config.hiddenSize
        return softmax(await model.head.logits(hidden.slice((prompt.length - 1) * size), 1))
      } finally {
        await chain.close()
      }
    },
    close: async () => { await model.close() }
  }
}

async function llamaRunner (init: Extract<RunnerInit, { kind: 'llama' }>): Promise<Runner> {
  const model: LlamaCppModel = await loadLlamaCpp(init.entry, init.gguf, init.threads, init.contextSize, init.sequences)
  return {
    generate: async (prompt, newTokens) => await model.generate(prompt, newTokens),
    stream: (prompt, newTokens) => model.stream(prompt, newTokens),
    probabilities: async (prompt, vocabSize) => await model.nextTokenProbabilities(prompt, vocabSize),
    close: async () => { await model.close() }
  }
}

async function swarmRunner (init: Extract<RunnerInit, { kind: 'swarm' }>): Promise<Runner> {
  const client: MingaClient = await createClient({ modelDir: init.modelDir, bootstrap: [init.bootstrap], threads: init.threads, chains: init.chains })
  // announcements take a moment to reach the DHT: wait until a generation routes through every hop
  const deadline = Date.now() + 120_000
  for (;;) {
    try {
      const warm = await untilDone(client.generate([1, 2, 3], { maxNewTokens: 2, temperature: 0 }))
      // (the planner may cut one server's span into several hops: the runs report their hop count)
      const servers = new Set(warm.route.map(hop => hop.peerId)).size
      if (servers === init.servers) break
      throw new Error(`route through ${servers} servers, expected ${init.servers}: ${JSON.stringify(warm.route)}`)
    } catch (err) {
      if (Date.now() > deadline) throw err
      await new Promise(resolve => setTimeout(resolve, 1000))
    }
  }
  return {
    generate: async (prompt, newTokens) => {
      const result = await untilDone(client.generate(prompt, { maxNewTokens: newTokens, temperature: 0 }))
      return { ...fromGeneration(result), hops: result.route.length }
    },
    stream: (prompt, newTokens) => client.generate(prompt, { maxNewTokens: newTokens, temperature: 0 }),
    probabilities: async () => { throw new Error('a swarm runner gives no probabilities') },
    close: async () => { await client.close() }
  }
}

/**
 * Concurrent generations, measured while all of them decode: each one prefills and yields its first
 * token, then waits until every other one has too (prefills would otherwise overlap the first ones'
 * decoding). Every session's tok/s is its tokens after the first over the common window, from that
 * moment to the last one's end, so the rates add up to the aggregate throughput.
 */
async function decodeTogether (runner: Runner, prompts: number[][], newTokens: number): Promise<SessionRun[]> {
  if (runner.stream == null) throw new Error('this runner cannot pace concurrent sessions')
  const stream = runner.stream
  let release = (_at: number): void => {}
  const allPrefilled = new Promise<number>(resolve => { release = resolve })
  let prefilling = prompts.length
  const sessions = await Promise.all(prompts.map(async prompt => {
    const started = performance.now()
    const tokens = stream(prompt, newTokens)
    let step = await tokens.next()
    const prefillMs = performance.now() - started
    if (--prefilling === 0) release(performance.now())
    await allPrefilled
    while (step.done !== true) step = await tokens.next()
    return { result: step.value, prefillMs, ended: performance.now() }
  }))
  const windowSeconds = (Math.max(...sessions.map(s => s.ended)) - await allPrefilled) / 1000
  return sessions.map(({ result, prefillMs }) => ({
    prefillMs, ids: result.ids, hops: result.route?.length, tokensPerSecond: Math.max(0, result.ids.length - 1) / windowSeconds
  }))
}

async function main (): Promise<void> {
  const init = JSON.parse(process.argv[2]) as RunnerInit
  const runner = init.kind === 'minga' ? await mingaRunner(init) : init.kind === 'llama' ? await llamaRunner(init) : await swarmRunner(init)
  process.send!({ ready: true, peakRssBytes: procStatus('VmHWM') })
  process.on('message', (request: RunnerRequest) => {
    void (async () => {
      try {
        if (request.op === 'close') {
          await runner.close()
          process.send!({ closed: true }, () => process.exit(0))
          return
        }
        if (request.op === 'probabilities') {
          const p = await runner.probabilities(request.prompt, request.vocabSize)
          process.send!({ probabilities: Array.from(p) })
          return
        }
        const started = performance.now()
        const sessions = request.prompts.length === 1
          ? [await runner.generate(request.prompts[0], request.newTokens)]
          : await decodeTogether(runner, request.prompts, request.newTokens)
        const run: RunnerRun = { sessions, wallMs: performance.now() - started, peakRssBytes: procStatus('VmHWM') }
        process.send!({ run })
      } catch (err) {
        process.send!({ error: (err as Error).stack ?? String(err) })
      }
    })()
  })
}

main().catch(err => {
  process.send?.({ error: (err as Error).stack ?? String(err) }, () => process.exit(1))
})
