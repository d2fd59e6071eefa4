// The human-readable summary of a fuzz report.
import type { FuzzReport } from './report.ts'

export function summary (r: FuzzReport): string {
  const lines = [
    `minga wire fuzz, seed ${r.seed}: ${r.ok ? 'OK' : 'FAILED'}`,
    `  frames      ${r.framesSent} sent (${(r.bytesSent / 1048576).toFixed(1)} MiB) in ${(r.fuzzMs / 1000).toFixed(1)} s: ${r.framesPerSecond} frames/s; whole run ${(r.totalMs / 1000).toFixed(1)} s`,
    `  cpu         server ${(r.serverCpuMs / 1000).toFixed(1)} s, fuzzer+client ${(r.fuzzerCpuMs / 1000).toFixed(1)} s during the fuzz`,
    `  episodes    ${Object.entries(r.episodes).map(([k, e]) => `${k} ${e.episodes}×/${e.frames}`).join(', ')}`,
    `  replies     ${Object.entries(r.replies).map(([k, n]) => `${k} ${n}`).join(', ')}`,
    `  crashes ${r.crashes}, timeouts ${r.timeouts}, missing replies ${r.missingReplies}, violations ${r.violations}, INTERNAL ${r.internalErrors}`,
    `  channels    dial failed ${r.channelFailures.dialFailed}, refused (stream limit) ${r.channelFailures.refusedStreams}, reset by server ${r.channelFailures.resetByServer}, closed during a request ${r.channelFailures.closedDuringRequest}`,
    `  server      stopped cleanly ${r.server.stoppedCleanly}, RSS ${r.server.rssStartMiB} → peak ${r.server.rssPeakMiB} → ${r.server.rssEndMiB} MiB, ${r.server.stderrLines} log lines`,
    `  heartbeat   ${r.heartbeat.sent} sent, ${r.heartbeat.failed} failed, p50 ${r.heartbeat.p50Ms} ms, max ${r.heartbeat.maxMs} ms`,
    `  normal      ${r.normal.generations} generations in ${r.normal.rounds} rounds during the fuzz (overlap ${r.normal.overlappedFuzz}), equal to local: ${r.normal.equal}, BUSY retries ${r.normal.busyRetries}, slowest generation ${r.normal.longestGenerationMs} ms`,
    ...r.normal.checks.map(c => `              "${c.prompt}": ${c.ids.length} ids ${c.equal ? '= local' : `≠ local ${JSON.stringify(c.reference)}`} ${JSON.stringify(c.ids)}`),
    ...r.normal.failures.map(f => `              failure: ${f}`),
    `  after fuzz  generation equal to local: ${r.final.equal}${r.final.error != null ? ` (${r.final.error})` : ''}; ${r.probes.capacityAfter.opened}/${r.probes.capacityAfter.wanted} full-length sessions open at once (${r.probes.capacityAfter.waitedMs} ms)`,
    `  probes      oversize: ${r.probes.oversizeFrame}`,
    `              partial frame: ${r.probes.partialFrameHeld}`,
    `              cross-peer CLOSE: ${r.probes.crossPeerClose}`,
    `              starvation: ${r.probes.starvation}`,
    ...r.violationSamples.slice(0, 10).map(v => `  violation   ${v}`),
    ...r.server.suspiciousLogLines.slice(0, 10).map(l => `  server log  ${l}`),
    '  error messages (samples):',
    ...Object.entries(r.errorSamples).flatMap(([k, v]) => v.slice(0, 3).map(s => `    ${k}: ${s}`))
  ]
  return lines.join('\n')
}
