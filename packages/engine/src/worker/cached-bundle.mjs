// An esbuild bundle kept on disk until one of the files it was built from changes: beside the bundle,
// `<name>.inputs.json` lists every input with its size and modification time. Plain JavaScript, so
// that the `minga` bin can use it before any TypeScript loader exists (see @minga/cli's bin/).
import { mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { dirname, isAbsolute, join } from 'node:path'
import { pathToFileURL } from 'node:url'

/**
 * The bundle at `file`, built first with esbuild `options` (an entry point and its settings; `write`
 * and `metafile` are set here) when it is missing or one of its inputs changed. Relative input paths
 * are resolved from `options.absWorkingDir` (default: the current folder).
 */
export async function cachedBundle (file, options) {
  const inputsFile = `${file}.inputs.json`
  if (isFresh(file, inputsFile)) return file
  const { build } = await import('esbuild')
  const result = await build({ logLevel: 'silent', ...options, write: false, metafile: true })
  const root = options.absWorkingDir ?? process.cwd()
  // (esbuild names virtual inputs with a namespace prefix, e.g. `data:`: they have no file)
  const inputs = Object.keys(result.metafile.inputs).filter(path => !/^[a-z-]+:/.test(path)).map(path => isAbsolute(path) ? path : join(root, path))
  mkdirSync(dirname(file), { recursive: true })
  const suffix = `.${process.pid}-${Math.random().toString(36).slice(2, 8)}.tmp`
  try {
    writeFileSync(file + suffix, result.outputFiles[0].contents)
    writeFileSync(inputsFile + suffix, JSON.stringify(Object.fromEntries(inputs.map(path => [path, signature(path)]))))
    // the inputs list goes last: a bundle is only trusted beside the list it was built from
    renameSync(file + suffix, file)
    renameSync(inputsFile + suffix, inputsFile)
  } finally {
    rmSync(file + suffix, { force: true })
    rmSync(inputsFile + suffix, { force: true })
  }
  return file
}

function isFresh (file, inputsFile) {
  let inputs
  try {
    inputs = JSON.parse(readFileSync(inputsFile, 'utf8'))
    statSync(file)
  } catch {
    return false
  }
  for (const [path, expected] of Object.entries(inputs)) {
    let actual
    try {
      actual = signature(path)
    } catch {
      return false
    }
    if (actual !== expected) return false
  }
  return true
}

function signature (path) {
  const { size, mtimeMs } = statSync(path)
  return `${size}:${mtimeMs}`
}

/**
 * An esbuild plugin: the packages whose names match `filter` stay imports in the bundle, of the
 * files esbuild resolves them to from their importer, as absolute file URLs (a bundle in a cache
 * folder, or in a data: URL, has no node_modules of its own to resolve a package name from).
 */
export function packagesByFileUrl (filter) {
  return {
    name: 'minga-packages-by-file-url',
    setup (build) {
      build.onResolve({ filter }, async args => {
        if (args.path.startsWith('node:') || args.pluginData === 'resolving') return undefined
        const resolved = await build.resolve(args.path, { kind: args.kind, resolveDir: args.resolveDir, importer: args.importer, pluginData: 'resolving' })
        if (resolved.errors.length > 0) return { errors: resolved.errors }
        return { path: resolved.external ? resolved.path : pathToFileURL(resolved.path).href, external: true }
      })
    }
  }
}
