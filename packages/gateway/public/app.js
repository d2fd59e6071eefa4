// The page's entry: the chat, the swarm map, and the header that ties them together
// (the model's name, whether the swarm can answer now, the tabs on a phone).
import { startChat } from './chat.js'
import { startSwarmMap } from './swarm.js'

const $ = id => document.getElementById(id)
let model = null

// Tabs only show on narrow screens; on a laptop both panels are side by side.
for (const tab of document.querySelectorAll('.tab')) {
  tab.addEventListener('click', () => {
    document.querySelector('main').dataset.show = tab.dataset.tab
    for (const other of document.querySelectorAll('.tab')) other.setAttribute('aria-pressed', String(other === tab))
  })
}

// The chat first: it fills the settings (the API key too) from the browser's store.
startChat({
  getModel: async () => model ?? await modelsLoaded,
  onStreaming: on => { map.setFast(on) }
})

const map = startSwarmMap({
  apiKey: () => $('api-key').value,
  onStatus: swarm => {
    const health = $('health')
    if (swarm == null) {
      health.className = 'health bad'
      health.textContent = 'gateway unreachable'
      return
    }
    if (swarm.model) setModel(swarm.model)
    const missing = swarm.coverage.filter(c => c.servers === 0).length
    const ok = swarm.numBlocks > 0 && missing === 0
    health.className = `health ${ok ? 'ok' : 'bad'}`
    health.textContent = ok
      ? `ready · ${swarm.servers.length} node${swarm.servers.length === 1 ? '' : 's'}`
      : swarm.numBlocks === 0 ? 'no servers' : `${missing} layer${missing === 1 ? '' : 's'} missing`
  }
})

// The model's id for requests (the gateway answers /v1/models from memory).
const modelsLoaded = fetch('v1/models', { headers: $('api-key').value ? { Authorization: `Bearer ${$('api-key').value}` } : {} })
  .then(async r => r.ok ? await r.json() : null)
  .then(list => {
    if (list?.data?.[0]?.id) setModel(list.data[0].id)
    return model ?? undefined
  })
  .catch(() => undefined)

function setModel (name) {
  model = name
  $('model-name').textContent = name
  document.title = `${name} — minga`
}
