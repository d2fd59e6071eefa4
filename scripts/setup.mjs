// Installs the workspace on a fresh machine that has only Node and npm: pnpm 10 comes through npx
// (corepack's signature check fails on some machines), and onnxruntime-node's install script,
// which only downloads GPU binaries, is skipped; its CPU binaries ship inside the package.
import { execSync } from 'node:child_process'
import { existsSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const marker = join(root, 'node_modules', '.modules.yaml')
const lockfile = join(root, 'pnpm-lock.yaml')

const installed = existsSync(marker) && (!existsSync(lockfile) || statSync(marker).mtimeMs >= statSync(lockfile).mtimeMs)
if (!installed) {
  const frozen = process.env.CI && existsSync(lockfile) ? ' --frozen-lockfile' : ''
  process.stderr.write('minga: installing dependencies with pnpm 10…\n')
  execSync(`npx --yes pnpm@10 install${frozen}`, {
    cwd: root,
    stdio: ['ignore', process.stderr, process.stderr],
    env: { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip', npm_config_yes: 'true' }
  })
}
