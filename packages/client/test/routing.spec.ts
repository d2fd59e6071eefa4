import { describe, expect, it } from 'vitest'
import { planRoute, type RouteServer } from '../src/routing.ts'

const rtt = (ms: Record<string, number>) => (peer: string) => ms[peer]

describe('planRoute', () => {
  it('chains disjoint spans in order', () => {
    const servers: RouteServer[] = [
      { peerId: 'c', start: 4, end: 5, throughput: 100 },
      { peerId: 'a', start: 0, end: 2, throughput: 100 },
      { peerId: 'b', start: 2, end: 4, throughput: 100 }
    ]
    expect(planRoute(5, servers, rtt({ a: 1, b: 1, c: 1 }))).toEqual([
      { peerId: 'a', start: 0, end: 2 }, { peerId: 'b', start: 2, end: 4 }, { peerId: 'c', start: 4, end: 5 }
    ])
  })

  it('uses part of a server span when spans overlap', () => {
    const servers: RouteServer[] = [
      { peerId: 'a', start: 0, end: 2, throughput: 100 },
      { peerId: 'b', start: 2, end: 4, throughput: 100 },
      { peerId: 'c', start: 3, end: 5, throughput: 100 }
    ]
    const route = planRoute(5, servers, rtt({ a: 1, b: 1, c: 1 }))
    expect(route).toHaveLength(3)
    expect(route[0].start).toBe(0)
    expect(route[route.length - 1].end).toBe(5)
    route.slice(1).forEach((hop, i) => expect(hop.start).toBe(route[i].end))
  })

  it('prefers the faster of two replicas, and fewer hops when round trips dominate', () => {
    const servers: RouteServer[] = [
      { peerId: 'slow', start: 0, end: 5, throughput: 1 },
      { peerId: 'fast', start: 0, end: 5, throughput: 1000 }
    ]
    expect(planRoute(5, servers, rtt({ slow: 1, fast: 1 }))).toEqual([{ peerId: 'fast', start: 0, end: 5 }])
    const split: RouteServer[] = [
      { peerId: 'whole', start: 0, end: 5, throughput: 100 },
      { peerId: 'x', start: 0, end: 3, throughput: 100 },
      { peerId: 'y', start: 3, end: 5, throughput: 100 }
    ]
    expect(planRoute(5, split, rtt({ whole: 20, x: 20, y: 20 }))).toEqual([{ peerId: 'whole', start: 0, end: 5 }])
  })

  it('keeps one server\'s layers in one hop when its round trip measures 0 ms (loopback)', () => {
    const servers: RouteServer[] = [
      { peerId: 'holder', start: 0, end: 2, throughput: 100 },
      { peerId: 'fetcher', start: 2, end: 5, throughput: 100 }
    ]
    expect(planRoute(5, servers, rtt({ holder: 3, fetcher: 0 }))).toEqual([
      { peerId: 'holder', start: 0, end: 2 }, { peerId: 'fetcher', start: 2, end: 5 }
    ])
  })

  it('names the blocks nobody holds', () => {
    const servers: RouteServer[] = [{ peerId: 'a', start: 0, end: 2, throughput: 100 }, { peerId: 'b', start: 4, end: 5, throughput: 100 }]
    expect(() => planRoute(6, servers, rtt({}))).toThrow('no server holds blocks 2–3, 5 of 6')
  })
})
