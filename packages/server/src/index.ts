export { createServer, MINGA_VERSION, type MingaServer, type ServerInit } from './server.ts'
export { chooseBlocks, type AnnouncedSpan } from './block-selection.ts'
export { ServerConfigError } from './errors.ts'
export { availableMemory, checkSpanFits, spanMemory, RUNTIME_BASELINE_BYTES, type SpanMemory } from './memory.ts'
