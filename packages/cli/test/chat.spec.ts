// `minga chat`, `generate --chat` and `minga api`: in this process through runCli where only the
// command's logic is tested, as real processes where a terminal or a ready line is.
import { spawn, spawnSync } from 'node:child_process'
import { PassThrough, Readable } from 'node:stream'
import { afterAll, describe, expect, it } from 'vitest'
import { createLocalModel, createSpanExecutor, loadChatTemplate, untilDone, type ChatMessage } from '@minga/engine'
import { createMingaNode } from '@minga/p2p'
import { createServer } from '@minga/server'
import { STORIES, storiesWithChatTemplate, waitFor } from '../../engine/test/helpers.ts'
import { MINGA_BIN, REPO_ROOT, startNode } from '../src/processes.ts'
import { runCli } from '../src/index.ts'

const MAX_TOKENS = 10
/** script(1) (util-linux) makes the pseudo-terminal; without it the terminal test is skipped. */
const HAS_SCRIPT = spawnSync('script', ['--version']).status === 0

/** Runs the CLI in this process with `input` as its stdin (not a terminal). */
async function runWithStdin (input: string, ...args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  const stdout = new PassThrough().setEncoding('utf8')
  const stderr = new PassThrough().setEncoding('utf8')
  let out = ''
  let err = ''
  stdout.on('data', (s: string) => { out += s })
  stderr.on('data', (s: string) => { err += s })
  const code = await runCli(['node', 'minga', ...args], { stdin: Readable.from([input]), stdout, stderr })
  return { code, stdout: out, stderr: err }
}

describe('minga chat', () => {
  const model = storiesWithChatTemplate()
  afterAll(() => { model.remove() })

  it('keeps the conversation over two turns read from stdin', async () => {
    const turns = ['Tell me a story.', 'What happened next?']
    const local = await createLocalModel({ modelDir: model.path })
    const template = loadChatTemplate(model.path)
    const answers: string[] = []
    try {
      const messages: ChatMessage[] = []
      for (const turn of turns) {
        messages.push({ role: 'user', content: turn })
        const ids = local.tokenizer.encode(template.render(messages), { addSpecialTokens: false })
        const answer = (await untilDone(local.generate(ids, { maxNewTokens: MAX_TOKENS }))).text
        messages.push({ role: 'assistant', content: answer })
        answers.push(answer)
      }
    } finally {
      await local.close()
    }
    const { code, stdout, stderr } = await runWithStdin(turns.join('\n') + '\n', 'chat', '--model', model.path, '--max-new-tokens', String(MAX_TOKENS))
    expect(code, stderr).toBe(0)
    expect(stdout).toBe(answers.map(a => a + '\n').join(''))
    expect(stderr.match(/minga chat: \d+ tokens/g)).toHaveLength(2)
  })

  it.skipIf(!HAS_SCRIPT)('in a terminal (script(1) from util-linux): Ctrl-C stops the current answer, Ctrl-C at the prompt does not quit, Ctrl-D does', async () => {
    // A server whose third decode step waits for the test: the answer is surely still running at Ctrl-C.
    const bootstrap = await createMingaNode({})
    const span = await createSpanExecutor({ modelDir: model.path, start: 0, end: 5 })
    let decodeSteps = 0
    let release!: () => void
    const released = new Promise<void>(resolve => { release = resolve })
    const server = await createServer({
      modelDir: model.path,
      blocks: { start: 0, end: 5 },
      bootstrap: bootstrap.addrs(),
      throughput: 100,
      executor: {
        ...span,
        forward: async (id, hidden, options) => {
          if (options.tokens === 1 && ++decodeSteps === 3) await released
          return await span.forward(id, hidden, options)
        }
      }
    })
    const command = [process.execPath, MINGA_BIN, 'chat', '--model', model.path, '--bootstrap', bootstrap.addrs()[0], '--max-new-tokens', '20']
    // script(1) runs the command on a pseudo-terminal and relays our pipe to it.
    const child = spawn('script', ['-qfec', command.map(a => `'${a}'`).join(' '), '/dev/null'], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, TERM: 'dumb' } })
    let screen = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => { screen += s })
    const exited = new Promise<number | null>(resolve => child.once('exit', resolve))
    const prompts = (): number => screen.split('> ').length - 1
    try {
      await waitFor(() => prompts() >= 1, 'the first prompt', 60_000)
      child.stdin.write('Tell me a story.\r')
      await waitFor(() => decodeSteps >= 3, 'the answer to reach the held step', 30_000)
      child.stdin.write('\x03')
      await waitFor(() => screen.includes('(stopped)'), '"(stopped)" after Ctrl-C', 30_000)
      release() // the server finishes the held step, then reads the CLOSE_SESSION queued behind it
      await waitFor(() => server.openSessions === 0, 'the stopped answer\'s session to close', 10_000)
      await waitFor(() => prompts() >= 2, 'the prompt after the stopped answer', 30_000)
      child.stdin.write('\x03')
      await waitFor(() => screen.includes('(Ctrl-D quits)'), 'the hint after Ctrl-C at the prompt', 30_000)
      child.stdin.write('\x04')
      expect(await exited).toBe(0)
    } finally {
      release()
      child.kill('SIGKILL')
      await server.stop({ immediate: true })
      await bootstrap.stop()
    }
  })

  it('a model without a chat template is a one-line error, for chat and generate --chat', async () => {
    for (const args of [['chat', '--model', STORIES], ['generate', '--model', STORIES, '--chat', '--prompt', 'Hi']]) {
      const { code, stdout, stderr } = await runWithStdin('', ...args)
      expect(code).toBe(1)
      expect(stdout).toBe('')
      expect(stderr.trim()).toMatch(/^minga: error: .*stories260k has no chat template .*raw completions still work$/)
    }
  })
})

describe('minga api', () => {
  it('prints its ready line, answers /v1/models from memory and /health 503 without servers', async () => {
    const bootstrap = await createMingaNode({})
    const api = await startNode(['api', '--model', STORIES, '--bootstrap', bootstrap.addrs()[0], '--port', '0', '--model-name', 'tiny'], { label: 'api' })
    try {
      const { url } = api.ready as unknown as { url: string }
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
      const models = await (await fetch(`${url}/v1/models`)).json()
      expect(models).toEqual({ object: 'list', data: [{ id: 'tiny', object: 'model', created: expect.any(Number), owned_by: 'minga' }] })
      const health = await fetch(`${url}/health`)
      expect(health.status).toBe(503)
      expect(await health.json()).toEqual({ status: 'unavailable', missingBlocks: [0, 1, 2, 3, 4] })
    } finally {
      expect(await api.stop()).toBe(0)
      await bootstrap.stop()
    }
  })
})
