// One prepared-span cache folder per test run (MINGA_CACHE, inherited by the test processes and the
// `minga serve` processes they start), so runs never share prepared layers with each other or the user.
// The CLI's bundle is brought up to date once here, before test files start nodes side by side.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cliBundle } from './packages/cli/bin/cli-bundle.mjs'

export default async function setup (): Promise<() => void> {
  const dir = mkdtempSync(join(tmpdir(), 'minga-test-cache-'))
  process.env.MINGA_CACHE = dir
  await cliBundle()
  return () => { rmSync(dir, { recursive: true, force: true }) }
}
