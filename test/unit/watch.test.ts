/**
 * The watcher's word on a generation (scan/watch.ts): a pull may skip its scan only while every folder is watched and
 * nothing changed since the last scan began. Real files in a temp folder, a real worker pool, real inotify watches.
 */
import { describe, it, expect, beforeAll, afterAll, vi } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { tempDir, waitFor, built } from '../helpers.js';
import type { CompanyScanner as Scanner, Generation } from '../../src/scan/scanner.js';
import type { CompanyWatcher as Watcher } from '../../src/scan/watch.js';
import type { WorkerPool as Pool } from '../../src/work/pool.js';
import type * as Layout from '../../src/manifest/layout.js';
import type { Job, ReadPackResult } from '../../src/work/tasks.js';

/** From dist/ (npm test builds first): the pool starts its workers from the built worker.js. */

describe('CompanyWatcher.settledGeneration', () => {
  let tmp: ReturnType<typeof tempDir>;
  let pool: Pool;
  let CompanyScanner: typeof Scanner;
  let CompanyWatcher: typeof Watcher;
  let layout: typeof Layout;
  beforeAll(async () => {
    tmp = tempDir();
    layout = await built<typeof Layout>('manifest/layout.js');
    ({ CompanyScanner } = await built<{ CompanyScanner: typeof Scanner }>('scan/scanner.js'));
    ({ CompanyWatcher } = await built<{ CompanyWatcher: typeof Watcher }>('scan/watch.js'));
    const { WorkerPool } = await built<{ WorkerPool: typeof Pool }>('work/pool.js');
    pool = new WorkerPool(1);
  });
  afterAll(async () => {
    await pool.close();
    tmp.cleanup();
  });

  /** The generation the watcher vouches for, waited for (bounded). */
  const settledOf = async (watcher: Watcher): Promise<Generation | undefined> => {
    let g = await watcher.settledGeneration();
    for (let i = 0; i < 100 && !g; i++) {
      await new Promise((r) => setTimeout(r, 50));
      g = await watcher.settledGeneration();
    }
    return g;
  };

  /** Reads every chunk of a generation as a GET does: 'stale' when a file's bytes no longer match it. */
  const readAll = async (g: Generation): Promise<'ok' | 'stale'> => {
    const l = layout.layoutOf(g.manifest);
    const gs = Uint32Array.from({ length: l.total }, (_, i) => i);
    const r = await pool.run<ReadPackResult>({ kind: 'readPack', ...layout.chunkSources(l, g.absPath, gs), level: 1 });
    return 'stale' in r ? 'stale' : 'ok';
  };

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
      // A change undone within the settle time, which a pull's scan took meanwhile (a lock file made and removed): the
      // tree is again what the watcher last announced, but that pull's branch holds the lock file and must hear of it.
      heard.length = 0;
      fs.writeFileSync(path.join(root, 'ledger.lck'), 'locked by PC-7\n');
      const withLock = await scanner.scan();
      fs.rmSync(path.join(root, 'ledger.lck'));
      expect(withLock.rootHash).not.toBe(byPull.rootHash);
      await waitFor(() => heard.includes(byPull.rootHash), 10_000);
    } finally {
      watcher.stop();
    }
  });

  it('a stream of changes delays a scan by maxDelayMs at most, even after the wall clock steps back an hour', async () => {
    // Produced by stepping Date.now back (the clock an NTP correction or an admin moves) while files keep coming: the
    // delay is measured on the monotonic clock, so the step cannot stretch it to an hour.
    const root = path.join(tmp.dir, 'churn');
    fs.mkdirSync(root);
    fs.writeFileSync(path.join(root, 'first.xml'), '0\n');
    const scanner = new CompanyScanner(root, pool);
    const watcher = new CompanyWatcher(scanner, { settleMs: 300, maxDelayMs: 600 });
    const heard: number[] = [];
    watcher.on('generation', () => heard.push(performance.now()));
    watcher.start();
    const realNow = Date.now.bind(Date);
    try {
      await waitFor(() => heard.length > 0, 10_000);
      heard.length = 0;
      const t0 = performance.now();
      let stepped = false;
      // 25 new files, one each 100 ms (2.5 s in all): each event comes within the settle time of the last.
      for (let i = 0; i < 25; i++) {
        fs.writeFileSync(path.join(root, `v${i}.xml`), `${i}\n`);
        if (i === 0) {
          await new Promise((r) => setTimeout(r, 20)); // the first event is taken at the true time
          vi.spyOn(Date, 'now').mockImplementation(() => realNow() - 3_600_000);
          stepped = true;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(stepped).toBe(true);
      expect(heard.length, 'a generation was announced while the files kept coming').toBeGreaterThan(0);
      expect(heard[0]! - t0).toBeLessThan(2000);
    } finally {
      vi.restoreAllMocks();
      watcher.stop();
    }
  }, 30_000);

  it('watches a folder again once it is removed or moved away and made anew at its path', async () => {
    const root = path.join(tmp.dir, 'remade');
    const d = path.join(root, 'D');
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, 'a.xml'), 'a\n');
    const scanner = new CompanyScanner(root, pool);
    const watcher = new CompanyWatcher(scanner);
    watcher.start();
    try {
      expect(await settledOf(watcher)).toBeDefined();
      // rm -rf D; mkdir D (ext4 hands the new D the old inode number), then mv D D.old; mkdir D.
      const remakes = [() => fs.rmSync(d, { recursive: true }), () => fs.renameSync(d, `${d}.old`)];
      for (const [k, remake] of remakes.entries()) {
        remake();
        fs.mkdirSync(d);
        await new Promise((r) => setTimeout(r, 200));
        expect(await settledOf(watcher)).toBeDefined();
        // The old watch stayed on the removed (or moved) folder: without a new one this write raised no event and the
        // watcher went on vouching for a generation without the file until its ten-minute scan.
        fs.writeFileSync(path.join(d, `new${k}.xml`), 'new\n');
        expect(await watcher.settledGeneration()).toBeUndefined();
        expect((await settledOf(watcher))?.manifest.entries.map((e) => e.path)).toContain(`D/new${k}.xml`);
      }
    } finally {
      watcher.stop();
    }
  });

  // BUG (src/scan/watch.ts folderEvent): a folder moved away was watched afresh at its path, but the folders below it
  // kept their watches, which moved with them (mv A A.old keeps A.old/E's inode): once A/E was made again (cp -a
  // A.old A, a copy put back while the old one is kept), files written in A/E raised no event, and the watcher went on
  // vouching for a generation without them (pulls got it) until its ten-minute scan. Same for the company folder itself.
  it('watches the folders below a moved folder again once they are made anew at their paths', async () => {
    const top = path.join(tmp.dir, 'remade-below');
    const root = path.join(top, 'acme');
    fs.mkdirSync(path.join(root, 'A', 'E'), { recursive: true });
    fs.writeFileSync(path.join(root, 'A', 'E', 'a.xml'), 'a\n');
    const scanner = new CompanyScanner(root, pool);
    const watcher = new CompanyWatcher(scanner);
    watcher.start();
    try {
      expect(await settledOf(watcher)).toBeDefined();
      // A folder of the company moved aside and made again, then the company folder itself.
      const moves: Array<[string, string]> = [
        [path.join(root, 'A'), path.join(root, 'A.old')],
        [root, path.join(top, 'acme.old')],
      ];
      for (const [k, [from, to]] of moves.entries()) {
        fs.renameSync(from, to);
        fs.mkdirSync(path.join(root, 'A', 'E'), { recursive: true });
        await new Promise((r) => setTimeout(r, 200));
        expect(await settledOf(watcher)).toBeDefined();
        fs.writeFileSync(path.join(root, 'A', 'E', `new${k}.xml`), 'new\n');
        expect(await watcher.settledGeneration(), `move ${k}`).toBeUndefined();
        expect((await settledOf(watcher))?.manifest.entries.map((e) => e.path)).toContain(`A/E/new${k}.xml`);
      }
    } finally {
      watcher.stop();
    }
  });

  it('a STALE read withdraws its word, even one that comes while a scan is under way', async (ctx) => {
    if (spawnSync('python3', ['-c', 'import mmap'], { stdio: 'ignore' }).status !== 0) return ctx.skip();
    // On a tmpfs where there is one (/dev/shm): there a page is never written back, so it stays dirty between the two
    // writes below whatever else runs. On a disk, another test's `sync` (every durable pull syncs its filesystem) wrote
    // the page back in between once in CI, and the second write then changed the file's times.
    const shm = fs.existsSync('/dev/shm') && fs.statfsSync('/dev/shm').type === 0x01021994 ? '/dev/shm' : undefined;
    const root = shm ? fs.mkdtempSync(path.join(shm, 'sf-mapped-')) : path.join(tmp.dir, 'mapped');
    if (!shm) fs.mkdirSync(root);
    ctx.onTestFinished(() => void fs.rmSync(root, { recursive: true, force: true }));
    const db = path.join(root, 'db.dat');
    fs.writeFileSync(db, Buffer.alloc(64 << 10));
    // An application holding db.dat mapped shared: its first write to a page updates the file's times, later writes to
    // that (still dirty) page change bytes but no stat at all; only a read of the bytes finds them (STALE).
    const app = spawn('python3', ['-c', 'import mmap,sys\nf=open(sys.argv[1],"r+b")\nm=mmap.mmap(f.fileno(),0)\nfor l in sys.stdin:\n  k=int(l);m[16*k:16*k+4]=b"W%03d"%k;print(k,flush=True)', db], { stdio: ['pipe', 'pipe', 'inherit'] });
    const mapWrite = async (k: number) => {
      app.stdin.write(`${k}\n`);
      await Promise.race([once(app.stdout, 'data'), new Promise((_, no) => setTimeout(() => no(new Error('mapped write timed out')), 10_000))]);
    };
    const statOf = () => {
      const st = fs.statSync(db, { bigint: true });
      return [st.size, st.mtimeNs, st.ctimeNs, st.ino];
    };
    const scanner = new CompanyScanner(root, pool);
    const watcher = new CompanyWatcher(scanner);
    const run = pool.run.bind(pool);
    try {
      await mapWrite(0);
      await new Promise((r) => setTimeout(r, 150));
      watcher.start();
      const first = await settledOf(watcher);
      expect(await readAll(first!)).toBe('ok');
      const before = statOf();
      await mapWrite(1);
      expect(statOf()).toEqual(before);
      // What the site does on a STALE read (server.ts answerGet): the re-OPEN that follows must scan, not be vouched the
      // same generation (which answered STALE again, ~25 times, until the puller gave up).
      expect(await readAll(first!)).toBe('stale');
      scanner.invalidate('db.dat');
      expect(await watcher.settledGeneration()).toBeUndefined();
      const second = await settledOf(watcher);
      expect(second?.rootHash).not.toBe(first?.rootHash);
      expect(await readAll(second!)).toBe('ok');
      // Now the STALE read (and its invalidate) comes while a scan runs, after that scan took db.dat from the cache:
      // it must outlive the scan's new cache, or every later scan kept the stale chunks.
      await mapWrite(2);
      let midScan: string | undefined;
      pool.run = (async (job: Job, ...rest: [boolean?, number?]) => {
        if (job.kind === 'chunkFiles' && midScan === undefined) {
          midScan = 'reading';
          midScan = await readAll(second!);
          if (midScan === 'stale') scanner.invalidate('db.dat');
        }
        return run(job, ...rest);
      }) as typeof pool.run;
      fs.writeFileSync(path.join(root, 'new.xml'), 'new\n');
      await waitFor(() => midScan === 'stale' || midScan === 'ok', 10_000);
      expect(midScan).toBe('stale');
      const third = await settledOf(watcher);
      expect(third?.manifest.entries.map((e) => e.path)).toContain('new.xml');
      expect(await readAll(third!)).toBe('ok');
    } finally {
      pool.run = run;
      watcher.stop();
      app.stdin.end();
      app.kill();
    }
  });
});
