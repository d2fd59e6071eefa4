// Promise.withResolvers arrived in Node 22; libp2p 3, noise, yamux and kad-dht call it, and minga
// runs on Node 20. Import this module before anything from libp2p (every entry point does so first).

interface Resolvers<T> {
  promise: Promise<T>
  resolve: (value: T | PromiseLike<T>) => void
  reject: (reason?: unknown) => void
}

const P = Promise as unknown as { withResolvers?: <T>() => Resolvers<T> }

if (typeof P.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    enumerable: false,
    value: function withResolvers<T> (this: PromiseConstructor): Resolvers<T> {
      let resolve!: Resolvers<T>['resolve']
      let reject!: Resolvers<T>['reject']
      // `this` keeps subclassing semantics (Promise.withResolvers.call(MyPromise)) like the native one
      const Ctor = (typeof this === 'function' ? this : Promise) as PromiseConstructor
      const promise = new Ctor<T>((res, rej) => { resolve = res; reject = rej })
      return { promise, resolve, reject }
    }
  })
}

export {}
