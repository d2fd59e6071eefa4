// Fewer yamux window updates. @chainsafe/libp2p-yamux answers every data frame it receives with a
// window update frame, so a decode step (one small request, one small reply) costs four frames,
// four noise messages and four socket writes instead of two. Like Go's yamux, grant window only
// once half of it has been used (or when a SYN/ACK flag must go out): a sender then always has at
// least half a window (≥ 128 KiB) left, so nothing waits for the batched update.
import { StreamState, YamuxStream } from '@chainsafe/libp2p-yamux/stream'

interface WindowState {
  state: StreamState
  recvWindow: number
  recvWindowCapacity: number
  epochStart: number
  getSendFlags: () => number
}

const proto = YamuxStream.prototype as unknown as WindowState & { sendWindowUpdate: () => void, __mingaBatchedWindow?: true }
if (proto.__mingaBatchedWindow !== true) {
  const eager = proto.sendWindowUpdate
  proto.sendWindowUpdate = function (this: WindowState) {
    if (this.state !== StreamState.Paused && this.state !== StreamState.Init && this.state !== StreamState.SYNReceived) {
      const used = this.recvWindow - this.recvWindowCapacity
      if (used < this.recvWindow / 2) return
    }
    eager.call(this)
  }
  proto.__mingaBatchedWindow = true
}
