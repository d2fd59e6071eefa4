// A worker's code, built at run time: its TypeScript entry and the engine modules it imports
// bundled by esbuild into one ES module, so the worker runs plain JavaScript without a TypeScript
// loader of its own.
import { fileURLToPath, pathToFileURL } from 'node:url'
import type { Plugin } from 'esbuild'

/**
 * Packages stay imports in the worker's bundle, of the files esbuild resolves them to (absolute
 * file URLs: the bundle is a data: URL, which has no folder to resolve a package name from).
 */
const packagesByFile: Plugin = {
  name: 'minga-packages-by-file',
  setup (build) {
    build.onResolve({ filter: /^[^./]/ }, async args => {
      if (args.path.startsWith('node:') || args.pluginData === 'resolving') return undefined
      const resolved = await build.resolve(args.path, { kind: args.kind, resolveDir: args.resolveDir, importer: args.importer, pluginData: 'resolving' })
      if (resolved.errors.length > 0) return { errors: resolved.errors }
      return { path: resolved.external ? resolved.path : pathToFileURL(resolved.path).href, external: true }
    })
  }
}

const workerCode = new Map<string, Promise<URL>>()

/**
 * A worker's code: its TypeScript entry and the engine modules it imports bundled by esbuild into
 * one ES module (packages stay imports). It is built from the sources at every process start (once
 * per entry, ~15–60 ms), so it can never be stale, and the worker then runs plain JavaScript: no
 * TypeScript loader of its own, whose registration, hooks thread and per-module round trips took
 * ~0.5 s of every node's start.
 */
export async function bundleWorker (entry: URL): Promise<URL> {
  let code = workerCode.get(entry.href)
  if (code == null) {
    code = (async () => {
      const { build } = await import('esbuild')
      const result = await build({
        entryPoints: [fileURLToPath(entry)],
        bundle: true,
        platform: 'node',
        format: 'esm',
        target: 'node20',
        write: false,
        logLevel: 'silent',
        plugins: [packagesByFile]
      })
      return new URL(`data:text/javascript;base64,${Buffer.from(result.outputFiles[0].contents).toString('base64')}`)
    })()
    workerCode.set(entry.href, code)
    code.catch(() => { workerCode.delete(entry.href) }) // a failed build is tried again next time
  }
  return await code
}
