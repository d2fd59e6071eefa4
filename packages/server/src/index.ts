export { createServer, MINGA_VERSION, type MingaServer, type ServerInit } from './server.ts'
export { chooseBlocks, type AnnouncedSpan } from './block-selection.ts'
export { ServerConfigError } from './errors.ts'
