// A worker's code: its TypeScript entry and the engine modules it imports bundled by esbuild into
// one ES module, so the worker runs plain JavaScript without a TypeScript loader of its own.
import { basename } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import type { BuildOptions } from 'esbuild'
import { cachedBundle, packagesByFileUrl } from './cached-bundle.mjs'

/** Packages stay imports in the worker's bundle (only the engine's own modules are bundled). */
const packagesByFile = packagesByFileUrl(/^[^./]/)

const workerCode = new Map<string, Promise<URL>>()

/** Where worker bundles are kept between runs: the engine package's node_modules/.cache/minga/. */
const BUNDLE_DIR = new URL('../../node_modules/.cache/minga/', import.meta.url)

/**
 * A worker's code: its TypeScript entry and the engine modules it imports bundled by esbuild into
 * one ES module (packages stay imports), so the worker runs plain JavaScript: no TypeScript loader
 * of its own, whose registration, hooks thread and per-module round trips took ~0.5 s of every
 * node's start. The bundle is kept on disk until one of its sources changes (the build took ~0.2 s
 * of each start); where it cannot be written, it is built in memory for this process.
 */
export async function bundleWorker (entry: URL): Promise<URL> {
  let code = workerCode.get(entry.href)
  if (code == null) {
    code = (async () => {
      const options: BuildOptions = {
        entryPoints: [fileURLToPath(entry)],
        bundle: true,
        platform: 'node',
        format: 'esm',
        target: 'node20',
        plugins: [packagesByFile]
      }
      try {
        return pathToFileURL(await cachedBundle(fileURLToPath(new URL(`${basename(entry.pathname, '.ts')}.mjs`, BUNDLE_DIR)), options))
      } catch {
        const { build } = await import('esbuild')
        const result = await build({ ...options, write: false, logLevel: 'silent' })
        return new URL(`data:text/javascript;base64,${Buffer.from(result.outputFiles[0].contents).toString('base64')}`)
      }
    })()
    workerCode.set(entry.href, code)
    code.catch(() => { workerCode.delete(entry.href) }) // a failed build is tried again next time
  }
  return await code
}
