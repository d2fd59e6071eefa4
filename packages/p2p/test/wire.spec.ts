// LpReader at the end of a stream: a clean end between messages is null (not an error), so a server
// closes a channel gracefully when its client does, instead of resetting it (which would discard
// reply bytes still queued for sending).
import { multiaddr } from '@multiformats/multiaddr'
import { afterAll, beforeAll, expect, it } from 'vitest'
import {
  FrameType, INFERENCE_PROTOCOL, LpReader, createMingaNode, decodeFrame, encodeFrame, handleChannel, newSessionId,
  writeMessage, type ChannelServer, type MingaNode
} from '../src/index.ts'

const RAW = '/minga/test-lp-end/1.0.0'
let server: MingaNode
let client: MingaNode
let channels: ChannelServer
const reads: Array<Promise<Array<string | null>>> = []

beforeAll(async () => {
  server = await createMingaNode()
  client = await createMingaNode()
  channels = await handleChannel(server, INFERENCE_PROTOCOL, () => ({ type: FrameType.ACK }))
  // reads every message of a stream, then reports how the stream ended
  await server.libp2p.handle(RAW, (stream) => {
    reads.push((async () => {
      const reader = new LpReader(stream, { maxLength: 1024 })
      const seen: Array<string | null> = []
      try {
        while (true) {
          const msg = await reader.read()
          seen.push(msg === null ? null : new TextDecoder().decode(msg as Uint8Array))
          if (msg === null) return seen
        }
      } catch (err) {
        seen.push(`error: ${(err as Error).message}`)
        return seen
      } finally {
        reader.release()
      }
    })())
  })
})

afterAll(async () => {
  await channels?.close()
  await client?.stop()
  await server?.stop()
})

const pause = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

it('read() returns null when the remote closes while the reader waits for the next message', async () => {
  const stream = await client.libp2p.dialProtocol(multiaddr(server.addrs()[0]), RAW)
  await writeMessage(stream, [new TextEncoder().encode('one')])
  await pause(100) // the reader has taken 'one' and is now waiting
  await stream.close()
  expect(await reads[0]).toEqual(['one', null])
})

it('a channel server closes gracefully (no reset) when its client half-closes after the replies', async () => {
  const stream = await client.libp2p.dialProtocol(multiaddr(server.addrs()[0]), INFERENCE_PROTOCOL)
  const closed = new Promise<Error | undefined>(resolve => { stream.addEventListener('close', (evt) => { resolve(evt.error) }) })
  const reader = new LpReader(stream, { maxLength: 1 << 20 })
  await writeMessage(stream, [encodeFrame({ type: FrameType.CLOSE_SESSION, requestId: 7, sessionId: newSessionId() })])
  const reply = decodeFrame((await reader.read()) as Uint8Array)
  expect(reply).toMatchObject({ type: FrameType.ACK, requestId: 7 })
  await pause(100) // the server is idle, waiting for the next frame
  await stream.close()
  expect(await reader.read()).toBeNull() // the server closed its end too
  expect(await closed).toBeUndefined() // and did not reset the stream
  reader.release()
})

it('a frame that starts arriving but never completes does not hold its stream: the server aborts it', async () => {
  const patient = await handleChannel(server, '/minga/test-half-frame/1.0.0', () => ({ type: FrameType.ACK }), { messageTimeoutMs: 300 })
  try {
    const stream = await client.libp2p.dialProtocol(multiaddr(server.addrs()[0]), '/minga/test-half-frame/1.0.0')
    const closed = new Promise<number>(resolve => { stream.addEventListener('close', () => { resolve(Date.now()) }) })
    const sent = Date.now()
    stream.send(Uint8Array.from([100, 1, 2, 3])) // a length prefix of 100, then only 3 bytes
    expect(await closed - sent).toBeLessThan(30_000) // the 300 ms deadline, not the 60 s default, closed it
  } finally {
    await patient.close()
  }
})
