// The swarm map: every node's span as a bar over the model's layers 0…N (like Petals' health
// page), per-layer coverage with the layers no server holds in red, and the route of the current
// answer highlighted. Polled from the gateway's GET /v1/swarm.
const SLOW_MS = 3000
const FAST_MS = 1000

export function startSwarmMap ({ onStatus, apiKey }) {
  const $ = id => document.getElementById(id)
  let fast = false
  let timer = null

  async function refresh () {
    clearTimeout(timer)
    try {
      const response = await fetch('v1/swarm', { headers: apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {}, cache: 'no-store' })
      if (!response.ok) throw new Error(`the gateway answered ${response.status} for /v1/swarm`)
      const swarm = normalise(await response.json())
      render(swarm)
      $('swarm-error').hidden = true
      $('swarm-updated').textContent = `updated ${new Date().toLocaleTimeString()}`
      onStatus(swarm)
    } catch (err) {
      $('swarm-error').hidden = false
      $('swarm-error').textContent = err instanceof TypeError ? 'Cannot reach the gateway: the map is not being updated.' : `Cannot read the swarm's state: ${err.message}`
      onStatus(null)
    } finally {
      timer = setTimeout(refresh, fast ? FAST_MS : SLOW_MS)
    }
  }

  function render ({ numBlocks, servers, coverage, lastRoute }) {
    renderAxis($('axis'), numBlocks)
    const missing = coverage.filter(c => c.servers === 0).map(c => c.block)
    const cells = coverage.map(c => {
      const cell = document.createElement('div')
      cell.className = `layer ${c.servers === 0 ? 'uncovered' : c.servers > 1 ? 'replicated' : 'covered'}`
      cell.dataset.block = c.block
      cell.title = `layer ${c.block}: ${c.servers === 0 ? 'no server' : `${plural(c.servers, 'server')}, ${c.throughput.toFixed(1)} tokens/s`}`
      return cell
    })
    $('coverage').replaceChildren(...cells)
    $('coverage-note').textContent = missing.length > 0 ? `${plural(missing.length, 'layer')} missing` : 'all covered'
    const summary = $('coverage-summary')
    summary.classList.toggle('bad', missing.length > 0 || numBlocks === 0)
    summary.textContent = numBlocks === 0
      ? 'No server of this model has announced itself in the swarm yet.'
      : missing.length > 0
        ? `${missing.length === 1 ? 'Layer' : 'Layers'} ${ranges(missing)} of ${numBlocks} ${missing.length === 1 ? 'has' : 'have'} no server: the swarm cannot answer until a node hosts ${missing.length === 1 ? 'it' : 'them'} (minga serve --blocks auto).`
        : `All ${numBlocks} layers are covered by ${plural(servers.length, 'node')}.`

    const route = new Map((lastRoute ?? []).map(hop => [hop.peerId, hop.blocks]))
    const rows = [...servers].sort((a, b) => a.start - b.start || a.end - b.end || a.peerId.localeCompare(b.peerId)).map(s => nodeRow(s, numBlocks, route.get(s.peerId)))
    if (rows.length === 0) {
      const none = document.createElement('p')
      none.className = 'no-nodes'
      none.textContent = 'No nodes.'
      rows.push(none)
    }
    $('nodes').replaceChildren(...rows)
    renderRoute($('route'), lastRoute, servers)
  }

  refresh()
  return {
    /** Polls every second while an answer streams, so its route shows up at once. */
    setFast (on) {
      fast = on
      if (on) refresh()
    }
  }
}

/** /v1/swarm is client.status() plus "model" and "lastRoute"; `minga status --json` wraps it in models[]. */
function normalise (json) {
  const status = Array.isArray(json.models) ? (json.models[0] ?? {}) : json
  const numBlocks = Number.isInteger(status.numBlocks) ? status.numBlocks : 0
  const servers = Array.isArray(status.servers) ? status.servers : []
  const coverage = Array.isArray(status.coverage) && status.coverage.length === numBlocks
    ? status.coverage
    : Array.from({ length: numBlocks }, (_, block) => {
      const holders = servers.filter(s => s.start <= block && block < s.end)
      return { block, servers: holders.length, throughput: holders.reduce((sum, s) => sum + s.throughput, 0) }
    })
  return { model: json.model ?? status.modelId ?? '', modelId: status.modelId, numBlocks, servers, coverage, lastRoute: Array.isArray(json.lastRoute) ? json.lastRoute : null }
}

function nodeRow (server, numBlocks, hop) {
  const row = document.createElement('div')
  row.className = 'map-row node'
  row.dataset.peerId = server.peerId
  row.classList.toggle('on-route', hop != null)

  const label = document.createElement('div')
  label.className = 'node-label'
  const name = document.createElement('span')
  name.className = 'node-name'
  name.textContent = server.name || 'unnamed node' // names come from the DHT: text only, never HTML
  const id = document.createElement('span')
  id.className = 'peer-id'
  id.textContent = shortId(server.peerId)
  id.title = server.peerId
  label.append(name, id)

  const track = document.createElement('div')
  track.className = 'track'
  const bar = document.createElement('div')
  bar.className = 'span-bar'
  place(bar, server.start, server.end, numBlocks)
  bar.textContent = `${server.start}–${server.end}`
  bar.title = `layers ${server.start} to ${server.end - 1}`
  track.append(bar)
  if (hop != null) {
    const used = document.createElement('div')
    used.className = 'hop-bar'
    used.title = `the current answer goes through layers ${hop[0]} to ${hop[1] - 1} here`
    place(used, hop[0], hop[1], numBlocks)
    track.append(used)
  }

  const stats = document.createElement('div')
  stats.className = 'node-stats'
  const speed = document.createElement('div')
  speed.textContent = `${formatNumber(server.throughput)} tokens/s${server.rttMs != null ? ` · ${Math.round(server.rttMs)} ms` : ''}`
  const free = document.createElement('div')
  free.className = 'muted'
  free.textContent = `${server.freeSessions} free · ${formatNumber(server.freeCacheTokens)} cache`
  free.title = `${server.freeSessions} free sessions, room for ${server.freeCacheTokens} tokens in its KV cache`
  stats.append(speed, free)

  row.append(label, track, stats)
  return row
}

function renderAxis (axis, numBlocks) {
  if (axis.dataset.blocks === String(numBlocks)) return
  axis.dataset.blocks = String(numBlocks)
  const step = Math.max(1, Math.ceil(numBlocks / 10))
  const ticks = []
  for (let b = 0; b <= numBlocks; b += step) ticks.push(b)
  if (ticks[ticks.length - 1] !== numBlocks) ticks.push(numBlocks)
  axis.replaceChildren(...(numBlocks === 0 ? [] : ticks.map(b => {
    const tick = document.createElement('span')
    tick.className = 'tick'
    tick.style.left = `${(100 * b) / numBlocks}%`
    tick.textContent = b
    return tick
  })))
}

function renderRoute (p, route, servers) {
  const byId = new Map(servers.map(s => [s.peerId, s]))
  p.classList.toggle('active', route != null && route.length > 0)
  if (route == null || route.length === 0) {
    p.textContent = 'No answer has been routed yet.'
    return
  }
  const parts = [document.createTextNode('Route of the current answer: ')]
  route.forEach((hop, i) => {
    if (i > 0) parts.push(document.createTextNode(' → '))
    const span = document.createElement('span')
    span.className = 'hop'
    const name = byId.get(hop.peerId)?.name
    span.textContent = `${name ? `${name} ` : ''}${shortId(hop.peerId)} [${hop.blocks[0]}, ${hop.blocks[1]})`
    parts.push(span)
  })
  p.replaceChildren(...parts)
}

function place (element, start, end, numBlocks) {
  element.style.left = `${(100 * start) / numBlocks}%`
  element.style.width = `${(100 * (end - start)) / numBlocks}%`
}

/** libp2p ids all start alike (12D3KooW…): the tail tells them apart. */
function shortId (peerId) {
  return `…${String(peerId).slice(-8)}`
}

/** [2, 3, 4, 7] → "2–4, 7" */
function ranges (blocks) {
  const out = []
  for (let i = 0; i < blocks.length; i++) {
    let j = i
    while (j + 1 < blocks.length && blocks[j + 1] === blocks[j] + 1) j++
    out.push(i === j ? `${blocks[i]}` : `${blocks[i]}–${blocks[j]}`)
    i = j
  }
  return out.join(', ')
}

function plural (n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`
}

function formatNumber (n) {
  if (!Number.isFinite(n)) return '?'
  if (n >= 10_000) return `${(n / 1000).toFixed(0)}k`
  if (n >= 1000) return `${(n / 1000).toFixed(1)}k`
  return n >= 100 ? n.toFixed(0) : n.toFixed(1)
}
