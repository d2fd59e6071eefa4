// The examples/ packages, run as their README says against a loopback stories260k swarm: what they
// print must be what the swarm really did (the local engine's greedy text, the node's span).
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLocalModel, untilDone } from '@minga/engine'
import { REPO_ROOT, startNode, type NodeProcess } from '../scripts/swarm-processes.ts'
import { STORIES } from '../packages/engine/test/helpers.ts'

const PROMPT = 'Once upon a time'

interface Example { child: ChildProcess, stdout: () => string, stderr: () => string, exited: Promise<number | string> }

/** Starts `node --import tsx examples/<file> <args>` from the repository's root. */
function runExample (file: string, args: string[], env: NodeJS.ProcessEnv = {}): Example {
  const child = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'examples', file), ...args], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env }
  })
  let stdout = ''
  let stderr = ''
  child.stdout!.setEncoding('utf8').on('data', (s: string) => { stdout += s })
  child.stderr!.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  const exited = new Promise<number | string>(resolve => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)))
  return { child, stdout: () => stdout, stderr: () => stderr, exited }
}

/** Resolves with the first line the example prints on stdout (fails if it exits first). */
async function firstLine (example: Example, timeoutMs = 90_000): Promise<string> {
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`no output in ${timeoutMs} ms\n${example.stderr()}`)) }, timeoutMs)
    const check = (): void => {
      const newline = example.stdout().indexOf('\n')
      if (newline >= 0) {
        clearTimeout(timer)
        resolve(example.stdout().slice(0, newline))
      }
    }
    example.child.stdout!.on('data', check)
    void example.exited.then(code => { clearTimeout(timer); reject(new Error(`exited (${code}) before printing a line\n${example.stderr()}`)) })
  })
}

describe('examples over a loopback swarm', () => {
  let bootstrap: NodeProcess
  let embedded: Example | undefined
  let expectedText: string
  beforeAll(async () => {
    const local = await createLocalModel({ modelDir: STORIES })
    try {
      expectedText = (await untilDone(local.generate(PROMPT, { maxNewTokens: 20, temperature: 0 }))).text
    } finally {
      await local.close()
    }
    bootstrap = await startNode(['bootstrap'], { label: 'bootstrap' })
  })
  afterAll(async () => {
    embedded?.child.kill('SIGKILL')
    await bootstrap?.stop()
  })

  it('embed-server hosts the model\'s layers inside a program, and sdk-stream streams the local engine\'s text through it', async () => {
    embedded = runExample('embed-server/embed.ts', ['--model', STORIES, '--blocks', '0:5'], { MINGA_BOOTSTRAP: bootstrap.ready.addrs[0] })
    const ready = JSON.parse(await firstLine(embedded))
    expect(ready.blocks).toEqual([0, 5])

    const stream = runExample('sdk-stream/stream.ts', ['--model', STORIES, '--bootstrap', bootstrap.ready.addrs[0], '--prompt', PROMPT, '--max-new-tokens', '20'])
    expect(await stream.exited).toBe(0)
    expect(stream.stdout()).toBe(expectedText)
    expect(stream.stderr()).toContain(`${ready.peerId.slice(-6)} [0, 5)`)

    embedded.child.kill('SIGTERM')
    expect(await embedded.exited).toBe(0)
    expect(embedded.stderr()).toContain('[host] the minga node has stopped')
  })
})
