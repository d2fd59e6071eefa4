// Wire format of minga's inference protocol: a fixed 64-byte little-endian header, an optional
// "next hops" section, then raw tensor bytes. No JSON on this path; decoding returns the payload as a
// view into the received bytes (zero copy), encoding can hand header and payload over as two chunks.
//
// Header (all integers little-endian):
//   off size field
//     0  u8   magic 'M' (0x4d)
//     1  u8   magic 'G' (0x47)
//     2  u8   version (1)
//     3  u8   type         FrameType
//     4  u8   dtype        DType (0 = none/opaque bytes, 1 = f32, 2 = f16, 3 = q8: blocks of 32 int8 + f16 scale)
//     5  u8   flags        FrameFlag bits; unknown bits are ignored by receivers
//     6  u16  errorCode    ErrorCode, ERROR frames only (0 otherwise)
//     8  u32  requestId    chosen by the requester, echoed in the reply
//    12  16B  sessionId    random, chosen by the client at OPEN_SESSION
//    28  u16  startBlock   first block of the span this frame is for
//    30  u16  endBlock     one past the last block
//    32  u32  position     tokens already in the session's cache before this frame
//    36  u32  tokens       new tokens carried by this frame
//    40  u32  hiddenSize   model hidden size (tensor row length)
//    44  u32  maxLength    OPEN_SESSION: cache capacity in tokens the session asks for
//    48  u32  payloadLength
//    52  u16  hopCount     entries in the next-hops section
//    54  u16  hopBytes     byte length of the next-hops section (multiple of 4)
//    56  u16  stack        tensor frames: how many [tokens, hiddenSize] tensors the payload holds, one
//                          after the other (0 is read as 1); see chains below
//    58  u16  reserved     written as 0, ignored (room for later fields)
//    60  u32  reserved     written as 0, ignored
//    64  ...  next hops    hopCount × { u16 startBlock, u16 endBlock, 16B sessionId, u8 n, n bytes UTF-8 peer },
//                          zero-padded to 4
//   64+hopBytes ... payload (payloadLength bytes): `stack` tensors [tokens, hiddenSize] of dtype, row-major,
//                   little-endian; or, for dtype NONE, opaque bytes (an ERROR frame's UTF-8 message)
//
// Q8 tensors are cut into blocks of 32 values (the last one zero-padded), each stored as an f16 scale
// followed by 32 int8 (value ≈ scale × q, |q| ≤ 127): 34 bytes per block, like llama.cpp's Q8_0.
//
// Chains: a client may list the rest of its route in a FORWARD frame's next hops, each with the
// session id it opened on that peer; a node that forwards runs its span, replies to the client as
// usual and sends its output as a FORWARD (flag FORWARDED) to hops[0] with hops[1..] as the new list.
// A forwarded FORWARD's payload stacks the outputs of the chain's hops after the first, in order (the
// client has the first one's from its reply): its last tensor is the receiving hop's input. The last
// hop sends them, with its own output appended, to the session's owner as a RESULT (flag FORWARDED)
// on /minga/chain/1.0.0; a hop that cannot reach the next sends what it has with CHAIN_BROKEN instead.
// In OPEN_SESSION the next-hops section lists the peers allowed to forward into the session (their
// session ids are ignored). `peer` is a peer id or a full multiaddr ending in /p2p/<id>. Nodes that do
// not forward ignore the list; the section is 4-byte padded so the payload stays aligned for
// Float32Array/Uint16Array views.

import { FrameError } from './errors.ts'

export const FRAME_MAGIC_0 = 0x4d // 'M'
export const FRAME_MAGIC_1 = 0x47 // 'G'
export const FRAME_VERSION = 1
export const HEADER_BYTES = 64
export const SESSION_ID_BYTES = 16

/** Default largest frame (header + hops + payload) a channel accepts: 64 MiB. */
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
/** Hard limits that make a header "absurd" whatever the configured frame size. */
export const MAX_PAYLOAD_BYTES = 1024 * 1024 * 1024 // 1 GiB
export const MAX_HIDDEN_SIZE = 1 << 17 // 131072
export const MAX_TOKENS = 1 << 20
export const MAX_LENGTH = 1 << 24
export const MAX_HOPS = 64
export const MAX_HOP_BYTES = 16 * 1024
export const MAX_OPAQUE_BYTES = 64 * 1024
export const MAX_ERROR_MESSAGE_BYTES = 4096

export const FrameType = {
  OPEN_SESSION: 1,
  FORWARD: 2,
  CLOSE_SESSION: 3,
  RESULT: 4,
  ERROR: 5,
  /** Success reply without a tensor (to OPEN_SESSION, CLOSE_SESSION). */
  ACK: 6
  // 7..255 reserved: decoders of this version reject them
} as const
export type FrameType = typeof FrameType[keyof typeof FrameType]

export const DType = { NONE: 0, F32: 1, F16: 2, Q8: 3 } as const
export type DType = typeof DType[keyof typeof DType]

export const FrameFlag = {
  /** The frame was forwarded by the previous node of a chain rather than sent by the client. */
  FORWARDED: 0x01,
  /** A chain's RESULT (or ERROR) sent by a hop that could not reach the next: the client relays the rest. */
  CHAIN_BROKEN: 0x02
} as const

export const ErrorCode = {
  BAD_FRAME: 1,
  UNKNOWN_SESSION: 2,
  WRONG_SHAPE: 3,
  WRONG_POSITION: 4,
  BUSY: 5,
  TOO_LARGE: 6,
  EXPIRED: 7,
  NOT_ALLOWED: 8,
  INTERNAL: 9,
  TIMEOUT: 10,
  UNSUPPORTED: 11
} as const
export type ErrorCode = typeof ErrorCode[keyof typeof ErrorCode]

const FRAME_TYPE_NAMES = new Map<number, string>(Object.entries(FrameType).map(([k, v]) => [v, k]))
const ERROR_CODE_NAMES = new Map<number, string>(Object.entries(ErrorCode).map(([k, v]) => [v, k]))

export function frameTypeName (type: number): string {
  return FRAME_TYPE_NAMES.get(type) ?? `TYPE_${type}`
}

/** Name of an error code; unknown (newer) codes are kept and named CODE_<n>. */
export function errorCodeName (code: number): string {
  return ERROR_CODE_NAMES.get(code) ?? `CODE_${code}`
}

/** Bytes per value of F32/F16/NONE; Q8 has no whole number of bytes per value (see tensorBytes). */
export function dtypeBytes (dtype: DType): number {
  return dtype === DType.F32 ? 4 : dtype === DType.F16 ? 2 : 1
}

export const Q8_BLOCK_VALUES = 32
export const Q8_BLOCK_BYTES = Q8_BLOCK_VALUES + 2

/** Encoded size of one tensor of `values` values in `dtype`. */
export function tensorBytes (dtype: DType, values: number): number {
  if (dtype === DType.Q8) return Math.ceil(values / Q8_BLOCK_VALUES) * Q8_BLOCK_BYTES
  return values * dtypeBytes(dtype)
}

export interface NextHop {
  /** Peer id, or a multiaddr ending in /p2p/<peer id>; at most 255 UTF-8 bytes. */
  peer: string
  startBlock: number
  endBlock: number
  /** The session the client opened on that peer (16 bytes; default zeros). */
  sessionId?: Uint8Array
}

export interface Frame {
  type: FrameType
  dtype: DType
  flags: number
  errorCode: number
  requestId: number
  sessionId: Uint8Array
  startBlock: number
  endBlock: number
  position: number
  tokens: number
  hiddenSize: number
  maxLength: number
  /** Tensor frames: how many [tokens, hiddenSize] tensors the payload holds (≥ 1). */
  stack: number
  nextHops: NextHop[]
  /** Tensor bytes (dtype F32/F16) or opaque bytes (dtype NONE). A view: do not mutate it before it is sent. */
  payload: Uint8Array
}

/** What encodeFrame needs: `type` plus whatever differs from the zero/empty default. */
export type FrameInit = Partial<Frame> & { type: FrameType }

const ZERO_SESSION = new Uint8Array(SESSION_ID_BYTES)
const EMPTY = new Uint8Array(0)
const utf8Encoder = new TextEncoder()
const utf8Decoder = new TextDecoder('utf-8', { fatal: true })

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  // Tensor payloads are viewed as Float32Array/Uint16Array, which use the host's byte order.
  throw new Error('@minga/p2p frames assume a little-endian host')
}

export function frameDefaults (init: FrameInit): Frame {
  return {
    type: init.type,
    dtype: init.dtype ?? DType.NONE,
    flags: init.flags ?? 0,
    errorCode: init.errorCode ?? 0,
    requestId: init.requestId ?? 0,
    sessionId: init.sessionId ?? ZERO_SESSION,
    startBlock: init.startBlock ?? 0,
    endBlock: init.endBlock ?? 0,
    position: init.position ?? 0,
    tokens: init.tokens ?? 0,
    hiddenSize: init.hiddenSize ?? 0,
    maxLength: init.maxLength ?? 0,
    stack: init.stack ?? 1,
    nextHops: init.nextHops ?? [],
    payload: init.payload ?? EMPTY
  }
}

function isUint (v: unknown, max: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max
}

/** Checks the header fields against each other and the payload length; throws FrameError. */
function validate (f: Frame, payloadLength: number, maxPayloadBytes: number): void {
  if (FRAME_TYPE_NAMES.get(f.type) === undefined) throw new FrameError(`unknown frame type ${f.type}`)
  if (f.dtype !== DType.NONE && f.dtype !== DType.F32 && f.dtype !== DType.F16 && f.dtype !== DType.Q8) throw new FrameError(`unknown dtype ${f.dtype}`)
  if (!isUint(f.flags, 0xff)) throw new FrameError(`flags ${f.flags} do not fit a u8`)
  if (!isUint(f.errorCode, 0xffff)) throw new FrameError(`error code ${f.errorCode} does not fit a u16`)
  if (!isUint(f.requestId, 0xffffffff)) throw new FrameError(`request id ${f.requestId} does not fit a u32`)
  if (!(f.sessionId instanceof Uint8Array) || f.sessionId.length !== SESSION_ID_BYTES) throw new FrameError(`session id must be ${SESSION_ID_BYTES} bytes`)
  if (!isUint(f.startBlock, 0xffff) || !isUint(f.endBlock, 0xffff)) throw new FrameError(`blocks [${f.startBlock}, ${f.endBlock}) do not fit u16`)
  if (f.startBlock > f.endBlock) throw new FrameError(`start block ${f.startBlock} > end block ${f.endBlock}`)
  if (!isUint(f.position, MAX_LENGTH)) throw new FrameError(`position ${f.position} out of range [0, ${MAX_LENGTH}]`)
  if (!isUint(f.tokens, MAX_TOKENS)) throw new FrameError(`tokens ${f.tokens} out of range [0, ${MAX_TOKENS}]`)
  if (!isUint(f.hiddenSize, MAX_HIDDEN_SIZE)) throw new FrameError(`hidden size ${f.hiddenSize} out of range [0, ${MAX_HIDDEN_SIZE}]`)
  if (!isUint(f.maxLength, MAX_LENGTH)) throw new FrameError(`max length ${f.maxLength} out of range [0, ${MAX_LENGTH}]`)
  if (!isUint(f.stack, MAX_HOPS + 1) || f.stack === 0) throw new FrameError(`stack ${f.stack} out of range [1, ${MAX_HOPS + 1}]`)
  if (payloadLength > maxPayloadBytes) throw new FrameError(`payload of ${payloadLength} bytes exceeds the limit of ${maxPayloadBytes}`)

  if (f.dtype === DType.NONE) {
    if (f.type === FrameType.FORWARD || f.type === FrameType.RESULT) throw new FrameError(`${frameTypeName(f.type)} frame needs a tensor dtype`)
    if (payloadLength > MAX_OPAQUE_BYTES) throw new FrameError(`opaque payload of ${payloadLength} bytes exceeds ${MAX_OPAQUE_BYTES}`)
    if (f.stack !== 1) throw new FrameError(`a frame without a tensor has stack ${f.stack}`)
  } else {
    if (f.hiddenSize === 0) throw new FrameError('tensor frame with hidden size 0')
    const expected = f.stack * tensorBytes(f.dtype, f.tokens * f.hiddenSize)
    if (expected !== payloadLength) {
      throw new FrameError(`payload is ${payloadLength} bytes but ${f.stack > 1 ? `${f.stack} × ` : ''}tokens ${f.tokens} × hidden ${f.hiddenSize} in dtype ${f.dtype} take ${expected}`)
    }
  }

  switch (f.type) {
    case FrameType.OPEN_SESSION:
      if (f.startBlock >= f.endBlock) throw new FrameError(`OPEN_SESSION with empty span [${f.startBlock}, ${f.endBlock})`)
      if (f.maxLength === 0) throw new FrameError('OPEN_SESSION with max length 0')
      break
    case FrameType.FORWARD:
      if (f.startBlock >= f.endBlock) throw new FrameError(`FORWARD with empty span [${f.startBlock}, ${f.endBlock})`)
      if (f.tokens === 0) throw new FrameError('FORWARD with 0 tokens')
      break
    case FrameType.RESULT:
      if (f.tokens === 0) throw new FrameError('RESULT with 0 tokens')
      break
    case FrameType.ERROR:
      if (f.errorCode === 0) throw new FrameError('ERROR frame with error code 0')
      if (f.dtype !== DType.NONE) throw new FrameError('ERROR frame with a tensor dtype')
      if (payloadLength > MAX_ERROR_MESSAGE_BYTES) throw new FrameError(`ERROR message of ${payloadLength} bytes exceeds ${MAX_ERROR_MESSAGE_BYTES}`)
      break
  }
  if (f.type !== FrameType.ERROR && f.errorCode !== 0) throw new FrameError(`${frameTypeName(f.type)} frame with error code ${f.errorCode}`)
  if (!Array.isArray(f.nextHops) || f.nextHops.length > MAX_HOPS) throw new FrameError(`more than ${MAX_HOPS} next hops`)
}

/** u16 startBlock, u16 endBlock, 16-byte session id, u8 peer length. */
const HOP_FIXED_BYTES = 21

function encodeHops (hops: NextHop[]): Uint8Array {
  if (hops.length === 0) return EMPTY
  const parts: Uint8Array[] = []
  let size = 0
  for (const hop of hops) {
    if (hop == null || typeof hop.peer !== 'string') throw new FrameError('next hop without a peer')
    const peer = utf8Encoder.encode(hop.peer)
    if (peer.length === 0 || peer.length > 255) throw new FrameError(`next hop peer must be 1..255 UTF-8 bytes, got ${peer.length}`)
    if (!isUint(hop.startBlock, 0xffff) || !isUint(hop.endBlock, 0xffff) || hop.startBlock >= hop.endBlock) {
      throw new FrameError(`next hop span [${hop.startBlock}, ${hop.endBlock}) is invalid`)
    }
    if (hop.sessionId != null && !(hop.sessionId instanceof Uint8Array && hop.sessionId.length === SESSION_ID_BYTES)) throw new FrameError(`next hop session id must be ${SESSION_ID_BYTES} bytes`)
    parts.push(peer)
    size += HOP_FIXED_BYTES + peer.length
  }
  const padded = (size + 3) & ~3
  if (padded > MAX_HOP_BYTES) throw new FrameError(`next hops take ${padded} bytes, more than ${MAX_HOP_BYTES}`)
  const out = new Uint8Array(padded)
  const view = new DataView(out.buffer)
  let off = 0
  hops.forEach((hop, i) => {
    const peer = parts[i]
    view.setUint16(off, hop.startBlock, true)
    view.setUint16(off + 2, hop.endBlock, true)
    if (hop.sessionId != null) out.set(hop.sessionId, off + 4)
    out[off + 20] = peer.length
    out.set(peer, off + HOP_FIXED_BYTES)
    off += HOP_FIXED_BYTES + peer.length
  })
  return out
}

function decodeHops (bytes: Uint8Array, count: number): NextHop[] {
  const hops: NextHop[] = []
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let off = 0
  for (let i = 0; i < count; i++) {
    if (off + HOP_FIXED_BYTES > bytes.length) throw new FrameError(`next hop ${i} is truncated`)
    const startBlock = view.getUint16(off, true)
    const endBlock = view.getUint16(off + 2, true)
    const sessionId = new Uint8Array(bytes.subarray(off + 4, off + 20))
    const n = bytes[off + 20]
    if (n === 0) throw new FrameError(`next hop ${i} has an empty peer`)
    if (off + HOP_FIXED_BYTES + n > bytes.length) throw new FrameError(`next hop ${i} is truncated`)
    if (startBlock >= endBlock) throw new FrameError(`next hop ${i} has an empty span [${startBlock}, ${endBlock})`)
    let peer: string
    try {
      peer = utf8Decoder.decode(bytes.subarray(off + HOP_FIXED_BYTES, off + HOP_FIXED_BYTES + n))
    } catch {
      throw new FrameError(`next hop ${i} peer is not valid UTF-8`)
    }
    hops.push({ peer, startBlock, endBlock, sessionId })
    off += HOP_FIXED_BYTES + n
  }
  if (bytes.length - off > 3) throw new FrameError(`next hops section has ${bytes.length - off} trailing bytes`)
  return hops
}

function writeHeader (out: Uint8Array, f: Frame, hops: Uint8Array, hopCount: number): void {
  const v = new DataView(out.buffer, out.byteOffset, HEADER_BYTES)
  out[0] = FRAME_MAGIC_0
  out[1] = FRAME_MAGIC_1
  out[2] = FRAME_VERSION
  out[3] = f.type
  out[4] = f.dtype
  out[5] = f.flags
  v.setUint16(6, f.errorCode, true)
  v.setUint32(8, f.requestId, true)
  out.set(f.sessionId, 12)
  v.setUint16(28, f.startBlock, true)
  v.setUint16(30, f.endBlock, true)
  v.setUint32(32, f.position, true)
  v.setUint32(36, f.tokens, true)
  v.setUint32(40, f.hiddenSize, true)
  v.setUint32(44, f.maxLength, true)
  v.setUint32(48, f.payload.length, true)
  v.setUint16(52, hopCount, true)
  v.setUint16(54, hops.length, true)
  if (f.stack !== 1) v.setUint16(56, f.stack, true)
  // 58..63 reserved, already zero
  if (hops.length > 0) out.set(hops, HEADER_BYTES)
}

/**
 * Encodes a frame as two chunks, [header + next hops, payload], without copying the payload: write
 * both in order (rpc.ts does). The payload must not be modified until it has been sent.
 */
export function encodeFrameParts (init: FrameInit, maxPayloadBytes = MAX_PAYLOAD_BYTES): [Uint8Array, Uint8Array] {
  const f = frameDefaults(init)
  if (!(f.payload instanceof Uint8Array)) throw new FrameError('payload must be a Uint8Array')
  validate(f, f.payload.length, maxPayloadBytes)
  const hops = encodeHops(f.nextHops)
  const head = new Uint8Array(HEADER_BYTES + hops.length)
  writeHeader(head, f, hops, f.nextHops.length)
  return [head, f.payload]
}

/** Encodes a frame into one freshly allocated buffer (the payload is copied once). */
export function encodeFrame (init: FrameInit, maxPayloadBytes = MAX_PAYLOAD_BYTES): Uint8Array {
  const [head, payload] = encodeFrameParts(init, maxPayloadBytes)
  const out = new Uint8Array(head.length + payload.length)
  out.set(head, 0)
  out.set(payload, head.length)
  return out
}

/** Total encoded size of a frame, without encoding it. */
export function encodedFrameBytes (init: FrameInit): number {
  return encodeFrameParts(init)[0].length + (init.payload?.length ?? 0)
}

export interface DecodeOptions {
  /** Reject payloads larger than this (default MAX_PAYLOAD_BYTES). */
  maxPayloadBytes?: number
}

/**
 * Decodes and validates one frame. The payload is a view into `bytes` (zero copy); the session id is
 * a 16-byte copy so it can be kept as a key without pinning the whole buffer. Anything malformed
 * throws a FrameError with a message naming the problem.
 */
export function decodeFrame (bytes: Uint8Array, opts: DecodeOptions = {}): Frame {
  if (!(bytes instanceof Uint8Array)) throw new FrameError('frame must be a Uint8Array')
  if (bytes.length < HEADER_BYTES) throw new FrameError(`frame of ${bytes.length} bytes is shorter than the ${HEADER_BYTES}-byte header`)
  if (bytes[0] !== FRAME_MAGIC_0 || bytes[1] !== FRAME_MAGIC_1) throw new FrameError(`bad magic 0x${hex2(bytes[0])}${hex2(bytes[1])}`)
  if (bytes[2] !== FRAME_VERSION) throw new FrameError(`unsupported frame version ${bytes[2]} (this node speaks ${FRAME_VERSION})`)
  const v = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES)
  const payloadLength = v.getUint32(48, true)
  const hopCount = v.getUint16(52, true)
  const hopBytes = v.getUint16(54, true)
  if (hopCount > MAX_HOPS) throw new FrameError(`${hopCount} next hops, more than ${MAX_HOPS}`)
  if (hopBytes % 4 !== 0 || hopBytes > MAX_HOP_BYTES) throw new FrameError(`next hops section of ${hopBytes} bytes (must be a multiple of 4, at most ${MAX_HOP_BYTES})`)
  if ((hopCount === 0) !== (hopBytes === 0)) throw new FrameError(`${hopCount} next hops in ${hopBytes} bytes`)
  const total = HEADER_BYTES + hopBytes + payloadLength
  if (total !== bytes.length) throw new FrameError(`frame is ${bytes.length} bytes but its header says ${total} (payload ${payloadLength}, next hops ${hopBytes})`)
  const f: Frame = {
    type: bytes[3] as FrameType,
    dtype: bytes[4] as DType,
    flags: bytes[5],
    errorCode: v.getUint16(6, true),
    requestId: v.getUint32(8, true),
    sessionId: new Uint8Array(bytes.subarray(12, 12 + SESSION_ID_BYTES)), // a copy (Buffer#slice would be a view)
    startBlock: v.getUint16(28, true),
    endBlock: v.getUint16(30, true),
    position: v.getUint32(32, true),
    tokens: v.getUint32(36, true),
    hiddenSize: v.getUint32(40, true),
    maxLength: v.getUint32(44, true),
    stack: Math.max(1, v.getUint16(56, true)),
    nextHops: [],
    payload: bytes.subarray(HEADER_BYTES + hopBytes, total)
  }
  validate(f, payloadLength, Math.min(opts.maxPayloadBytes ?? MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES))
  if (hopCount > 0) f.nextHops = decodeHops(bytes.subarray(HEADER_BYTES, HEADER_BYTES + hopBytes), hopCount)
  if (f.type === FrameType.ERROR) {
    try {
      utf8Decoder.decode(f.payload)
    } catch {
      throw new FrameError('ERROR frame message is not valid UTF-8')
    }
  }
  return f
}

/**
 * Reads the request id of something that looks like a frame, even a malformed one, so a server can
 * address its BAD_FRAME reply; undefined if the bytes are too short or the magic is wrong.
 */
export function peekRequestId (bytes: Uint8Array): number | undefined {
  if (bytes.length < 12 || bytes[0] !== FRAME_MAGIC_0 || bytes[1] !== FRAME_MAGIC_1) return undefined
  return new DataView(bytes.buffer, bytes.byteOffset, 12).getUint32(8, true)
}

function hex2 (n: number | undefined): string {
  return (n ?? 0).toString(16).padStart(2, '0')
}

// ---- convenience constructors and accessors -------------------------------------------------

/** A fresh random 16-byte session id. */
export function newSessionId (): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(SESSION_ID_BYTES))
}

export function sessionIdToHex (id: Uint8Array): string {
  let s = ''
  for (const b of id) s += hex2(b)
  return s
}

/** An ERROR reply; the message is truncated to fit MAX_ERROR_MESSAGE_BYTES. */
export function errorFrame (requestId: number, code: number, message: string, sessionId?: Uint8Array): FrameInit {
  let bytes = utf8Encoder.encode(message)
  if (bytes.length > MAX_ERROR_MESSAGE_BYTES) {
    // cut on a character boundary
    let cut = MAX_ERROR_MESSAGE_BYTES
    while (cut > 0 && (bytes[cut] & 0xc0) === 0x80) cut--
    bytes = bytes.subarray(0, cut)
  }
  return { type: FrameType.ERROR, requestId, errorCode: code === 0 ? ErrorCode.INTERNAL : code, sessionId, payload: bytes }
}

/** The UTF-8 message of an ERROR frame (or any opaque payload). */
export function frameText (frame: Frame): string {
  return new TextDecoder().decode(frame.payload)
}

/** The payload of an F32 frame as a Float32Array: a view when aligned, else a copy. */
export function payloadF32 (frame: Frame): Float32Array {
  if (frame.dtype !== DType.F32) throw new FrameError(`payload is not f32 (dtype ${frame.dtype})`)
  const p = frame.payload
  if (p.byteOffset % 4 === 0) return new Float32Array(p.buffer, p.byteOffset, p.length / 4)
  return new Float32Array(new Uint8Array(p).buffer) // copy: new Uint8Array(view) always allocates
}

/** The payload of an F16 frame as raw half-float bits: a view when aligned, else a copy. */
export function payloadF16 (frame: Frame): Uint16Array {
  if (frame.dtype !== DType.F16) throw new FrameError(`payload is not f16 (dtype ${frame.dtype})`)
  const p = frame.payload
  if (p.byteOffset % 2 === 0) return new Uint16Array(p.buffer, p.byteOffset, p.length / 2)
  return new Uint16Array(new Uint8Array(p).buffer)
}

/**
 * The tensor(s) of an F32, F16 or Q8 frame as float32, all `stack` of them one after the other
 * (viewing f32 when aligned, converting the others into a fresh array).
 */
export function tensorF32 (frame: Frame): Float32Array {
  if (frame.dtype === DType.F32) return payloadF32(frame)
  if (frame.dtype === DType.Q8) {
    const values = frame.tokens * frame.hiddenSize
    const perTensor = tensorBytes(DType.Q8, values)
    const out = new Float32Array(values * frame.stack)
    for (let i = 0; i < frame.stack; i++) {
      q8ToF32(frame.payload.subarray(i * perTensor, (i + 1) * perTensor), out.subarray(i * values, (i + 1) * values))
    }
    return out
  }
  const half = payloadF16(frame)
  const out = new Float32Array(half.length)
  f16ToF32(half, out)
  return out
}

/**
 * `values` encoded as one tensor payload of `dtype`: F32 is a view (no copy), F16 and Q8 a fresh
 * buffer. Several tensors of one frame's stack are encoded one by one and concatenated.
 */
export function encodeTensor (values: Float32Array, dtype: DType): Uint8Array {
  if (dtype === DType.F32) return new Uint8Array(values.buffer, values.byteOffset, values.byteLength)
  if (dtype === DType.F16) {
    const halves = new Uint16Array(values.length)
    f32ToF16(values, halves)
    return new Uint8Array(halves.buffer)
  }
  if (dtype === DType.Q8) {
    const out = new Uint8Array(tensorBytes(DType.Q8, values.length))
    f32ToQ8(values, out)
    return out
  }
  throw new FrameError(`dtype ${dtype} holds no tensor`)
}

/** Bytes view of a typed array, for use as a payload (no copy). */
export function bytesOf (a: Float32Array | Uint16Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
}

// ---- float16 conversion ---------------------------------------------------------------------

/**
 * float32 → IEEE 754 binary16 bits, round to nearest even; overflow becomes ±Infinity, values
 * below half the smallest subnormal become ±0, NaN stays NaN.
 */
export function f32ToF16 (src: Float32Array, dst: Uint16Array): void {
  if (dst.length < src.length) throw new RangeError(`f32ToF16: destination holds ${dst.length} values, source has ${src.length}`)
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length)
  for (let i = 0; i < bits.length; i++) dst[i] = halfBits(bits[i])
}

function halfBits (b: number): number {
  const sign = (b >>> 16) & 0x8000
  const exp = (b >>> 23) & 0xff
  let mant = b & 0x7fffff
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0)
  const e = exp - 112 // rebias 127 → 15
  if (e >= 0x1f) return sign | 0x7c00
  if (e <= 0) {
    if (e < -10) return sign
    mant |= 0x800000
    const shift = 14 - e
    let half = mant >>> shift
    const rem = mant & ((1 << shift) - 1)
    const halfway = 1 << (shift - 1)
    if (rem > halfway || (rem === halfway && (half & 1) === 1)) half++
    return sign | half
  }
  let half = (e << 10) | (mant >>> 13)
  const rem = mant & 0x1fff
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1) === 1)) half++ // a carry may round up to Infinity: correct
  return sign | half
}

let F16_TABLE: Float32Array | undefined

function f16Table (): Float32Array {
  if (F16_TABLE !== undefined) return F16_TABLE
  const table = new Float32Array(65536)
  const bits = new Uint32Array(table.buffer)
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16
    const exp = (h >>> 10) & 0x1f
    const mant = h & 0x3ff
    if (exp === 0) {
      table[h] = (mant * 2 ** -24) * (sign !== 0 ? -1 : 1) // zero or subnormal
    } else if (exp === 0x1f) {
      bits[h] = sign | 0x7f800000 | (mant << 13)
    } else {
      bits[h] = sign | ((exp + 112) << 23) | (mant << 13)
    }
  }
  F16_TABLE = table
  return table
}

/** IEEE 754 binary16 bits → float32 (exact). */
export function f16ToF32 (src: Uint16Array, dst: Float32Array): void {
  if (dst.length < src.length) throw new RangeError(`f16ToF32: destination holds ${dst.length} values, source has ${src.length}`)
  const table = f16Table()
  for (let i = 0; i < src.length; i++) dst[i] = table[src[i]]
}

// ---- 8-bit blocks ---------------------------------------------------------------------------

const scratchF32 = new Float32Array(1)
const scratchHalf = new Uint16Array(1)

/**
 * float32 → Q8 blocks (see the header comment): per block of 32, scale = max |x| / 127 rounded to
 * f16, q = round(x / scale). `dst` must hold tensorBytes(Q8, src.length) bytes. Non-finite inputs
 * make the block's scale non-finite, so they are not silently hidden.
 */
export function f32ToQ8 (src: Float32Array, dst: Uint8Array): void {
  const blocks = Math.ceil(src.length / Q8_BLOCK_VALUES)
  if (dst.length < blocks * Q8_BLOCK_BYTES) throw new RangeError(`f32ToQ8: destination holds ${dst.length} bytes, ${blocks * Q8_BLOCK_BYTES} needed`)
  const table = f16Table()
  const q = new Int8Array(dst.buffer, dst.byteOffset, dst.length)
  for (let b = 0; b < blocks; b++) {
    const from = b * Q8_BLOCK_VALUES
    const to = Math.min(from + Q8_BLOCK_VALUES, src.length)
    let max = 0
    for (let i = from; i < to; i++) {
      const a = Math.abs(src[i])
      if (a > max || Number.isNaN(a)) max = a // a NaN stays: nothing compares greater than it
    }
    scratchF32[0] = max / 127
    f32ToF16(scratchF32, scratchHalf)
    const half = scratchHalf[0]
    const scale = table[half]
    const off = b * Q8_BLOCK_BYTES
    dst[off] = half & 0xff
    dst[off + 1] = half >>> 8
    const inv = scale > 0 ? 1 / scale : 0
    for (let i = from; i < to; i++) {
      const v = Math.round(src[i] * inv)
      q[off + 2 + i - from] = v > 127 ? 127 : v < -127 ? -127 : v
    }
    for (let i = to; i < from + Q8_BLOCK_VALUES; i++) q[off + 2 + i - from] = 0
  }
}

/** Q8 blocks → float32: `dst.length` values are decoded. */
export function q8ToF32 (src: Uint8Array, dst: Float32Array): void {
  const blocks = Math.ceil(dst.length / Q8_BLOCK_VALUES)
  if (src.length < blocks * Q8_BLOCK_BYTES) throw new RangeError(`q8ToF32: source has ${src.length} bytes, ${blocks * Q8_BLOCK_BYTES} needed`)
  const table = f16Table()
  const q = new Int8Array(src.buffer, src.byteOffset, src.length)
  for (let b = 0; b < blocks; b++) {
    const off = b * Q8_BLOCK_BYTES
    const scale = table[src[off] | (src[off + 1] << 8)]
    const from = b * Q8_BLOCK_VALUES
    const to = Math.min(from + Q8_BLOCK_VALUES, dst.length)
    for (let i = from; i < to; i++) dst[i] = scale * q[off + 2 + i - from]
  }
}
