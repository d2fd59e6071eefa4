// The chat: a conversation kept in localStorage, answers streamed from the gateway's own
// /v1/chat/completions (OpenAI's streaming format), a stop button that aborts the request.
import { sseData } from './sse.js'

const STORE = 'minga.chat.v1'
const DEFAULT_SETTINGS = { temperature: 0.7, maxTokens: 128, system: '', apiKey: '' }

export function startChat ({ getModel, onStreaming }) {
  const $ = id => document.getElementById(id)
  const list = $('messages')
  const emptyNote = list.querySelector('.empty-chat')
  const prompt = $('prompt')
  const send = $('send')
  const stop = $('stop')
  const errorBox = $('chat-error')
  const fields = { temperature: $('temperature'), maxTokens: $('max-tokens'), system: $('system'), apiKey: $('api-key') }
  const state = load()
  let controller = null

  // settings: shown from the store, saved on every change
  fields.temperature.value = state.settings.temperature
  fields.maxTokens.value = state.settings.maxTokens
  fields.system.value = state.settings.system
  fields.apiKey.value = state.settings.apiKey
  const showTemperature = () => { $('temperature-value').textContent = Number(fields.temperature.value).toFixed(2) }
  showTemperature()
  for (const [key, input] of Object.entries(fields)) {
    input.addEventListener('input', () => {
      state.settings[key] = input.type === 'number' || input.type === 'range' ? Number(input.value) : input.value
      if (key === 'temperature') showTemperature()
      save(state)
    })
  }

  for (const message of state.messages) list.append(renderMessage(message).node)
  updateEmpty()
  scrollToEnd(true)

  $('settings').addEventListener('submit', event => { event.preventDefault() })
  $('composer').addEventListener('submit', event => {
    event.preventDefault()
    void ask()
  })
  prompt.addEventListener('keydown', event => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault()
      void ask()
    }
  })
  stop.addEventListener('click', () => { controller?.abort() })
  $('clear').addEventListener('click', () => {
    controller?.abort()
    state.messages = []
    save(state)
    list.querySelectorAll('.message').forEach(node => { node.remove() })
    showError(null)
    updateEmpty()
  })

  async function ask () {
    const text = prompt.value.trim()
    if (text === '' || controller != null) return
    showError(null)
    prompt.value = ''
    const user = { role: 'user', content: text }
    const answer = { role: 'assistant', content: '' }
    const history = answeredTurns(state.messages)
    state.messages.push(user, answer)
    list.append(renderMessage(user).node)
    const view = renderMessage(answer)
    view.node.classList.add('pending')
    list.append(view.node)
    updateEmpty()
    scrollToEnd(true)
    save(state)

    controller = new AbortController()
    setStreaming(true)
    const started = performance.now()
    let firstTokenAt = null
    let tokens = 0
    try {
      const system = state.settings.system.trim()
      const response = await fetch('v1/chat/completions', {
        method: 'POST',
        headers: headers(state.settings.apiKey),
        signal: controller.signal,
        body: JSON.stringify({
          model: await getModel(),
          messages: [...(system !== '' ? [{ role: 'system', content: system }] : []), ...history, { role: 'user', content: text }],
          stream: true,
          stream_options: { include_usage: true },
          temperature: clamp(Number(state.settings.temperature), 0, 2, DEFAULT_SETTINGS.temperature),
          max_tokens: Math.round(clamp(Number(state.settings.maxTokens), 1, 4096, DEFAULT_SETTINGS.maxTokens))
        })
      })
      if (!response.ok) throw await httpError(response)
      for await (const data of sseData(response.body, controller.signal)) {
        if (data === '[DONE]') break
        const chunk = JSON.parse(data)
        if (chunk.error != null) throw new Error(`the swarm stopped answering: ${chunk.error.message ?? 'unknown error'}`)
        if (chunk.usage != null) answer.usage = chunk.usage
        const choice = chunk.choices?.[0]
        if (choice?.delta?.content) {
          firstTokenAt ??= performance.now()
          tokens++
          // the first word usually comes with the space a tokenizer puts before words
          const text = answer.content === '' ? choice.delta.content.trimStart() : choice.delta.content
          answer.content += text
          view.append(text)
          scrollToEnd(false)
        }
        if (choice?.finish_reason != null) answer.finish = choice.finish_reason
      }
    } catch (err) {
      if (err?.name === 'AbortError') {
        answer.stopped = true
      } else {
        answer.failed = true
        answer.error = describe(err)
        showError(answer.error)
      }
    } finally {
      const seconds = (performance.now() - (firstTokenAt ?? started)) / 1000
      if (tokens > 1 && seconds > 0) answer.speed = (tokens - 1) / seconds
      controller = null
      setStreaming(false)
      view.node.classList.remove('pending')
      view.finish(answer)
      save(state)
      scrollToEnd(false)
    }
  }

  function setStreaming (on) {
    send.disabled = on
    stop.hidden = !on
    onStreaming(on)
    if (!on) prompt.focus()
  }

  function showError (message) {
    errorBox.hidden = message == null
    errorBox.textContent = message ?? ''
  }

  function updateEmpty () {
    emptyNote.hidden = list.querySelector('.message') != null
  }

  function scrollToEnd (always) {
    const nearEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 80
    if (always || nearEnd) list.scrollTop = list.scrollHeight
  }
}

/** A message's bubble; for answers, `append` streams text into it and `finish` adds its footer. */
function renderMessage (message) {
  const node = document.createElement('div')
  node.className = `message ${message.role === 'user' ? 'user' : 'assistant'}`
  const text = document.createElement('span')
  text.className = 'text'
  const content = document.createTextNode(message.content)
  text.append(content)
  node.append(text)
  const view = {
    node,
    append: delta => { content.data += delta },
    finish: m => {
      node.classList.toggle('failed', m.failed === true)
      node.querySelector('.meta')?.remove()
      const parts = []
      if (m.stopped) parts.push('stopped')
      if (m.failed) parts.push(m.content === '' ? 'no answer' : 'interrupted') // the reason: in the error box, and the footer's tooltip
      if (m.finish === 'length') parts.push('cut at the max tokens')
      if (m.usage?.completion_tokens != null) parts.push(`${m.usage.completion_tokens} tokens`)
      if (m.speed != null) parts.push(`${m.speed.toFixed(1)} tokens/s`)
      if (parts.length === 0) return
      const meta = document.createElement('small')
      meta.className = 'meta'
      meta.textContent = parts.join(' · ')
      if (m.error) meta.title = m.error
      node.append(meta)
    }
  }
  if (message.role === 'assistant') view.finish(message)
  return view
}

/** The turns to send again: each question with its answer; questions left unanswered are dropped (chat templates expect user and assistant to alternate). */
function answeredTurns (messages) {
  const turns = []
  for (let i = 0; i + 1 < messages.length; i++) {
    const [question, answer] = [messages[i], messages[i + 1]]
    if (question.role === 'user' && answer.role === 'assistant' && !answer.failed && answer.content !== '') {
      turns.push({ role: 'user', content: question.content }, { role: 'assistant', content: answer.content })
      i++
    }
  }
  return turns
}

function headers (apiKey) {
  const h = { 'Content-Type': 'application/json', Accept: 'text/event-stream' }
  if (apiKey) h.Authorization = `Bearer ${apiKey}`
  return h
}

/** The gateway's error body ({"error": {"message"}}) as a sentence a user can act on. */
async function httpError (response) {
  let message = `${response.status} ${response.statusText}`
  try {
    const body = await response.json()
    if (body?.error?.message) message = body.error.message
  } catch {}
  const retry = response.headers.get('retry-after')
  if (response.status === 503) return new Error(`${sentence(message)}${retry ? ` Try again in ${retry} s.` : ''}`)
  if (response.status === 429) return new Error(`The gateway is busy: ${sentence(message)}${retry ? ` Try again in ${retry} s.` : ''}`)
  if (response.status === 401) return new Error(`This gateway needs an API key (Settings): ${message}`)
  return new Error(message)
}

function sentence (message) {
  const text = message.charAt(0).toUpperCase() + message.slice(1)
  return /[.!?]$/.test(text) ? text : `${text}.`
}

function describe (err) {
  if (err instanceof TypeError) return 'Cannot reach the gateway: is `minga api` still running?'
  return err?.message ?? String(err)
}

function clamp (value, min, max, fallback) {
  return Number.isFinite(value) ? Math.min(max, Math.max(min, value)) : fallback
}

function load () {
  try {
    const stored = JSON.parse(localStorage.getItem(STORE) ?? 'null')
    if (stored != null && Array.isArray(stored.messages)) {
      // (an answer that was still streaming when the page closed is dropped)
      const messages = stored.messages.filter(m => (m?.role === 'user' || m?.role === 'assistant') && typeof m.content === 'string' &&
        !(m.role === 'assistant' && m.content === '' && !m.failed && !m.stopped))
      return { messages, settings: { ...DEFAULT_SETTINGS, ...stored.settings } }
    }
  } catch {}
  return { messages: [], settings: { ...DEFAULT_SETTINGS } }
}

function save (state) {
  try {
    localStorage.setItem(STORE, JSON.stringify(state))
  } catch {} // storage full or disabled: the conversation just isn't kept
}
