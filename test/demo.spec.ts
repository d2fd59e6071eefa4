// The README's main job, as a user runs it: a local swarm of separate processes generating text.
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { expect, it } from 'vitest'
import { REPO_ROOT } from '@minga/cli/processes'

it('pnpm demo starts a swarm, covers every layer, generates through a route and stops everything', async () => {
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'scripts/demo.ts', '--max-new-tokens', '24'], { cwd: REPO_ROOT, timeout: 120_000 })
  expect(stdout).toMatch(/server \w+ holds layers \[0, 2\)/)
  expect(stdout).toMatch(/all 5 layers are covered/)
  expect(stdout).toMatch(/Once upon a time, there was a little girl named Lily\./)
  expect(stdout).toMatch(/route: \w+ \[0, 2\) → \w+ \[2, 4\) → \w+ \[4, 5\)/)
  expect(stdout).toMatch(/stopped every node/)
})
