// Entry point of `minga`. The polyfill comes first: libp2p needs Promise.withResolvers (Node 22+).
import '@minga/p2p/polyfill'
import { runCli } from './index.ts'

process.exitCode = await runCli(process.argv)
