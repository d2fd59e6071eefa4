// @minga/p2p: minga's libp2p node, DHT span records and the inference wire protocol.
import './polyfill.ts'

export {
  BootstrapError, ChannelClosedError, FrameError, FrameTooLargeError, IdentityError, InvalidArgumentError,
  InvalidRecordError, ProtocolError, RemoteError, SwarmKeyError, TimeoutError
} from './errors.ts'

export { generateSwarmKey, loadSwarmKey, parseSwarmKey, writeSwarmKey } from './swarm-key.ts'

export {
  DEFAULT_BOOTSTRAP_TIMEOUT_MS, DEFAULT_LISTEN, DHT_PROTOCOL, createMingaNode, loadOrCreateIdentity,
  type MingaLibp2p, type MingaNode, type MingaNodeInit, type MingaServices
} from './node.ts'

export { DEFAULT_RELAY_LIMITS, type RelayLimits } from './relay-limits.ts'
export { parsePeerId } from './peer-id.ts'

export { DIALBACK_PROTOCOL, type Reachability } from './reachability.ts'

export {
  DEFAULT_DHT_TIMEOUT_MS, DEFAULT_TTL_MS, MAX_BLOCK_VALUE_BYTES, MAX_CLOCK_SKEW_MS, MAX_ENTRIES_PER_BLOCK, MAX_TTL_MS,
  RECORD_NAMESPACE, RECORD_VERSION, announceSpan, blockKey, blockKeyString, canonicalEntryBytes, decodeBlockRecord,
  encodeBlockRecord, findBlockServers, findSpans, isLive, mergeEntries, parseBlockKey, readBlockEntries,
  recordSelectors, recordValidators, selectMingaRecord, signEntry, startAnnouncer, validateEntry, validateMingaRecord,
  withdrawSpan,
  type AnnounceResult, type Announcer, type AnnouncerOptions, type BlockRecord, type DhtOptions, type PutResult,
  type ServerEntry, type SpanInfo
} from './records.ts'

export {
  DEFAULT_MAX_FRAME_BYTES, DType, ErrorCode, FRAME_VERSION, FrameFlag, FrameType, HEADER_BYTES, MAX_ERROR_MESSAGE_BYTES,
  MAX_HIDDEN_SIZE, MAX_HOPS, MAX_LENGTH, MAX_OPAQUE_BYTES, MAX_PAYLOAD_BYTES, MAX_TOKENS, SESSION_ID_BYTES,
  Q8_BLOCK_BYTES, Q8_BLOCK_VALUES, bytesOf, decodeFrame, dtypeBytes, encodeFrame, encodeFrameParts, encodeTensor,
  encodedFrameBytes, errorCodeName, errorFrame, f16ToF32, f32ToF16, f32ToQ8, frameDefaults, frameText, frameTypeName,
  newSessionId, payloadF16, payloadF32, peekRequestId, q8ToF32, sessionIdToHex, tensorBytes, tensorF32,
  type DecodeOptions, type Frame, type FrameInit, type NextHop
} from './frames.ts'

export {
  CHAIN_PROTOCOL, DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_REQUEST_TIMEOUT_MS, INFERENCE_PROTOCOL, errorCodeFor, handleChannel,
  openChannel,
  type Channel, type ChannelOptions, type ChannelServer, type FrameContext, type FrameHandler, type HandleChannelOptions,
  type RequestOptions
} from './rpc.ts'

export { LpReader, writeMessage, type LpReaderOptions, type OversizeMessage } from './wire.ts'

export { INFO_PROTOCOL, fetchInfo, serveInfo, type NodeInfo, type SpanMove } from './info.ts'
