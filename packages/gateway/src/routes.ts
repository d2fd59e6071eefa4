// The gateway's HTTP routes on Node's http: OpenAI endpoints behind the optional API key, health,
// metrics, the swarm view for the web page, and plain static files from public/.
import { timingSafeEqual } from 'node:crypto'
import { readFile, stat } from 'node:fs/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { extname, join, normalize, sep } from 'node:path'
import { ApiError } from './errors.ts'
import { sendError, sendJson, type ServingContext } from './generation.ts'
import { parseJsonBody, type ModelList } from './protocol.ts'
import { serveChat } from './serving-chat.ts'
import { serveCompletion } from './serving-completion.ts'

export interface RouterContext extends ServingContext {
  apiKey?: string
  maxBodyBytes: number
  publicDir: string
  createdAt: number
  /** GET /v1/swarm's body. */
  swarmView (): Promise<object>
  /** The layers no server holds now (empty: the swarm can serve). */
  missingBlocks (): Promise<number[]>
  log (message: string): void
}

type Handler = (req: IncomingMessage, res: ServerResponse, receivedAt: number) => Promise<void>

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.map': 'application/json',
  '.woff2': 'font/woff2'
}

export function createRouter (ctx: RouterContext): (req: IncomingMessage, res: ServerResponse) => void {
  const generation = (endpoint: string, serve: typeof serveChat): Handler => async (req, res, receivedAt) => {
    res.once('close', () => { ctx.metrics.requests.inc({ endpoint, status: res.writableFinished ? res.statusCode : 499 }) })
    await serve(ctx, req, res, parseJsonBody(await readBody(req, ctx.maxBodyBytes)), receivedAt)
  }
  const routes: Record<string, Partial<Record<string, { handler: Handler, auth: boolean }>>> = {
    '/v1/chat/completions': { POST: { auth: true, handler: generation('chat', serveChat) } },
    '/v1/completions': { POST: { auth: true, handler: generation('completions', serveCompletion) } },
    '/v1/models': { GET: { auth: true, handler: async (_req, res) => { sendJson(res, 200, modelList(ctx)) } } },
    '/v1/swarm': { GET: { auth: false, handler: async (_req, res) => { sendJson(res, 200, await ctx.swarmView()) } } },
    '/health': {
      GET: {
        auth: false,
        handler: async (_req, res) => {
          const missing = await ctx.missingBlocks()
          if (missing.length === 0) sendJson(res, 200, { status: 'ok' })
          else sendJson(res, 503, { status: 'unavailable', missingBlocks: missing }, { 'retry-after': '5' })
        }
      }
    },
    '/metrics': {
      GET: {
        auth: false,
        handler: async (_req, res) => {
          const text = await ctx.metrics.registry.metrics()
          res.writeHead(200, { 'content-type': ctx.metrics.registry.contentType })
          res.end(text)
        }
      }
    }
  }
  return (req, res) => {
    const receivedAt = performance.now()
    res.on('error', () => {}) // a client that went away mid-write is handled by the abort path
    // Browser-based clients call from other origins; the API key, not the origin, is what is checked.
    res.setHeader('access-control-allow-origin', '*')
    if (req.method === 'OPTIONS') {
      res.writeHead(204, { 'access-control-allow-methods': 'GET, POST, OPTIONS', 'access-control-allow-headers': 'authorization, content-type', 'access-control-max-age': '86400' })
      res.end()
      return
    }
    const path = new URL(req.url ?? '/', 'http://gateway').pathname
    const route = routes[path]
    const run = async (): Promise<void> => {
      if (route == null) {
        if ((req.method === 'GET' || req.method === 'HEAD') && !path.startsWith('/v1/')) return await serveStatic(ctx.publicDir, path, req, res)
        throw new ApiError(404, `no route ${req.method} ${path}`, null, 'not_found')
      }
      const entry = route[req.method ?? '']
      if (entry == null) throw new ApiError(405, `${path} accepts ${Object.keys(route).join(', ')}, not ${req.method}`, null, 'method_not_allowed')
      if (entry.auth) checkKey(ctx.apiKey, req)
      await entry.handler(req, res, receivedAt)
    }
    run().catch(err => {
      const error = sendError(res, err)
      if (error.status >= 500 && error.status !== 503) ctx.log(`${req.method} ${path}: ${error.message}`)
    })
  }
}

function modelList (ctx: RouterContext): ModelList {
  return { object: 'list', data: [{ id: ctx.modelName, object: 'model', created: ctx.createdAt, owned_by: 'minga' }] }
}

function checkKey (apiKey: string | undefined, req: IncomingMessage): void {
  if (apiKey == null) return
  const given = /^Bearer (.+)$/i.exec(req.headers.authorization ?? '')?.[1] ?? ''
  const a = Buffer.from(given)
  const b = Buffer.from(apiKey)
  if (!(a.length === b.length && timingSafeEqual(a, b))) {
    throw new ApiError(401, given === '' ? 'missing API key: send "Authorization: Bearer KEY"' : 'incorrect API key', null, 'invalid_api_key')
  }
}

/**
 * The request body, up to `limit` bytes. A larger one is refused with 413 once it has been read to
 * its end (a client still sending would miss the reply otherwise), unless it goes on past 16 times
 * the limit: then the connection is dropped.
 */
async function readBody (req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0)
  const chunks: Buffer[] = []
  let total = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    total += chunk.length
    if (total <= limit && declared <= limit) chunks.push(chunk)
    else if (total > 16 * limit) {
      req.destroy()
      break
    }
  }
  if (total > limit || declared > limit) throw new ApiError(413, `the request body is ${Math.max(total, declared)} bytes, over the limit of ${limit}`, null, 'request_too_large')
  return Buffer.concat(chunks)
}

async function serveStatic (root: string, path: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  let relative: string
  try {
    relative = normalize(decodeURIComponent(path)).replace(/^([/\\])+/, '')
  } catch {
    throw new ApiError(400, `bad path ${path}`)
  }
  if (relative === '' || relative.endsWith(sep)) relative = join(relative, 'index.html')
  const file = join(root, relative)
  if (!file.startsWith(root + sep) || relative.split(sep).includes('..')) throw new ApiError(404, `no file ${path}`, null, 'not_found')
  const info = await stat(file).catch(() => undefined)
  if (info == null || !info.isFile()) throw new ApiError(404, `no file ${path}`, null, 'not_found')
  const body = await readFile(file)
  res.writeHead(200, { 'content-type': CONTENT_TYPES[extname(file)] ?? 'application/octet-stream', 'content-length': body.length })
  res.end(req.method === 'HEAD' ? undefined : body)
}
