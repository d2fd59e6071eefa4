import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.spec.ts', 'test/**/*.spec.ts'],
    setupFiles: ['./vitest.setup.ts'],
    globalSetup: ['./vitest.global-setup.ts'],
    // Real onnxruntime sessions and libp2p nodes: separate processes, generous timeouts.
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000
  }
})
