// docker-compose.yml and the Dockerfile, checked without a Docker engine: the compose file parses,
// every service's command is accepted by the CLI's own parser (`minga --check`), the swarm stays on
// the host's 127.0.0.1, and the image installs the project with the README's install step.
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { parse } from 'yaml'
import { runCli } from '@minga/cli'
import { REPO_ROOT } from '@minga/cli/processes'

/** Compose's own interpolation of `${VAR:-default}` and `$$`, with an empty environment. */
function interpolate (value: unknown): unknown {
  if (typeof value === 'string') return value.replace(/\$\$|\$\{(\w+)(?::?-([^}]*))?\}/g, (match, name, fallback) => match === '$$' ? '$' : fallback ?? '')
  if (Array.isArray(value)) return value.map(interpolate)
  if (value != null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolate(v)]))
  return value
}

async function check (args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  let stdout = ''
  let stderr = ''
  const sink = (append: (s: string) => void): Writable => new Writable({ write (chunk, _encoding, done) { append(String(chunk)); done() } })
  const code = await runCli(['node', 'minga', ...args, '--check'], { stdout: sink(s => { stdout += s }), stderr: sink(s => { stderr += s }) })
  return { code, stdout, stderr }
}

const compose = interpolate(parse(readFileSync(join(REPO_ROOT, 'docker-compose.yml'), 'utf8'), { merge: true })) as any
const services: Record<string, any> = compose.services
const flag = (command: string[], name: string): string | undefined => command[command.indexOf(name) + 1]

describe('docker-compose.yml', () => {
  it('has a bootstrap node, three servers with --blocks auto and the gateway, all on one image', () => {
    expect(Object.keys(services).sort()).toEqual(['bootstrap', 'gateway', 'server-1', 'server-2', 'server-3'])
    for (const service of Object.values(services)) {
      expect(service.build).toBe('.')
      expect(service.image).toBe('minga:local')
    }
    expect(services.bootstrap.command[0]).toBe('bootstrap')
    expect(services.gateway.command[0]).toBe('api')
    for (const name of ['server-1', 'server-2', 'server-3']) {
      expect(services[name].command[0]).toBe('serve')
      expect(flag(services[name].command, '--blocks')).toBe('auto')
    }
  })

  it('every service\'s command is accepted by the CLI\'s argument parser', async () => {
    for (const [name, service] of Object.entries(services)) {
      const result = await check(service.command)
      expect({ name, ...result }).toEqual({ name, code: 0, stdout: `minga ${service.command[0]}: flags are valid\n`, stderr: '' })
    }
    // the servers' health check runs `minga status`: its flags too
    for (const name of ['server-1', 'server-2', 'server-3']) {
      const shell: string = services[name].healthcheck.test[1]
      const status = /minga\.mjs (status .*?) \|/.exec(shell)![1].replace('"$MINGA_BOOTSTRAP"', services[name].environment.MINGA_BOOTSTRAP).split(' ')
      expect(await check(status)).toEqual({ code: 0, stdout: 'minga status: flags are valid\n', stderr: '' })
    }
    // and the check is a real one: a bad flag is refused
    const bad = await check(['serve', '--model', '/model', '--blocks', 'most'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('--blocks')
  })

  it('uses the host\'s network on 127.0.0.1 only, and every node joins through the bootstrap node\'s address', () => {
    const bootstrapAddr = `${flag(services.bootstrap.command, '--listen')}/p2p/`
    expect(bootstrapAddr).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/$/)
    for (const [name, service] of Object.entries(services)) {
      expect({ name, network: service.network_mode }).toEqual({ name, network: 'host' })
      expect(service.networks).toBeUndefined()
      if (name !== 'bootstrap') expect(flag(service.command, '--bootstrap')).toMatch(new RegExp(`^${bootstrapAddr}12D3KooW\\w+$`))
    }
    expect(flag(services.gateway.command, '--host')).toBe('127.0.0.1')
  })

  it('mounts the model read-only, keeps prepared spans in a named volume, and checks the gateway\'s /health', () => {
    expect(Object.keys(compose.volumes)).toEqual(['minga-cache'])
    for (const name of ['server-1', 'server-2', 'server-3', 'gateway']) {
      expect(services[name].volumes).toContain('./models/stories260k:/model:ro') // the model that ships in the repository
      expect(flag(services[name].command, '--model')).toBe('/model')
    }
    expect(existsSync(join(REPO_ROOT, 'models/stories260k/config.json'))).toBe(true)
    expect(existsSync(join(REPO_ROOT, 'docker/bootstrap.key'))).toBe(true)
    for (const name of ['server-1', 'server-2', 'server-3']) expect(services[name].volumes).toContain('minga-cache:/cache')
    const port = flag(services.gateway.command, '--port')
    expect(services.gateway.healthcheck.test.join(' ')).toContain(`http://127.0.0.1:${port}/health`)
    // servers start one after another, so that each --blocks auto sees the spans before it
    expect(services['server-2'].depends_on).toEqual({ 'server-1': { condition: 'service_healthy' } })
    expect(services['server-3'].depends_on).toEqual({ 'server-2': { condition: 'service_healthy' } })
  })
})

describe('Dockerfile', () => {
  const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8')
  const instructions = dockerfile.split('\n').filter(line => /^[A-Z]+ /.test(line))
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8')
  const readmeCommands = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap(block => block[1].split('\n').map(line => line.replace(/#.*/, '').trim()))

  it('installs the project with the README\'s install step, on a Node LTS base, with the CLI as entrypoint', () => {
    expect(instructions[0]).toMatch(/^FROM node:lts\b/)
    const installs = instructions.filter(i => i.startsWith('RUN ') && !i.startsWith('RUN mkdir')).map(i => i.slice(4))
    expect(installs).toEqual(['npm run setup'])
    for (const command of installs) expect(readmeCommands).toContain(command)
    const cli = JSON.parse(readFileSync(join(REPO_ROOT, 'packages/cli/package.json'), 'utf8'))
    expect(instructions).toContain(`ENTRYPOINT ["node", "${join('packages/cli', cli.bin.minga)}"]`)
  })
})
