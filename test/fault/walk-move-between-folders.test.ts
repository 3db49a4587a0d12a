/**
 * A folder (or file) moved during the scan's walk from a folder not listed yet into one listed already (a year's folder
 * moved from current/ into archive/) was in neither listing: the generation lacked every file in it, though they never
 * left the company, and every branch that pulled it deleted them (then fetched them anew). The moment is made exact by
 * doing the move inside the walk's readdir of the later folder. Real files, a real worker pool (the built modules).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir, built } from '../helpers.js';
import type { CompanyScanner as Scanner } from '../../src/scan/scanner.js';
import type { WorkerPool as Pool } from '../../src/work/pool.js';

describe('a move between folders during the walk', () => {
  let tmp: ReturnType<typeof tempDir>;
  let pool: Pool;
  let CompanyScanner: typeof Scanner;
  const realReaddir = fs.promises.readdir;
  beforeAll(async () => {
    tmp = tempDir('sf-walkmove-');
    ({ CompanyScanner } = await built<{ CompanyScanner: typeof Scanner }>('scan/scanner.js'));
    const { WorkerPool } = await built<{ WorkerPool: typeof Pool }>('work/pool.js');
    pool = new WorkerPool(1);
  });
  afterAll(async () => {
    fs.promises.readdir = realReaddir;
    await pool.close();
    tmp.cleanup();
  });

  for (const what of ['folder', 'file'] as const) {
    it(`a ${what} moved into a folder the walk listed already is in the generation`, async () => {
      const root = path.join(tmp.dir, what);
      fs.mkdirSync(path.join(root, 'archive'), { recursive: true });
      fs.mkdirSync(path.join(root, 'current', '2024'), { recursive: true });
      const old = Date.now() / 1000 - 60;
      for (const f of ['archive/2023.dat', 'current/2024/ledger.dat', 'current/2024/journal.dat', 'current/open.dat']) {
        fs.writeFileSync(path.join(root, f), `${f}\n`.repeat(100));
        fs.utimesSync(path.join(root, f), old, old);
      }
      const moved = what === 'folder' ? '2024' : 'open.dat';
      const scanner = new CompanyScanner(fs.realpathSync(root), pool);
      const real = fs.realpathSync(root);
      let done = false;
      fs.promises.readdir = (async (p: fs.PathLike, ...rest: unknown[]) => {
        if (!done && String(p) === path.join(real, 'current')) {
          done = true;
          fs.renameSync(path.join(real, 'current', moved), path.join(real, 'archive', moved));
        }
        return (realReaddir as (...a: unknown[]) => Promise<unknown>)(p, ...rest);
      }) as typeof fs.promises.readdir;
      let g;
      try {
        g = await scanner.scan();
      } finally {
        fs.promises.readdir = realReaddir;
      }
      expect(done).toBe(true);
      const files = g.manifest.entries.filter((e) => e.kind === 'file').map((e) => e.path);
      const want = what === 'folder' ? ['archive/2023.dat', 'archive/2024/journal.dat', 'archive/2024/ledger.dat', 'current/open.dat'] : ['archive/2023.dat', 'archive/open.dat', 'current/2024/journal.dat', 'current/2024/ledger.dat'];
      expect(files).toEqual(want);
    });
  }
});
