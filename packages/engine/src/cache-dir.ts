// The one folder where minga keeps what it makes or fetches: prepared spans (prepared/), fetched
// models (models/) and the manifests of large checkpoints (manifests/).
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'

/** `$MINGA_CACHE`, else `$XDG_CACHE_HOME/minga`, else `~/.cache/minga`. */
export function defaultCacheDir (): string {
  const env = (name: string): string | undefined => process.env[name] != null && process.env[name] !== '' ? process.env[name] : undefined
  return resolve(env('MINGA_CACHE') ?? join(env('XDG_CACHE_HOME') ?? join(homedir(), '.cache'), 'minga'))
}
