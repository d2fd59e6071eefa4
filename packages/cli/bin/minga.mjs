#!/usr/bin/env node
// Installed entry of the `minga` command: runs the TypeScript sources through tsx.
import { register } from 'tsx/esm/api'

register()
await import('../src/bin.ts')
