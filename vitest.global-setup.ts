// One prepared-span cache folder per test run (MINGA_CACHE, inherited by the test processes and the
// `minga serve` processes they start), so runs never share prepared layers with each other or the user.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export default function setup (): () => void {
  const dir = mkdtempSync(join(tmpdir(), 'minga-test-cache-'))
  process.env.MINGA_CACHE = dir
  return () => { rmSync(dir, { recursive: true, force: true }) }
}
