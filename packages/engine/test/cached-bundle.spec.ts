// The on-disk bundles of the workers and of the `minga` bin: built once, reused while their inputs
// are unchanged, rebuilt when one changes.
import { mkdtempSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterEach, describe, expect, it } from 'vitest'
import { cachedBundle } from '../src/worker/cached-bundle.mjs'

describe('cachedBundle', () => {
  let dir: string | undefined
  afterEach(() => { if (dir != null) rmSync(dir, { recursive: true, force: true }) })

  it('builds once, reuses the bundle while its inputs are unchanged and rebuilds when one changes', async () => {
    dir = mkdtempSync(join(tmpdir(), 'minga-bundle-'))
    const entry = join(dir, 'entry.ts')
    const part = join(dir, 'part.ts')
    writeFileSync(entry, "import { answer } from './part.ts'\nexport const value: number = answer + 1\n")
    writeFileSync(part, 'export const answer: number = 41\n')
    const file = join(dir, 'out', 'entry.mjs')
    const options = { entryPoints: [entry], bundle: true, platform: 'node' as const, format: 'esm' as const }

    expect(await cachedBundle(file, options)).toBe(file)
    expect((await import(pathToFileURL(file).href + '?1')).value).toBe(42)
    const built = statSync(file, { bigint: true })

    await cachedBundle(file, options)
    const reused = statSync(file, { bigint: true })
    expect([reused.ino, reused.mtimeNs]).toEqual([built.ino, built.mtimeNs])

    writeFileSync(part, 'export const answer: number = 1\n')
    utimesSync(part, new Date(), new Date(Date.now() + 5000)) // a different modification time even on a coarse clock
    await cachedBundle(file, options)
    expect((await import(pathToFileURL(file).href + '?2')).value).toBe(2)
  })

  it('rebuilds when the list of inputs is missing (a build that was interrupted)', async () => {
    dir = mkdtempSync(join(tmpdir(), 'minga-bundle-'))
    const entry = join(dir, 'entry.ts')
    writeFileSync(entry, 'export const value: number = 7\n')
    const file = join(dir, 'entry.mjs')
    const options = { entryPoints: [entry], bundle: true, platform: 'node' as const, format: 'esm' as const }
    await cachedBundle(file, options)
    rmSync(`${file}.inputs.json`)
    writeFileSync(file, 'export const value = 0\n')
    await cachedBundle(file, options)
    expect((await import(pathToFileURL(file).href + '?3')).value).toBe(7)
  })
})
