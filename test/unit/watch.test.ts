/**
 * The watcher's word on a generation (scan/watch.ts): a pull may skip its scan only while every folder is watched and
 * nothing changed since the last scan began. Real files in a temp folder, a real worker pool, real inotify watches.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { tempDir, waitFor, ROOT } from '../helpers.js';
import type { CompanyScanner as Scanner } from '../../src/scan/scanner.js';
import type { CompanyWatcher as Watcher } from '../../src/scan/watch.js';
import type { WorkerPool as Pool } from '../../src/work/pool.js';

/** From dist/ (npm test builds first): the pool starts its workers from the built worker.js. */
const built = async <T>(rel: string): Promise<T> => (await import(pathToFileURL(path.join(ROOT, 'dist', 'src', rel)).href)) as T;

describe('CompanyWatcher.settledGeneration', () => {
  let tmp: ReturnType<typeof tempDir>;
  let pool: Pool;
  let CompanyScanner: typeof Scanner;
  let CompanyWatcher: typeof Watcher;
  beforeAll(async () => {
    tmp = tempDir();
    ({ CompanyScanner } = await built<{ CompanyScanner: typeof Scanner }>('scan/scanner.js'));
    ({ CompanyWatcher } = await built<{ CompanyWatcher: typeof Watcher }>('scan/watch.js'));
    const { WorkerPool } = await built<{ WorkerPool: typeof Pool }>('work/pool.js');
    pool = new WorkerPool(1);
  });
  afterAll(async () => {
    await pool.close();
    tmp.cleanup();
  });

  it('vouches for the scanned generation only until anything changes, a change in a new folder included', async () => {
    const root = path.join(tmp.dir, 'co');
    fs.mkdirSync(path.join(root, 'a'), { recursive: true });
    fs.writeFileSync(path.join(root, 'a', 'x.xml'), 'one\n');
    const scanner = new CompanyScanner(root, pool);
    // A settle delay longer than a scan of this tree, so that a pull's scan can finish before the watcher's begins.
    const watcher = new CompanyWatcher(scanner, { settleMs: 400 });
    watcher.start();
    try {
      const settled = async () => {
        let g = await watcher.settledGeneration();
        for (let i = 0; i < 100 && !g; i++) {
          await new Promise((r) => setTimeout(r, 50));
          g = await watcher.settledGeneration();
        }
        return g;
      };
      const first = await settled();
      expect(first?.rootHash).toBe(scanner.current?.rootHash);
      // A write made just before the question (its event queued, not yet handled) withdraws the vouching at once.
      fs.appendFileSync(path.join(root, 'a', 'x.xml'), 'two\n');
      expect(await watcher.settledGeneration()).toBeUndefined();
      const second = await settled();
      expect(second?.rootHash).not.toBe(first?.rootHash);
      // A new folder is watched only after a scan found it: a file made in it meanwhile is not missed.
      fs.mkdirSync(path.join(root, 'b'));
      fs.writeFileSync(path.join(root, 'b', 'y.xml'), 'y\n');
      expect(await watcher.settledGeneration()).toBeUndefined();
      const third = await settled();
      expect(third?.manifest.entries.map((e) => e.path)).toContain('b/y.xml');
      fs.writeFileSync(path.join(root, 'b', 'z.xml'), 'z\n');
      expect(await watcher.settledGeneration()).toBeUndefined();
      await waitFor(() => scanner.current?.manifest.entries.some((e) => e.path === 'b/z.xml') === true, 10_000);
      // A pull's own scan finds the next change before the watcher's does: followers must still hear of it.
      expect(await settled()).toBeDefined();
      const heard: string[] = [];
      watcher.on('generation', (g: { rootHash: string }) => heard.push(g.rootHash));
      fs.appendFileSync(path.join(root, 'a', 'x.xml'), 'three\n');
      const byPull = await scanner.scan();
      await waitFor(() => heard.includes(byPull.rootHash), 10_000);
    } finally {
      watcher.stop();
    }
  });
});
