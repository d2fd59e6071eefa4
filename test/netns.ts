// Home networks behind NAT, made of Linux network namespaces for a test: a "public" namespace, and
// for each home a router namespace (MASQUERADE on its uplink) and a home namespace behind it. Only
// private addresses (10.77.x.x) on links the test creates; no namespace has a link to the host, so
// nothing leaves these namespaces. Needs root, `ip` (iproute2) and `iptables`.
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'

/** Every namespace this helper makes starts with this, so leftovers of a crashed run can be found. */
export const NETNS_PREFIX = 'mgnat-'

export interface Home {
  /** The namespace processes of this home run in. */
  ns: string
  /** The home host's own (private, translated) address. */
  addr: string
  /** The public namespace's address on this home's uplink: where this home reaches the bootstrap. */
  publicAddr: string
}

export interface NatLab {
  publicNs: string
  homes: Home[]
  /** ['ip', 'netns', 'exec', ns]: run a command in a namespace. */
  exec (ns: string): string[]
  destroy (): void
}

function run (...args: string[]): string {
  return execFileSync(args[0], args.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Why namespaces cannot be made here (undefined if they can). */
export function natLabUnavailable (): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root'
  for (const tool of [['ip', '-V'], ['iptables', '--version']]) {
    try {
      run(...tool)
    } catch {
      return `${tool[0]} is not installed (Debian: apt-get install iproute2 iptables)`
    }
  }
  return undefined
}

/** Deletes namespaces left by earlier runs (their veths and iptables rules go with them). */
export function removeLeftovers (): void {
  for (const line of run('ip', 'netns', 'list').split('\n')) {
    const name = line.split(' ')[0]
    if (name.startsWith(NETNS_PREFIX)) {
      try { run('ip', 'netns', 'del', name) } catch {}
    }
  }
}

export function createNatLab (homes: number): NatLab {
  const id = randomBytes(3).toString('hex')
  const made: string[] = []
  const ns = (name: string): string => {
    const full = `${NETNS_PREFIX}${id}-${name}`
    run('ip', 'netns', 'add', full)
    made.push(full)
    run('ip', '-n', full, 'link', 'set', 'lo', 'up')
    return full
  }
  const inNs = (name: string, ...args: string[]): string => run('ip', 'netns', 'exec', name, ...args)
  /** A veth pair with one end in each namespace (names ≤ 15 characters). */
  const link = (a: string, aIf: string, aAddr: string, b: string, bIf: string, bAddr: string): void => {
    run('ip', 'link', 'add', aIf, 'netns', a, 'type', 'veth', 'peer', 'name', bIf, 'netns', b)
    run('ip', '-n', a, 'addr', 'add', aAddr, 'dev', aIf)
    run('ip', '-n', b, 'addr', 'add', bAddr, 'dev', bIf)
    run('ip', '-n', a, 'link', 'set', aIf, 'up')
    run('ip', '-n', b, 'link', 'set', bIf, 'up')
  }
  const lab: NatLab = {
    publicNs: '',
    homes: [],
    exec: (name) => ['ip', 'netns', 'exec', name],
    destroy: () => {
      for (const name of made.reverse()) {
        try { run('ip', 'netns', 'del', name) } catch {}
      }
    }
  }
  try {
    lab.publicNs = ns('pub')
    for (let i = 1; i <= homes; i++) {
      const router = ns(`r${i}`)
      const home = ns(`h${i}`)
      // uplink: public 10.77.i.1 <-> router 10.77.i.2; home LAN: router 10.77.(100+i).1 <-> home .2
      link(lab.publicNs, `mg${id}u${i}`, `10.77.${i}.1/24`, router, `mg${id}w${i}`, `10.77.${i}.2/24`)
      link(router, `mg${id}l${i}`, `10.77.${100 + i}.1/24`, home, `mg${id}h${i}`, `10.77.${100 + i}.2/24`)
      run('ip', '-n', router, 'route', 'add', 'default', 'via', `10.77.${i}.1`)
      run('ip', '-n', home, 'route', 'add', 'default', 'via', `10.77.${100 + i}.1`)
      inNs(router, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1')
      // the NAT: everything the home sends out leaves with the router's uplink address; the public
      // side has no route to 10.77.(100+i).0/24, so nobody outside can open a connection to the home
      inNs(router, 'iptables', '-t', 'nat', '-A', 'POSTROUTING', '-o', `mg${id}w${i}`, '-j', 'MASQUERADE')
      lab.homes.push({ ns: home, addr: `10.77.${100 + i}.2`, publicAddr: `10.77.${i}.1` })
    }
  } catch (err) {
    lab.destroy()
    throw err
  }
  return lab
}
