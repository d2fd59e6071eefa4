// Progress of a long fetch: a cli-progress bar on a terminal, a log line every 10 % otherwise.
import cliProgress from 'cli-progress'

export interface Progress {
  update (done: number): void
  stop (): void
}

export function createProgress (label: string, total: number, log: (message: string) => void, tty = process.stderr.isTTY === true): Progress {
  const mb = (n: number): string => (n / 1e6).toFixed(1)
  if (tty) {
    const bar = new cliProgress.SingleBar({
      format: `${label} [{bar}] {percentage}% | {doneMb}/{totalMb} MB | {speed} MB/s | eta {eta_formatted}`,
      stream: process.stderr,
      hideCursor: true
    }, cliProgress.Presets.shades_classic)
    const started = Date.now()
    bar.start(total, 0, { doneMb: mb(0), totalMb: mb(total), speed: '0.0' })
    return {
      update: done => { bar.update(done, { doneMb: mb(done), totalMb: mb(total), speed: mb(done / Math.max(0.001, (Date.now() - started) / 1000)) }) },
      stop: () => { bar.stop() }
    }
  }
  let nextTenth = 1
  return {
    update: done => {
      if (total === 0) return
      while (done / total >= nextTenth / 10 && nextTenth <= 10) {
        log(`${label}: ${nextTenth * 10}% (${mb(done)} of ${mb(total)} MB)`)
        nextTenth++
      }
    },
    stop: () => {}
  }
}
