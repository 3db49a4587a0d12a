import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    // Integration and fault tests start real servers and child processes; two cores are shared.
    fileParallelism: true,
    maxWorkers: 2,
  },
});
