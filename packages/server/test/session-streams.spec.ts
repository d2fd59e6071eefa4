// Sessions belong to the stream that opened them. Stream ids are only unique within one connection
// (yamux numbers each connection's streams 1, 3, 5…), so another peer's stream with the same id must
// neither free nor keep alive a session; and a stream that dies while its OPEN is still running must
// not leave the session behind. (Found by scripts/fuzz.ts.)
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createSpanExecutor, type SpanExecutor } from '@minga/engine'
import {
  createMingaNode, DType, encodeFrame, FrameType, INFERENCE_PROTOCOL, newSessionId, openChannel, writeMessage,
  type Channel, type FrameInit, type MingaNode
} from '@minga/p2p'
import { createServer, type MingaServer } from '../src/index.ts'
import { STORIES } from '../../engine/test/helpers.ts'

const HIDDEN = 64
let server: MingaServer
let executor: SpanExecutor
let openDelayMs = 0
const peers: MingaNode[] = []
const channels: Channel[] = []

beforeAll(async () => {
  const engine = await createSpanExecutor({ modelDir: STORIES, start: 0, end: 5, maxSessions: 2 })
  // the engine, with an OPEN that can be made slow
  executor = {
    ...engine,
    openSession: async (...args) => {
      if (openDelayMs > 0) await new Promise(resolve => setTimeout(resolve, openDelayMs))
      return await engine.openSession(...args)
    }
  }
  server = await createServer({ modelDir: STORIES, blocks: { start: 0, end: 5 }, executor, throughput: 100 })
  for (let i = 0; i < 2; i++) peers.push(await createMingaNode({ listen: [] }))
})

afterAll(async () => {
  for (const c of channels) await c.close({ timeoutMs: 1000 }).catch(() => {})
  for (const p of peers) await p.stop()
  await server?.stop()
})

async function channel (peer: MingaNode): Promise<Channel> {
  const c = await openChannel(peer, server.addrs()[0], INFERENCE_PROTOCOL)
  channels.push(c)
  return c
}

const open = (sessionId: Uint8Array): FrameInit => ({ type: FrameType.OPEN_SESSION, sessionId, startBlock: 0, endBlock: 5, maxLength: 8 })
const step = (sessionId: Uint8Array, position: number): FrameInit => ({
  type: FrameType.FORWARD, sessionId, dtype: DType.F32, startBlock: 0, endBlock: 5, position, tokens: 1, hiddenSize: HIDDEN,
  payload: new Uint8Array(new Float32Array(HIDDEN).fill(0.25).buffer)
})
const settle = async (): Promise<void> => { await new Promise(resolve => setTimeout(resolve, 300)) }

/** A channel from `peer` whose stream has the same id as `like`'s (on another connection). */
async function channelWithSameId (peer: MingaNode, like: Channel): Promise<Channel> {
  for (let i = 0; i < 40; i++) {
    const c = await channel(peer)
    if (c.stream.id === like.stream.id) return c
    await c.close()
  }
  throw new Error(`no stream with id ${like.stream.id} in 40 tries`)
}

it('a session outlives another connection\'s stream that has the same id', async () => {
  const [a, b] = peers
  const chA = await channel(a)
  const sa = newSessionId()
  expect((await chA.request(open(sa))).type).toBe(FrameType.ACK)
  const chB = await channelWithSameId(b, chA)
  const sb = newSessionId()
  expect((await chB.request(open(sb))).type).toBe(FrameType.ACK)
  await chA.close() // frees sa, and only sa
  await settle()
  expect((await chB.request(step(sb, 0))).type).toBe(FrameType.RESULT)
  await chB.close()
  await settle()
  // both slots are free again (maxSessions 2): nothing leaked
  const chC = await channel(a)
  for (let i = 0; i < 2; i++) expect((await chC.request(open(newSessionId()))).type).toBe(FrameType.ACK)
  await chC.close()
  await settle()
})

it('closing a stream frees its session even when another connection\'s stream with the same id opened one first', async () => {
  const [a, b] = peers
  const chA = await channel(a)
  expect((await chA.request(open(newSessionId()))).type).toBe(FrameType.ACK)
  const chB = await channelWithSameId(b, chA)
  expect((await chB.request(open(newSessionId()))).type).toBe(FrameType.ACK)
  await chB.close()
  await settle()
  // chB's session is gone, so one slot is free while chA still holds the other
  expect((await chA.request(open(newSessionId()))).type).toBe(FrameType.ACK)
  await chA.close()
  await settle()
})

it('a stream reset while its OPEN is still running leaves no session behind', async () => {
  const [a] = peers
  const probe = await channel(a)
  openDelayMs = 300
  try {
    for (let i = 0; i < 2; i++) {
      const stream = await a.libp2p.dialProtocol(probe.remotePeer, INFERENCE_PROTOCOL)
      await writeMessage(stream, [encodeFrame({ ...open(newSessionId()), requestId: 1 })])
      await new Promise(resolve => setTimeout(resolve, 100)) // the OPEN is in the (slow) executor now
      stream.abort(new Error('gone'))
    }
    await new Promise(resolve => setTimeout(resolve, 600)) // both OPENs have finished
  } finally {
    openDelayMs = 0
  }
  for (let i = 0; i < 2; i++) expect((await probe.request(open(newSessionId()))).type).toBe(FrameType.ACK)
  await probe.close()
})
