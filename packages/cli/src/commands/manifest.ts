// `minga manifest`: a model directory's manifest (files and tensors, chunked, a SHA-256 per chunk)
// and its model id, the hash of the manifest, which is all a peer needs to fetch it verified.
import type { Command } from 'commander'
import type { CliIo } from '../index.ts'
import { existingModelDir } from '../options.ts'

export function registerManifest (program: Command, io: CliIo): void {
  program.command('manifest')
    .description('print a model directory\'s manifest and model id')
    .requiredOption('--model <dir>', 'Hugging Face model directory')
    .option('--json', 'print {"modelId", "manifest"} as one JSON object')
    .action(async (flags: { model: string, json?: boolean }) => {
      const { buildManifest } = await import('@minga/weights')
      const { id, manifest } = buildManifest(existingModelDir(flags.model))
      if (flags.json === true) {
        io.stdout.write(JSON.stringify({ modelId: id, manifest }) + '\n')
        return
      }
      const tensorBytes = manifest.tensors.reduce((n, t) => n + t.end - t.begin, 0)
      const chunks = manifest.tensors.reduce((n, t) => n + t.chunks.length, 0) + manifest.files.reduce((n, f) => n + f.chunks.length, 0)
      io.stdout.write([
        `model id ${id}`,
        ...manifest.files.map(f => `  ${f.path}  ${f.size} bytes  sha256 ${f.sha256}`),
        `  ${manifest.tensors.length} tensors, ${(tensorBytes / 1e6).toFixed(1)} MB, in ${chunks} chunks of at most ${manifest.chunkBytes / 2 ** 20} MiB`
      ].join('\n') + '\n')
    })
}
