// The command's code as one ES module, built by esbuild from the TypeScript sources and kept in
// node_modules/.cache/minga/ until one of the files it was built from changes
// (@minga/engine/cached-bundle). Node then loads one file (~50 ms) instead of resolving and
// transforming some thousand modules through tsx (~1 s of every start, on the same cores as the
// node's own loading work).
import { readFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { cachedBundle, packagesByFileUrl } from '@minga/engine/cached-bundle'

const SOURCE = fileURLToPath(new URL('../src/bin.ts', import.meta.url))
const BUNDLE = fileURLToPath(new URL('../node_modules/.cache/minga/cli.mjs', import.meta.url))
/** Packages with native code stay imports, of the files they resolve to: the bundle's folder has no node_modules of theirs. */
const NATIVE_PACKAGES = /^(onnxruntime-node|esbuild)$/

/** The bundle's path, built first if it is missing or older than one of its sources. */
export async function cliBundle () {
  return await cachedBundle(BUNDLE, {
    entryPoints: [SOURCE],
    absWorkingDir: resolve(dirname(SOURCE), '../../..'),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // bundled CommonJS packages still call require (node built-ins, optional modules)
    banner: { js: 'import { createRequire as __mingaCreateRequire } from \'node:module\'; const require = __mingaCreateRequire(import.meta.url);' },
    plugins: [packagesByFileUrl(NATIVE_PACKAGES), sourceUrls]
  })
}

/**
 * `import.meta.url` in the project's own modules stays the URL of their source file, so paths they
 * derive from it (worker entries, the gateway's page, the checkout's root) still point into the checkout.
 */
const sourceUrls = {
  name: 'minga-source-urls',
  setup (build) {
    build.onLoad({ filter: /\.ts$/ }, args => {
      if (args.path.includes('/node_modules/')) return undefined
      const contents = readFileSync(args.path, 'utf8')
      if (!contents.includes('import.meta.url')) return undefined
      return { contents: contents.replaceAll('import.meta.url', JSON.stringify(pathToFileURL(args.path).href)), loader: 'ts' }
    })
  }
}
