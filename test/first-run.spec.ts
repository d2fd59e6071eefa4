// The README's main job on a fresh machine, as a new user meets it: a clone of the repository alone
// (no ../shared beside it, no node_modules), then `npm start`. It must install, run the local swarm
// and print generated text with the shipped model, then say what to run next.
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, expect, it } from 'vitest'
import { REPO_ROOT } from '@minga/cli/processes'

const run = promisify(execFile)
const parent = mkdtempSync(join(tmpdir(), 'minga-first-run-'))
afterAll(() => { rmSync(parent, { recursive: true, force: true }) })

it('npm start works in a fresh clone with nothing beside it', async () => {
  const clone = join(parent, 'minga')
  // What is committed is what a user clones: uncommitted changes are not part of this check.
  await run('git', ['clone', '--quiet', '--no-hardlinks', REPO_ROOT, clone])
  expect(existsSync(join(parent, 'shared'))).toBe(false)
  expect(existsSync(join(clone, 'node_modules'))).toBe(false)
  const env = { ...process.env }
  for (const key of Object.keys(env)) if (key.startsWith('npm_') || key === 'INIT_CWD' || key === 'MINGA_MODEL') delete env[key]
  const { stdout } = await run('npm', ['start', '--', '--max-new-tokens', '24'], { cwd: clone, env, timeout: 280_000, maxBuffer: 16 * 2 ** 20 })
  expect(stdout).toMatch(/all 5 layers are covered/)
  expect(stdout).toMatch(/Once upon a time, there was a little girl/)
  expect(stdout).toMatch(/stopped every node/)
  expect(stdout).toMatch(/What next:\n.*minga serve --model DIR/)
}, 300_000)
