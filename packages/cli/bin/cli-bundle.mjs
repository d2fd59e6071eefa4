// The command's code as one ES module, built by esbuild from the TypeScript sources and kept in
// node_modules/.cache/minga/ until one of the files it was built from changes
// (@minga/engine/cached-bundle). Node then loads one file (~50 ms) instead of resolving and
// transforming some thousand modules through tsx (~1 s of every start, on the same cores as the
// node's own loading work).
import { readFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { cachedBundle } from '@minga/engine/cached-bundle'

const SOURCE = fileURLToPath(new URL('../src/bin.ts', import.meta.url))
const BUNDLE = fileURLToPath(new URL('../node_modules/.cache/minga/cli.mjs', import.meta.url))
/** Packages with native code stay imports, of the files they resolve to from their importer. */
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
    plugins: [nativePackagesByFile, sourceUrls]
  })
}

/** onnxruntime-node and esbuild are imported by absolute file URL: the bundle's folder has no node_modules of theirs. */
const nativePackagesByFile = {
  name: 'minga-native-packages',
  setup (build) {
    build.onResolve({ filter: NATIVE_PACKAGES }, async args => {
      if (args.pluginData === 'resolving') return undefined
      const resolved = await build.resolve(args.path, { kind: args.kind, resolveDir: args.resolveDir, importer: args.importer, pluginData: 'resolving' })
      if (resolved.errors.length > 0) return { errors: resolved.errors }
      return { path: pathToFileURL(resolved.path).href, external: true }
    })
  }
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
