// libp2p needs Promise.withResolvers (Node 22+); tests run on Node 20 too.
import './packages/p2p/src/polyfill.ts'
