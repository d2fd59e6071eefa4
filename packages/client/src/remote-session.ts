// One inference session along a route: a session on every hop's server, and hidden states relayed
// hop to hop (client → server → client → next server), with raw tensor bytes on the wire.
import { DType, f32ToF16, FrameType, newSessionId, tensorF32, type Channel } from '@minga/p2p'
import type { LayerChain } from '@minga/engine'
import type { RouteHop } from './routing.ts'

export interface RemoteHop { hop: RouteHop, channel: Channel }

export class RemoteSession implements LayerChain {
  private position = 0
  private readonly sessionId = newSessionId()

  private constructor (readonly hops: RemoteHop[], private readonly hiddenSize: number, private readonly dtype: DType) {}

  static async open (hops: RemoteHop[], maxLength: number, hiddenSize: number, wireDtype: 'f32' | 'f16'): Promise<RemoteSession> {
    const session = new RemoteSession(hops, hiddenSize, wireDtype === 'f16' ? DType.F16 : DType.F32)
    const opened: RemoteHop[] = []
    try {
      for (const remote of hops) {
        await remote.channel.request({ type: FrameType.OPEN_SESSION, sessionId: session.sessionId, startBlock: remote.hop.start, endBlock: remote.hop.end, maxLength })
        opened.push(remote)
      }
    } catch (err) {
      await closeOn(opened, session.sessionId)
      throw err
    }
    return session
  }

  async forward (hidden: Float32Array, tokens: number): Promise<Float32Array> {
    for (const { hop, channel } of this.hops) {
      const reply = await channel.request({
        type: FrameType.FORWARD,
        sessionId: this.sessionId,
        dtype: this.dtype,
        startBlock: hop.start,
        endBlock: hop.end,
        position: this.position,
        tokens,
        hiddenSize: this.hiddenSize,
        payload: this.dtype === DType.F32 ? new Uint8Array(hidden.buffer, hidden.byteOffset, hidden.byteLength) : toF16Bytes(hidden)
      })
      hidden = tensorF32(reply)
    }
    this.position += tokens
    return hidden
  }

  async close (): Promise<void> {
    await closeOn(this.hops, this.sessionId)
  }
}

async function closeOn (hops: RemoteHop[], sessionId: Uint8Array): Promise<void> {
  await Promise.all(hops.map(async ({ channel }) => {
    await channel.request({ type: FrameType.CLOSE_SESSION, sessionId }).catch(() => {})
  }))
}

function toF16Bytes (values: Float32Array): Uint8Array {
  const halves = new Uint16Array(values.length)
  f32ToF16(values, halves)
  return new Uint8Array(halves.buffer)
}

