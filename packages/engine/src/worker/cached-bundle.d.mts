import type { BuildOptions, Plugin } from 'esbuild'

/**
 * The bundle at `file`, built first with esbuild `options` (an entry point and its settings; `write`
 * and `metafile` are set here) when it is missing or one of its inputs changed.
 */
export function cachedBundle (file: string, options: Omit<BuildOptions, 'write' | 'metafile' | 'outfile' | 'outdir'>): Promise<string>

/** An esbuild plugin: packages whose names match `filter` stay imports, by the absolute file URL they resolve to. */
export function packagesByFileUrl (filter: RegExp): Plugin
