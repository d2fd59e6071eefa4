// Bad frames, unknown sessions, wrong shapes and positions get a clear error with the right code,
// and the node keeps serving other sessions exactly.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createClient } from '@minga/client'
import { createLocalModel, untilDone } from '@minga/engine'
import { createMingaNode, DType, ErrorCode, FrameType, INFERENCE_PROTOCOL, newSessionId, openChannel, type Channel, type FrameInit, type MingaNode } from '@minga/p2p'
import { createServer, type MingaServer } from '../src/index.ts'
import { STORIES } from '../../engine/test/helpers.ts'
import { until } from '../../../test/fixtures/until.ts'

let server: MingaServer
let peer: MingaNode
let channel: Channel
const HIDDEN = 64

beforeAll(async () => {
  server = await createServer({ modelDir: STORIES, blocks: { start: 1, end: 4 }, throughput: 100, maxSessions: 3, cacheTokens: 600, quant: 'none' })
  peer = await createMingaNode({ bootstrap: server.addrs() })
  channel = await openChannel(peer, server.addrs()[0], INFERENCE_PROTOCOL)
})
afterAll(async () => {
  await channel?.close()
  await peer?.stop()
  await server?.stop()
})

const tensor = (tokens: number, hidden = HIDDEN): Uint8Array => new Uint8Array(new Float32Array(tokens * hidden).fill(0.5).buffer)
const open = (sessionId: Uint8Array, maxLength = 16, startBlock = 1, endBlock = 4): FrameInit => ({ type: FrameType.OPEN_SESSION, sessionId, startBlock, endBlock, maxLength })
const forward = (sessionId: Uint8Array, over: Partial<FrameInit> = {}): FrameInit => ({
  type: FrameType.FORWARD, sessionId, dtype: DType.F32, startBlock: 1, endBlock: 4, position: 0, tokens: 1, hiddenSize: HIDDEN, payload: tensor(1), ...over
})
async function rejection (frame: FrameInit): Promise<{ code: number, message: string }> {
  const err: any = await channel.request(frame).then(() => { throw new Error('expected an error reply') }, e => e)
  expect(err.name).toBe('RemoteError')
  return { code: err.code, message: err.message }
}

it('answers each kind of bad request with its error code and a clear message', async () => {
  const id = newSessionId()
  expect(await rejection(forward(id))).toMatchObject({ code: ErrorCode.UNKNOWN_SESSION, message: expect.stringMatching(/unknown session [0-9a-f]{32}/) })
  expect((await channel.request(open(id))).type).toBe(FrameType.ACK)
  expect(await rejection(forward(id, { hiddenSize: 32, payload: tensor(1, 32) }))).toMatchObject({ code: ErrorCode.WRONG_SHAPE, message: expect.stringMatching(/hidden size 32 does not match the model's 64/) })
  expect(await rejection(forward(id, { position: 5 }))).toMatchObject({ code: ErrorCode.WRONG_POSITION, message: expect.stringMatching(/position 5 does not match the session's 0 cached tokens/) })
  expect(await rejection(forward(id, { startBlock: 0, endBlock: 4 }))).toMatchObject({ code: ErrorCode.WRONG_SHAPE, message: expect.stringMatching(/runs blocks \[1, 4\), not \[0, 4\)/) })
  // Well-formed frames of a kind a server does not take (malformed bytes are test/fuzz.spec.ts's job).
  expect(await rejection({ ...forward(id), type: FrameType.RESULT })).toMatchObject({ code: ErrorCode.BAD_FRAME, message: expect.stringMatching(/does not accept/) })
  expect(await rejection(open(newSessionId(), 16, 0, 4))).toMatchObject({ code: ErrorCode.BAD_FRAME, message: expect.stringMatching(/layers \[0, 4\) are not within this span \[1, 4\)/) })
  expect(await rejection(open(newSessionId(), 100_000))).toMatchObject({ code: ErrorCode.TOO_LARGE, message: expect.stringMatching(/between 1 and the model's context of 512/) })
  expect(await rejection(forward(id, { tokens: 20, payload: tensor(20) }))).toMatchObject({ code: ErrorCode.TOO_LARGE, message: expect.stringMatching(/exceed the session's length of 16/) })
  // The session survived all of that: a correct step still works.
  const reply = await channel.request(forward(id))
  expect(reply.type).toBe(FrameType.RESULT)
  expect(reply.tokens).toBe(1)
})

it('refuses sessions beyond its limits with "busy"', async () => {
  // One session is still open from the previous test.
  const ids = [newSessionId(), newSessionId()]
  for (const id of ids) await channel.request(open(id, 100))
  expect(await rejection(open(newSessionId(), 100))).toMatchObject({ code: ErrorCode.BUSY, message: expect.stringMatching(/busy: all 3 sessions are in use/) })
  for (const id of ids) await channel.request({ type: FrameType.CLOSE_SESSION, sessionId: id })
  // KV caches grow as sessions fill them, within the budget of 600 tokens (0.44 MiB for these 3 layers)
  const big = newSessionId()
  await channel.request(open(big, 501))
  await channel.request(forward(big, { tokens: 500, payload: tensor(500) }))
  const small = newSessionId()
  await channel.request(open(small, 200))
  expect(await rejection(forward(small, { tokens: 128, payload: tensor(128) }))).toMatchObject({
    code: ErrorCode.BUSY, message: expect.stringMatching(/busy: the KV cache is full \(0\.3\d of 0\.44 MB in use\): session [0-9a-f]+ cannot grow to 128 tokens/)
  })
  // the session that could not grow is still usable within what fits, and the big one carries on
  expect((await channel.request(forward(small, { tokens: 64, payload: tensor(64) }))).type).toBe(FrameType.RESULT)
  expect((await channel.request(forward(big, { position: 500 }))).type).toBe(FrameType.RESULT)
  for (const id of [big, small]) await channel.request({ type: FrameType.CLOSE_SESSION, sessionId: id })
})

it('expires idle sessions', async () => {
  // its own server, so that the short idle timeout cannot expire the other tests' sessions on a slow machine
  const brief = await createServer({ modelDir: STORIES, blocks: { start: 1, end: 4 }, throughput: 100, sessionIdleMs: 500 })
  const ch = await openChannel(peer, brief.addrs()[0], INFERENCE_PROTOCOL)
  try {
    const id = newSessionId()
    await ch.request(open(id))
    await until(() => brief.openSessions === 0, 'the idle session has expired')
    const err: any = await ch.request(forward(id)).catch(e => e)
    expect(err).toMatchObject({ name: 'RemoteError', code: ErrorCode.EXPIRED, message: expect.stringMatching(/expired: session [0-9a-f]+ was idle/) })
  } finally {
    await ch.close()
    await brief.stop()
  }
})

it('frees a session when the stream that opened it closes', async () => {
  const before = server.openSessions
  const other = await openChannel(peer, server.addrs()[0], INFERENCE_PROTOCOL)
  const id = newSessionId()
  await other.request(open(id))
  expect(server.openSessions).toBe(before + 1)
  await other.close()
  await until(() => server.openSessions === before, 'the closed stream\'s session is freed')
  expect(await rejection(forward(id))).toMatchObject({ code: ErrorCode.UNKNOWN_SESSION })
})

it('keeps serving a normal client exactly after all of the above', async () => {
  const full = await createServer({ modelDir: STORIES, blocks: { start: 0, end: 5 }, bootstrap: server.addrs(), throughput: 100, quant: 'none' })
  try {
    const local = await createLocalModel({ modelDir: STORIES, quant: 'none' })
    const client = await createClient({ modelDir: STORIES, bootstrap: server.addrs() })
    try {
      const [remote, here] = await Promise.all([client, local].map(async m => await untilDone(m.generate('Once upon a time', { maxNewTokens: 20 }))))
      expect(remote.ids).toEqual(here.ids)
    } finally {
      await Promise.all([client.close(), local.close()])
    }
  } finally {
    await full.stop()
  }
})

it('only the peer that opened a session may use or close it', async () => {
  const id = newSessionId()
  await channel.request(open(id))
  const stranger = await createMingaNode({ bootstrap: server.addrs() })
  try {
    const theirs = await openChannel(stranger, server.addrs()[0], INFERENCE_PROTOCOL)
    const err: any = await theirs.request(forward(id)).catch(e => e)
    expect(err).toMatchObject({ name: 'RemoteError', code: ErrorCode.UNKNOWN_SESSION })
    await theirs.request({ type: FrameType.CLOSE_SESSION, sessionId: id })
    await theirs.close()
  } finally {
    await stranger.stop()
  }
  expect((await channel.request(forward(id))).type).toBe(FrameType.RESULT)
  await channel.request({ type: FrameType.CLOSE_SESSION, sessionId: id })
})
