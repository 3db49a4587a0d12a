/** The bench's page-cache probe (bench/pagecache.ts) on real files in a temp folder. */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir } from '../helpers.js';
import { probePageCache, describePageCache } from '../../bench/pagecache.js';

describe('probePageCache', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());

  it('times two writes of a new file and leaves nothing behind', () => {
    const p = probePageCache(tmp.dir, 8);
    for (const v of [p.firstSecondsPerGiB, p.rewriteSecondsPerGiB]) {
      expect(Number.isFinite(v)).toBe(true);
      expect(v).toBeGreaterThan(0);
    }
    expect(fs.readdirSync(tmp.dir)).toEqual([]);
    expect(describePageCache(p)).toMatch(/^writing a new file \d+\.\d\d s\/GiB, again right after deleting it \d+\.\d\d s\/GiB/);
  });

  it('fails, and writes nothing, where the folder is missing (the bench then prints "not probed")', () => {
    expect(() => probePageCache(path.join(tmp.dir, 'missing'), 8)).toThrow(/ENOENT/);
    expect(fs.readdirSync(tmp.dir)).toEqual([]);
  });
});
