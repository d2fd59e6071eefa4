// Sessions belong to the stream that opened them. Stream ids are only unique within one connection
// (yamux numbers each connection's streams 1, 3, 5…), so another peer's stream with the same id must
// neither free nor keep alive a session; and a stream that dies while its OPEN is still running must
// not leave the session behind. (Found by @minga/fuzz.)
// Nothing here waits a fixed time: each step waits for the server's session count, and every test
// closes what it opened, so a failure cannot leak sessions into the next test.
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest'
import { createSpanExecutor, type SpanExecutor } from '@minga/engine'
import {
  createMingaNode, DType, encodeFrame, FrameType, INFERENCE_PROTOCOL, newSessionId, openChannel, writeMessage,
  type Channel, type FrameInit, type MingaNode
} from '@minga/p2p'
import { createServer, type MingaServer } from '../src/index.ts'
import { STORIES } from '../../engine/test/helpers.ts'
import { until } from '../../../test/fixtures/until.ts'

const HIDDEN = 64
const MAX_SESSIONS = 2
let server: MingaServer
let engine: SpanExecutor
/** While set, the executor's OPEN reports that it started, waits for `release`, and reports when it has opened. */
let gate: { started: () => void, release: Promise<void>, opened: () => void } | undefined
const peers: MingaNode[] = []
let channels: Channel[] = []

beforeAll(async () => {
  engine = await createSpanExecutor({ modelDir: STORIES, start: 0, end: 5, maxSessions: MAX_SESSIONS })
  const executor: SpanExecutor = {
    ...engine,
    openSession: async (...args) => {
      const held = gate
      if (held == null) return await engine.openSession(...args)
      held.started()
      await held.release
      try {
        return await engine.openSession(...args)
      } finally {
        held.opened()
      }
    }
  }
  server = await createServer({ modelDir: STORIES, blocks: { start: 0, end: 5 }, executor, throughput: 100 })
  for (let i = 0; i < 2; i++) peers.push(await createMingaNode({ listen: [] }))
})

afterEach(async () => {
  gate = undefined
  for (const c of channels) await c.close({ timeoutMs: 1000 }).catch(() => {})
  channels = []
  await sessionsOpen(0)
  await until(async () => (await engine.stats()).freeSessions === MAX_SESSIONS, 'every engine session is free')
})

afterAll(async () => {
  for (const p of peers) await p.stop()
  await server?.stop()
})

async function channel (peer: MingaNode): Promise<Channel> {
  const c = await openChannel(peer, server.addrs()[0], INFERENCE_PROTOCOL)
  channels.push(c)
  return c
}

async function sessionsOpen (count: number): Promise<void> {
  await until(() => server.openSessions === count, `the server holds ${count} session(s) (it holds ${server.openSessions})`)
}

const open = (sessionId: Uint8Array): FrameInit => ({ type: FrameType.OPEN_SESSION, sessionId, startBlock: 0, endBlock: 5, maxLength: 8 })
const step = (sessionId: Uint8Array, position: number): FrameInit => ({
  type: FrameType.FORWARD, sessionId, dtype: DType.F32, startBlock: 0, endBlock: 5, position, tokens: 1, hiddenSize: HIDDEN,
  payload: new Uint8Array(new Float32Array(HIDDEN).fill(0.25).buffer)
})

/**
 * Channels from `a` and from `b` whose streams have the same id (on their two connections). Each
 * connection numbers its streams upwards on its own, so the one behind opens another stream until
 * the two meet; this does not depend on how many streams either connection opened before.
 */
async function channelsWithSameId (a: MingaNode, b: MingaNode): Promise<[Channel, Channel]> {
  let chA = await channel(a)
  let chB = await channel(b)
  for (let tries = 0; chA.stream.id !== chB.stream.id; tries++) {
    if (tries > 500) throw new Error(`stream ids ${chA.stream.id} and ${chB.stream.id} never met`)
    if (Number(chA.stream.id) < Number(chB.stream.id)) {
      await chA.close()
      chA = await channel(a)
    } else {
      await chB.close()
      chB = await channel(b)
    }
  }
  return [chA, chB]
}

it('a session outlives another connection\'s stream that has the same id', async () => {
  const [chA, chB] = await channelsWithSameId(peers[0], peers[1])
  const sa = newSessionId()
  const sb = newSessionId()
  expect((await chA.request(open(sa))).type).toBe(FrameType.ACK)
  expect((await chB.request(open(sb))).type).toBe(FrameType.ACK)
  await sessionsOpen(2)
  await chA.close() // frees sa, and only sa
  await sessionsOpen(1)
  expect((await chB.request(step(sb, 0))).type).toBe(FrameType.RESULT)
  await chB.close()
  await sessionsOpen(0)
  // both slots are free again: nothing leaked
  const chC = await channel(peers[0])
  for (let i = 0; i < MAX_SESSIONS; i++) expect((await chC.request(open(newSessionId()))).type).toBe(FrameType.ACK)
})

it('closing a stream frees its session even when another connection\'s stream with the same id opened one first', async () => {
  const [chA, chB] = await channelsWithSameId(peers[0], peers[1])
  expect((await chA.request(open(newSessionId()))).type).toBe(FrameType.ACK)
  expect((await chB.request(open(newSessionId()))).type).toBe(FrameType.ACK)
  await sessionsOpen(2)
  await chB.close()
  await sessionsOpen(1)
  // chB's session is gone, so one slot is free while chA still holds the other
  expect((await chA.request(open(newSessionId()))).type).toBe(FrameType.ACK)
  await sessionsOpen(2)
})

it('a stream reset while its OPEN is still running leaves no session behind', async () => {
  const probe = await channel(peers[0])
  for (let i = 0; i < MAX_SESSIONS; i++) {
    let release!: () => void
    let opened!: () => void
    const done = new Promise<void>(resolve => { opened = resolve })
    const started = new Promise<void>(resolve => { gate = { started: resolve, release: new Promise(resolve => { release = resolve }), opened } })
    const stream = await peers[0].libp2p.dialProtocol(probe.remotePeer, INFERENCE_PROTOCOL)
    await writeMessage(stream, [encodeFrame({ ...open(newSessionId()), requestId: 1 })])
    await started // the OPEN is inside the executor now
    gate = undefined
    stream.abort(new Error('gone'))
    await until(() => stream.status !== 'open', 'the aborted stream is closed')
    release()
    await done
    // the executor opened the session for a stream that is gone: the server must close it again
    await until(async () => (await engine.stats()).freeSessions === MAX_SESSIONS, 'the orphaned session is closed')
  }
  expect(server.openSessions).toBe(0)
  for (let i = 0; i < MAX_SESSIONS; i++) expect((await probe.request(open(newSessionId()))).type).toBe(FrameType.ACK)
})
