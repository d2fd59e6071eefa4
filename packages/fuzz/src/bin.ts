// `pnpm fuzz`: the wire fuzzer from the command line. A real `minga serve` process takes random and
// mutated inference frames over libp2p while a normal client keeps generating through it.
//
//   pnpm fuzz [--frames N] [--seed S] [--workers W] [--kinds K,…] [--model DIR] [--json]
//
//   --workers W   concurrent fuzzing loops (default 8); --kinds a,b  only these episode kinds
//   --model DIR   default models/stories260k; --json  the whole report as one JSON line
//
// Exit status 0 when the server survived (no crash, clean shutdown), the normal session and a fresh
// one after the fuzz equal the local engine, and no invariant broke (no timeout, no missing reply, no
// violation, no INTERNAL error, every session slot free again afterwards); 1 otherwise.
import '@minga/p2p/polyfill'
import { join } from 'node:path'
import { REPO_ROOT } from '@minga/cli/processes'
import { parseArgs } from 'node:util'
import { runFuzz } from './run.ts'
import { summary } from './summary.ts'

async function main (): Promise<number> {
  const { values } = parseArgs({
    options: {
      frames: { type: 'string', default: '100000' },
      seed: { type: 'string', default: '1' },
      workers: { type: 'string', default: '8' },
      model: { type: 'string' },
      kinds: { type: 'string' },
      json: { type: 'boolean', default: false }
    }
  })
  const frames = Number(values.frames)
  const seed = Number(values.seed)
  const workers = Number(values.workers)
  if (!Number.isInteger(frames) || frames < 1) throw new Error(`--frames must be a positive integer, got ${values.frames}`)
  if (!Number.isInteger(seed)) throw new Error(`--seed must be an integer, got ${values.seed}`)
  if (!Number.isInteger(workers) || workers < 1) throw new Error(`--workers must be a positive integer, got ${values.workers}`)
  const report = await runFuzz({ frames, seed, workers, modelDir: values.model ?? join(REPO_ROOT, 'models/stories260k'), kinds: values.kinds?.split(','), log: line => { process.stderr.write(`fuzz: ${line}\n`) } })
  if (values.json) {
    process.stderr.write(summary(report) + '\n')
    process.stdout.write(JSON.stringify(report) + '\n')
  } else {
    process.stdout.write(summary(report) + '\n')
  }
  return report.ok ? 0 : 1
}

main().then(code => { process.exit(code) }, err => {
  process.stderr.write(`fuzz: ${err?.stack ?? err}\n`)
  process.exit(2)
})
