// Server-sent events from a fetch() response body: yields each event's data (the text after
// "data:", lines of one event joined by "\n"), as the OpenAI streaming API sends them.
export async function * sseData (body, signal) {
  const reader = body.getReader()
  const decoder = new TextDecoder()
  let buffer = ''
  const onAbort = () => { reader.cancel().catch(() => {}) }
  signal?.addEventListener('abort', onAbort, { once: true })
  try {
    for (;;) {
      const { value, done } = await reader.read()
      if (signal?.aborted) throw new DOMException('the answer was stopped', 'AbortError')
      buffer += decoder.decode(value ?? new Uint8Array(), { stream: !done })
      // events end with a blank line; accept \r\n too
      const events = buffer.split(/\r?\n\r?\n/)
      buffer = done ? '' : events.pop()
      for (const event of events) {
        const data = event.split(/\r?\n/).filter(line => line.startsWith('data:')).map(line => line.slice(line[5] === ' ' ? 6 : 5))
        if (data.length > 0) yield data.join('\n')
      }
      if (done) return
    }
  } finally {
    signal?.removeEventListener('abort', onAbort)
    try { reader.releaseLock() } catch {}
  }
}
