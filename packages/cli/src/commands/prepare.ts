// `minga prepare`: convert and quantize a span's layers into the cache folder ahead of time, so that
// `minga serve` starts in seconds (it would otherwise do this on its first start).
import { InvalidArgumentError, type Command } from 'commander'
import { computeModelId, DEFAULT_QUANT, prepareSpan, type Quantization } from '@minga/engine'
import type { CliIo } from '../index.ts'
import { existingModelDir, parseBlocks, quantization, userPath } from '../options.ts'
import { prepareProgressView } from '../progress.ts'

interface PrepareFlags { model: string, blocks: { start: number, end: number }, quant: Quantization, cacheDir?: string, json?: boolean }

export function registerPrepare (program: Command, io: CliIo): void {
  program.command('prepare')
    .description('prepare a span\'s layers once (converted and quantized into the cache folder) for fast starts of `serve`')
    .requiredOption('--model <dir>', 'Hugging Face model directory')
    .requiredOption('--blocks <start:end>', 'layers to prepare, e.g. 0:22', (value: string) => {
      const blocks = parseBlocks(value)
      if (blocks === 'auto') throw new InvalidArgumentError('auto is for serve; prepare needs START:END.')
      return blocks
    })
    .option('--quant <q>', 'weights of the linear layers: none (f32), int8 or int4', quantization, DEFAULT_QUANT)
    .option('--cache-dir <dir>', 'the cache folder: prepared spans go under its prepared/ (default $MINGA_CACHE or ~/.cache/minga)')
    .option('--json', 'print one JSON object: {"dir", "layers", "built", "bytes"}')
    .action(async (flags: PrepareFlags) => { await prepare(flags, io) })
}

async function prepare (flags: PrepareFlags, io: CliIo): Promise<void> {
  const modelDir = existingModelDir(flags.model)
  const { start, end } = flags.blocks
  const progress = prepareProgressView(io, 'minga prepare')
  const started = performance.now()
  const span = await prepareSpan({
    modelDir,
    modelId: computeModelId(modelDir),
    start,
    end,
    quant: flags.quant,
    cacheDir: flags.cacheDir != null ? userPath(flags.cacheDir) : undefined,
    onProgress: progress.update,
    log: message => { io.stderr.write(`minga prepare: ${message}\n`) }
  }).finally(progress.stop)
  if (flags.json === true) {
    io.stdout.write(JSON.stringify({ dir: span.dir, layers: [start, end], built: span.built, bytes: span.bytes }) + '\n')
    return
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(1)
  io.stdout.write(span.built.length === 0
    ? `layers [${start}, ${end}) at ${flags.quant} were already prepared: ${(span.bytes / 2 ** 20).toFixed(1)} MiB in ${span.dir}\n`
    : `prepared ${span.built.length} of layers [${start}, ${end}) at ${flags.quant} in ${seconds} s: ${(span.bytes / 2 ** 20).toFixed(1)} MiB in ${span.dir}\n`)
}
