// A node's limits and its graceful stop, with real libp2p nodes on 127.0.0.1: the allow list, the
// sessions-per-peer cap and the frame size limit each refuse with their own code and message while
// everyone else keeps getting exact output; stop() withdraws, drains, then tells sessions to move.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createClient, type MingaClient } from '@minga/client'
import { computeModelId, createLocalModel, untilDone, type GeneratedToken } from '@minga/engine'
import {
  createMingaNode, DType, ErrorCode, findSpans, FrameType, INFERENCE_PROTOCOL, newSessionId, openChannel,
  type Channel, type FrameInit, type MingaNode
} from '@minga/p2p'
import { createServer, type MingaServer } from '../src/index.ts'
import { STORIES } from '../../engine/test/helpers.ts'
import { until } from '../../../test/fixtures/until.ts'

const HIDDEN = 64
const PROMPT = 'Once upon a time'
const OPTIONS = { maxNewTokens: 20, temperature: 0 }
const MODEL_ID = computeModelId(STORIES)
let expected: number[]

beforeAll(async () => {
  const local = await createLocalModel({ modelDir: STORIES, quant: 'none' })
  try {
    expected = await idsOf(local.generate(PROMPT, OPTIONS))
  } finally {
    await local.close()
  }
})

const idsOf = async (stream: AsyncGenerator<GeneratedToken, { ids: number[] }>): Promise<number[]> => (await untilDone(stream)).ids

const tensor = (tokens: number): Uint8Array => new Uint8Array(new Float32Array(tokens * HIDDEN).fill(0.25).buffer)
const open = (sessionId: Uint8Array, maxLength = 64): FrameInit => ({ type: FrameType.OPEN_SESSION, sessionId, startBlock: 0, endBlock: 5, maxLength })
const forward = (sessionId: Uint8Array, position: number, tokens = 1): FrameInit => ({
  type: FrameType.FORWARD, sessionId, dtype: DType.F32, startBlock: 0, endBlock: 5, position, tokens, hiddenSize: HIDDEN, payload: tensor(tokens)
})
const close = (sessionId: Uint8Array): FrameInit => ({ type: FrameType.CLOSE_SESSION, sessionId })

async function rejection (channel: Channel, frame: FrameInit): Promise<{ code: number, message: string }> {
  const err: any = await channel.request(frame).then(() => { throw new Error('expected an error reply') }, e => e)
  expect(err.name).toBe('RemoteError')
  return { code: err.code, message: err.message }
}

describe('allow list, sessions per peer, frame size', () => {
  let allowed: MingaNode
  let stranger: MingaNode
  let clientKeyHolder: MingaNode
  let server: MingaServer
  let client: MingaClient
  let a: Channel
  let c: Channel
  beforeAll(async () => {
    // Peers first, so their ids can go on the allow list (a client's id comes from its key).
    ;[allowed, stranger, clientKeyHolder] = await Promise.all([createMingaNode({}), createMingaNode({}), createMingaNode({})])
    server = await createServer({
      modelDir: STORIES,
      blocks: { start: 0, end: 5 },
      quant: 'none',
      throughput: 100,
      allow: [allowed.peerId.toString(), clientKeyHolder.peerId.toString()],
      maxSessionsPerPeer: 2,
      maxFrameBytes: 64 * 1024
    })
    await Promise.all([allowed.bootstrap(server.addrs()), stranger.bootstrap(server.addrs())])
    ;[a, c] = await Promise.all([openChannel(allowed, server.addrs()[0], INFERENCE_PROTOCOL), openChannel(stranger, server.addrs()[0], INFERENCE_PROTOCOL)])
    const privateKey = clientKeyHolder.privateKey
    await clientKeyHolder.stop()
    client = await createClient({ modelDir: STORIES, bootstrap: server.addrs(), privateKey })
  })
  afterAll(async () => {
    await Promise.all([a?.close(), c?.close(), client?.close()])
    await Promise.all([allowed?.stop(), stranger?.stop()])
    await server?.stop()
  })

  it('refuses sessions from peers not on --allow with NOT_ALLOWED, and serves the ones on it', async () => {
    expect(await rejection(c, open(newSessionId()))).toMatchObject({
      code: ErrorCode.NOT_ALLOWED,
      message: `NOT_ALLOWED: not allowed: peer ${stranger.peerId.toString()} is not on this server's allow list`
    })
    const id = newSessionId()
    expect((await a.request(open(id))).type).toBe(FrameType.ACK)
    expect((await a.request(forward(id, 0, 3))).type).toBe(FrameType.RESULT)
    await a.request(close(id))
    expect(await idsOf(client.generate(PROMPT, OPTIONS))).toEqual(expected)
  })

  it('caps the sessions one peer holds with BUSY, without affecting other peers', async () => {
    const ids = [newSessionId(), newSessionId()]
    for (const id of ids) expect((await a.request(open(id))).type).toBe(FrameType.ACK)
    expect(await rejection(a, open(newSessionId()))).toMatchObject({
      code: ErrorCode.BUSY,
      message: expect.stringContaining(`busy: peer ${allowed.peerId.toString()} already has 2 sessions open`)
    })
    // another peer still gets its sessions, and exact output
    expect(await idsOf(client.generate(PROMPT, OPTIONS))).toEqual(expected)
    await a.request(close(ids[0]))
    const again = newSessionId()
    expect((await a.request(open(again))).type).toBe(FrameType.ACK)
    for (const id of [ids[1], again]) await a.request(close(id))
  })

  it('answers a frame over --max-frame-mb with TOO_LARGE while a concurrent session stays exact', async () => {
    const id = newSessionId()
    await a.request(open(id, 400))
    const generation = idsOf(client.generate(PROMPT, OPTIONS))
    // 300 tokens × 64 × 4 bytes = 76 800 bytes of payload > 64 KiB
    const tooLarge = await rejection(a, forward(id, 0, 300))
    expect(tooLarge).toMatchObject({ code: ErrorCode.TOO_LARGE, message: expect.stringMatching(/frame of \d+ bytes exceeds the limit of 65536/) })
    expect(await generation).toEqual(expected)
    // the channel and the session both survived
    const reply = await a.request(forward(id, 0, 2))
    expect(reply).toMatchObject({ type: FrameType.RESULT, tokens: 2 })
    await a.request(close(id))
  })

  it('rejects a malformed --allow entry at startup, naming it', async () => {
    await expect(createServer({ modelDir: STORIES, blocks: { start: 0, end: 5 }, throughput: 100, allow: ['12D3KooWnot-a-peer-id'] }))
      .rejects.toThrow(/^--allow: "12D3KooWnot-a-peer-id" is not a peer id/)
  })
})

describe('graceful stop', () => {
  let bootstrap: MingaNode
  let leaving: MingaServer
  let staying: MingaServer
  let peer: MingaNode
  beforeAll(async () => {
    bootstrap = await createMingaNode({})
    const addrs = bootstrap.addrs()
    ;[leaving, staying] = await Promise.all([
      createServer({ modelDir: STORIES, quant: 'none', blocks: { start: 0, end: 5 }, bootstrap: addrs, throughput: 5000, drainTimeoutMs: 6000 }),
      createServer({ modelDir: STORIES, quant: 'none', blocks: { start: 0, end: 5 }, bootstrap: addrs, throughput: 5, drainTimeoutMs: 30_000 })
    ])
    peer = await createMingaNode({ bootstrap: addrs })
  })
  afterAll(async () => {
    await peer?.stop()
    await Promise.all([leaving?.stop({ immediate: true }), staying?.stop({ immediate: true })])
    await bootstrap?.stop()
  })

  it('withdraws, refuses new sessions, lets a session go on during the drain, then tells it to move', async () => {
    const channel = await openChannel(peer, leaving.addrs()[0], INFERENCE_PROTOCOL)
    const id = newSessionId()
    await channel.request(open(id))
    let position = 0
    const step = async (): Promise<void> => {
      await channel.request(forward(id, position))
      position++
    }
    await step()

    const started = Date.now()
    const stopped = leaving.stop()
    expect(await rejection(channel, open(newSessionId()))).toMatchObject({ code: ErrorCode.BUSY, message: 'BUSY: busy: this server is shutting down' })
    await step() // the open session goes on (after the drain these would be told to move)
    await step()
    // the announcement is withdrawn: routes planned from now on skip this server
    // (DHT reads are not all alike: wait until one finds exactly the server that stays)
    await until(async () => (await findSpans(peer, MODEL_ID, 5)).map(s => s.peerId).join() === staying.peerId, 'the DHT shows only the staying server')

    // once the drain timeout has passed, the next FORWARD is told to move
    let moved: any
    while (moved == null) {
      moved = await channel.request(forward(id, position)).then(() => { position++ }, err => err)
      if (moved == null) await new Promise(resolve => setTimeout(resolve, 250))
    }
    expect(Date.now() - started).toBeGreaterThanOrEqual(5900)
    expect(moved).toMatchObject({ name: 'RemoteError', code: ErrorCode.BUSY })
    expect(moved.message).toMatch(/^BUSY: moving: this server is shutting down, continue elsewhere/)
    await stopped
    await channel.close({ timeoutMs: 1000 })

    const client = await createClient({ modelDir: STORIES, bootstrap: [bootstrap.addrs()[0]] })
    try {
      const stream = client.generate(PROMPT, OPTIONS)
      let next = await stream.next()
      while (next.done !== true) next = await stream.next()
      expect(next.value.route).toEqual([{ peerId: staying.peerId, blocks: [0, 5] }])
      expect(next.value.ids).toEqual(expected)
    } finally {
      await client.close()
    }
  })

  it('finishes the drain as soon as the last session closes', async () => {
    const channel = await openChannel(peer, staying.addrs()[0], INFERENCE_PROTOCOL)
    const id = newSessionId()
    await channel.request(open(id))
    await channel.request(forward(id, 0))
    const started = Date.now()
    let done = false
    const stopped = staying.stop().then(() => { done = true })
    await new Promise(resolve => setTimeout(resolve, 1000)) // (a slow machine only makes this check weaker)
    expect(done).toBe(false) // the 30 s drain is waiting for the session
    await channel.request(close(id))
    await stopped
    expect(Date.now() - started).toBeLessThan(20_000) // well before the 30 s drain would have ended
    await channel.close({ timeoutMs: 1000 }).catch(() => {})
  })
})
