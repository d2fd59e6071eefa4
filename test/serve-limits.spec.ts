// `minga serve`'s limits and shutdown as an operator sees them, on real processes on 127.0.0.1:
// --allow, --max-sessions-per-peer, --max-frame-mb, SIGTERM's drain (--drain-timeout), a second
// SIGTERM, and --identity keeping a node's peer id across restarts.
import { statSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createMingaNode, DType, ErrorCode, FrameType, INFERENCE_PROTOCOL, newSessionId, openChannel,
  type Channel, type FrameInit, type MingaNode
} from '@minga/p2p'
import { runMinga, startNode, type NodeProcess } from '@minga/cli/processes'
import { STORIES, tempDir } from '../packages/engine/test/helpers.ts'
import { until } from './fixtures/until.ts'


const HIDDEN = 64
const tensor = (tokens: number): Uint8Array => new Uint8Array(new Float32Array(tokens * HIDDEN).fill(0.25).buffer)
const open = (sessionId: Uint8Array): FrameInit => ({ type: FrameType.OPEN_SESSION, sessionId, startBlock: 0, endBlock: 5, maxLength: 400 })
const forward = (sessionId: Uint8Array, position: number, tokens = 1): FrameInit => ({
  type: FrameType.FORWARD, sessionId, dtype: DType.F32, startBlock: 0, endBlock: 5, position, tokens, hiddenSize: HIDDEN, payload: tensor(tokens)
})
async function rejection (channel: Channel, frame: FrameInit): Promise<{ code: number, message: string }> {
  const err: any = await channel.request(frame).then(() => { throw new Error('expected an error reply') }, e => e)
  expect(err.name).toBe('RemoteError')
  return { code: err.code, message: err.message }
}
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

describe('serve --allow --max-sessions-per-peer --max-frame-mb --drain-timeout, and SIGTERM', () => {
  let allowed: MingaNode
  let stranger: MingaNode
  let server: NodeProcess
  let impatient: NodeProcess
  beforeAll(async () => {
    ;[allowed, stranger] = await Promise.all([createMingaNode({}), createMingaNode({})])
    const common = ['serve', '--model', STORIES, '--blocks', '0:5', '--throughput', '100']
    ;[server, impatient] = await Promise.all([
      startNode([...common, '--allow', allowed.peerId.toString(), '--max-sessions-per-peer', '1', '--max-frame-mb', '0.0625', '--drain-timeout', '3'], { label: 'serve (limits)' }),
      startNode([...common, '--drain-timeout', '60'], { label: 'serve (60 s drain)' })
    ])
  })
  afterAll(async () => {
    await Promise.all([server?.kill(), impatient?.kill()])
    await Promise.all([allowed?.stop(), stranger?.stop()])
  })

  it('enforces the allow list, the per-peer cap and the frame size; SIGTERM drains, then tells the session to move', async () => {
    const [a, c] = await Promise.all([openChannel(allowed, server.ready.addrs[0], INFERENCE_PROTOCOL), openChannel(stranger, server.ready.addrs[0], INFERENCE_PROTOCOL)])
    expect(await rejection(c, open(newSessionId()))).toMatchObject({ code: ErrorCode.NOT_ALLOWED, message: expect.stringContaining(`peer ${stranger.peerId.toString()} is not on this server's allow list`) })
    const id = newSessionId()
    expect((await a.request(open(id))).type).toBe(FrameType.ACK)
    expect(await rejection(a, open(newSessionId()))).toMatchObject({ code: ErrorCode.BUSY, message: expect.stringContaining(`busy: peer ${allowed.peerId.toString()} already has 1 session open`) })
    expect(await rejection(a, forward(id, 0, 300))).toMatchObject({ code: ErrorCode.TOO_LARGE, message: expect.stringMatching(/exceeds the limit of 65536/) })
    let position = 0
    await a.request(forward(id, position++))

    const started = Date.now()
    const exited = server.stop(20_000)
    // the server logs once it has the signal; from then on no new sessions, but ours goes on
    await until(() => server.log().includes('SIGTERM'), 'the server has logged the SIGTERM')
    expect(await rejection(a, open(newSessionId()))).toMatchObject({ code: ErrorCode.BUSY, message: 'BUSY: busy: this server is shutting down' })
    await a.request(forward(id, position++))
    let moved: any
    while (moved == null) {
      moved = await a.request(forward(id, position)).then(() => { position++ }, err => err)
      if (moved == null) await sleep(100)
    }
    expect(Date.now() - started).toBeGreaterThanOrEqual(2500)
    expect(moved).toMatchObject({ name: 'RemoteError', code: ErrorCode.BUSY })
    expect(moved.message).toMatch(/^BUSY: moving: this server is shutting down, continue elsewhere/)
    expect(await exited).toBe(0)
    expect(server.log()).toMatch(/drain over: telling 1 session to continue elsewhere/)
    await Promise.all([a.close({ timeoutMs: 1000 }), c.close({ timeoutMs: 1000 })])
  })

  it('a second SIGTERM stops at once, even with a session open and a long drain', async () => {
    const channel = await openChannel(allowed, impatient.ready.addrs[0], INFERENCE_PROTOCOL)
    const id = newSessionId()
    await channel.request(open(id))
    await channel.request(forward(id, 0))
    impatient.child.kill('SIGTERM')
    await until(() => impatient.log().includes('send it again to stop at once'), 'the server has logged the first SIGTERM')
    const started = Date.now()
    expect(await impatient.stop(20_000)).toBe(0) // stop() sends the second SIGTERM
    expect(Date.now() - started).toBeLessThan(30_000) // far less than the 60 s drain
    expect(impatient.log()).toMatch(/SIGTERM again: stopping now/)
    channel.abort()
  })
})

describe('serve and bootstrap start-up flags', () => {
  const dir = tempDir('serve-flags')
  afterAll(() => { dir.remove() })

  it('a malformed --allow entry is a one-line error before anything starts', async () => {
    const { code, stdout, stderr } = await runMinga('serve', '--model', STORIES, '--blocks', '0:5', '--allow', 'not-a-peer-id')
    expect(code).toBe(1)
    expect(stdout).toBe('')
    expect(stderr.trim().split('\n')).toEqual([expect.stringMatching(/^minga: error: --allow: "not-a-peer-id" is not a peer id/)])
  })

  it('--identity keeps the peer id across restarts, in a 0600 file', async () => {
    const file = join(dir.path, 'keys', 'bootstrap.key')
    const first = await startNode(['bootstrap', '--identity', file], { label: 'bootstrap 1' })
    await first.stop()
    expect(statSync(file).mode & 0o777).toBe(0o600)
    const second = await startNode(['bootstrap', '--identity', file], { label: 'bootstrap 2' })
    await second.stop()
    expect(second.ready.peerId).toBe(first.ready.peerId)
    expect(second.ready.addrs[0]).toMatch(new RegExp(`/p2p/${first.ready.peerId}$`))
  })
})
