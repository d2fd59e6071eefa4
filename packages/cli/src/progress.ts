// Progress of preparing a span's layers: a bar on a terminal, one line per layer otherwise (logs).
import cliProgress from 'cli-progress'
import type { PrepareProgress } from '@minga/engine'
import type { CliIo } from './index.ts'

export interface PrepareProgressView {
  update: (progress: PrepareProgress) => void
  stop: () => void
}

export function prepareProgressView (io: CliIo, label: string): PrepareProgressView {
  const stream = io.stderr as NodeJS.WriteStream
  const started = performance.now()
  if (stream.isTTY !== true) {
    return {
      update: ({ layer, done, total }) => {
        io.stderr.write(`${label}: prepared layer ${layer} (${done}/${total}, ${((performance.now() - started) / 1000).toFixed(1)} s)\n`)
      },
      stop: () => {}
    }
  }
  let bar: cliProgress.SingleBar | undefined
  return {
    update: ({ layer, done, total }) => {
      if (bar == null) {
        bar = new cliProgress.SingleBar({ stream, format: `${label} [{bar}] {value}/{total} layers (layer {layer}) {duration}s`, hideCursor: true }, cliProgress.Presets.shades_classic)
        bar.start(total, 0, { layer })
      }
      bar.update(done, { layer })
      if (done === total) bar.stop()
    },
    stop: () => { bar?.stop() }
  }
}
