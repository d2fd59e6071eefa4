// The normal client's generations that run alongside the fuzz and must equal the local engine's.
import { type MingaClient } from '@minga/client'
import { ErrorCode } from '@minga/p2p'
import type { GenerationCheck } from './report.ts'

export async function collect<T, R> (gen: AsyncGenerator<T, R>): Promise<R> {
  while (true) {
    const r = await gen.next()
    if (r.done === true) return r.value
  }
}

export interface NormalState {
  generations: number
  rounds: number
  busyRetries: number
  longestGenerationMs: number
  failures: string[]
  checks: GenerationCheck[]
}

export async function generateChecked (client: MingaClient, prompt: string, reference: number[], maxNewTokens: number, state: NormalState, retryMs: number): Promise<GenerationCheck | undefined> {
  const started = Date.now()
  for (let attempt = 0; ; attempt++) {
    try {
      const result = await collect(client.generate(prompt, { maxNewTokens, temperature: 0 }))
      state.longestGenerationMs = Math.max(state.longestGenerationMs, Date.now() - started)
      state.generations++
      const check = { prompt, ids: result.ids, reference, equal: sameIds(result.ids, reference) }
      return check
    } catch (err: any) {
      // the server refuses sessions while a flood holds every slot (BUSY; a client may also step
      // back from a server that refused it, NoRouteError): retry, but count it
      const busy = (err?.name === 'RemoteError' && err.code === ErrorCode.BUSY) || /\bbusy\b/i.test(String(err?.message)) || err?.name === 'NoRouteError'
      if (busy && Date.now() - started < retryMs) {
        state.busyRetries++
        await new Promise(resolve => setTimeout(resolve, 20 + Math.min(200, attempt * 10)))
        continue
      }
      state.failures.push(`"${prompt}": ${err?.name ?? 'Error'}: ${err?.message ?? err}`)
      return undefined
    }
  }
}

function sameIds (a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}
