// llama.cpp through node-llama-cpp, the benchmark's anchor. It is installed by the benchmark alone
// (into the cache folder, with its prebuilt CPU binaries from npm), never by `npm test` or the
// workspace lockfile, and imported from there.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

export const NODE_LLAMA_CPP_SPEC = 'node-llama-cpp@3'

/** Installs node-llama-cpp into `<benchDir>/node-llama-cpp` if it is not there; returns its entry file. */
export function ensureNodeLlamaCpp (benchDir: string, note: (msg: string) => void): string {
  const prefix = join(benchDir, 'node-llama-cpp')
  const entry = join(prefix, 'node_modules', 'node-llama-cpp', 'dist', 'index.js')
  if (existsSync(entry)) return entry
  mkdirSync(prefix, { recursive: true })
  note(`installing ${NODE_LLAMA_CPP_SPEC} into ${prefix} (once)…`)
  // its postinstall would try to build llama.cpp from source: the prebuilt @node-llama-cpp/linux-x64 package is enough
  execFileSync('npm', ['install', '--prefix', prefix, NODE_LLAMA_CPP_SPEC, '--no-audit', '--no-fund', '--ignore-scripts'], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' }
  })
  if (!existsSync(entry)) throw new Error(`npm installed ${NODE_LLAMA_CPP_SPEC} but ${entry} is missing`)
  return entry
}

export interface LlamaCppRun {
  /** Time to the first new token (prefill of the prompt + sampling it). */
  prefillMs: number
  /** Decode steps per second after the first token. */
  tokensPerSecond: number
  ids: number[]
}

export interface LlamaCppModel {
  /** Greedy generation of `newTokens` tokens from `promptIds` in a fresh sequence state. */
  generate (promptIds: number[], newTokens: number): Promise<LlamaCppRun>
  /**
   * The same generation as a stream of its tokens, on one of the context's sequences: streams on
   * different sequences that evaluate at once share llama.cpp's batches (node-llama-cpp batches them).
   */
  stream (promptIds: number[], newTokens: number): AsyncGenerator<number, { ids: number[] }>
  /** The next-token distribution (probabilities) after `promptIds`, as a dense array over the vocabulary. */
  nextTokenProbabilities (promptIds: number[], vocabSize: number): Promise<Float32Array>
  close (): Promise<void>
}

/** Loads a GGUF file on the CPU with `threads` threads and `sequences` sequences of `contextSize` tokens each. */
export async function loadLlamaCpp (entry: string, modelPath: string, threads: number, contextSize: number, sequences = 1): Promise<LlamaCppModel> {
  const lib = await import(pathToFileURL(entry).href)
  const llama = await lib.getLlama({ gpu: false, build: 'never', logLevel: 'error', maxThreads: threads })
  const model = await llama.loadModel({ modelPath, gpuLayers: 0 })
  // batchSize = the context: a 128-token prompt is one llama_decode, as minga's prefill is one run
  const context = await model.createContext({ contextSize, batchSize: contextSize, threads, sequences })
  const idle = Array.from({ length: sequences }, () => context.getSequence())
  /** An idle sequence, cleared; the caller gives it back to `idle`. */
  async function borrow (): Promise<any> {
    const sequence = idle.pop()
    if (sequence == null) throw new Error(`all ${sequences} llama.cpp sequences are in use`)
    try {
      await sequence.clearHistory()
    } catch (err) {
      idle.push(sequence)
      throw err
    }
    return sequence
  }
  async function * stream (promptIds: number[], newTokens: number): AsyncGenerator<number, { ids: number[] }> {
    const sequence = await borrow()
    try {
      const ids: number[] = []
      for await (const token of sequence.evaluate(promptIds, { temperature: 0 })) {
        ids.push(token)
        yield token
        if (ids.length >= newTokens) break
      }
      return { ids }
    } finally {
      idle.push(sequence)
    }
  }
  return {
    stream,
    async generate (promptIds, newTokens) {
      const started = performance.now()
      const tokens = stream(promptIds, newTokens)
      let step = await tokens.next()
      const firstAt = performance.now()
      while (step.done !== true) step = await tokens.next()
      const { ids } = step.value
      const decodeMs = performance.now() - firstAt
      return { prefillMs: firstAt - started, tokensPerSecond: (ids.length - 1) / (decodeMs / 1000), ids }
    },
    async nextTokenProbabilities (promptIds, vocabSize) {
      const sequence = await borrow()
      try {
        const dense = new Float32Array(vocabSize)
        for await (const output of sequence.evaluateWithMetadata(promptIds, { probabilities: true }, { temperature: 1, topK: vocabSize, topP: 1, minP: 0 })) {
          for (const [token, p] of output.probabilities as Map<number, number>) dense[token] = p
          break
        }
        return dense
      } finally {
        idle.push(sequence)
      }
    },
    async close () {
      await context.dispose()
      await model.dispose()
      await llama.dispose()
    }
  }
}
