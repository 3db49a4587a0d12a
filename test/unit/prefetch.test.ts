import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { prefetch, type FileRange } from '../../src/util/prefetch.js';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snapferry-prefetch-'));
  fs.writeFileSync(path.join(dir, 'a'), Buffer.alloc(1 << 20, 7));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const openFds = () => fs.readdirSync('/proc/self/fd').length;

describe('prefetch', () => {
  it('takes every range, skips ranges it cannot read (missing file, past the end, empty) and closes what it opened', async () => {
    const before = openFds();
    let taken = 0;
    function* ranges(): Generator<FileRange> {
      for (let i = 0; i < 40; i++) {
        taken++;
        yield { path: path.join(dir, i % 5 === 0 ? 'missing' : 'a'), offset: (i * 100_000) % (2 << 20), length: i % 7 === 0 ? 0 : 200_000 };
      }
    }
    await expect(prefetch(ranges(), () => false, 4)).resolves.toBeUndefined();
    expect(taken).toBe(40);
    expect(openFds()).toBe(before);
  });

  it('stops taking ranges once stop() says so', async () => {
    let taken = 0;
    let done = false;
    function* ranges(): Generator<FileRange> {
      for (let i = 0; i < 10_000; i++) {
        taken++;
        if (taken === 10) done = true;
        yield { path: path.join(dir, 'a'), offset: 0, length: 4096 };
      }
    }
    await prefetch(ranges(), () => done, 3);
    // Each of the 3 lanes may hold one range taken before it looked at stop().
    expect(taken).toBeLessThanOrEqual(10 + 3);
  });
});
