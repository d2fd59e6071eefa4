#!/usr/bin/env node
// Installed entry of the `minga` command: runs the CLI's cached bundle (cli-bundle.mjs), or its
// TypeScript sources through tsx where no bundle can be built.
import { pathToFileURL } from 'node:url'
import { cliBundle } from './cli-bundle.mjs'

let bundle
try {
  bundle = await cliBundle()
} catch (err) {
  process.stderr.write(`minga: could not build the command's bundle (${err?.message ?? err}); running its sources through tsx\n`)
}
if (bundle != null) {
  await import(pathToFileURL(bundle).href)
} else {
  const { register } = await import('tsx/esm/api')
  register()
  await import('../src/bin.ts')
}
