/**
 * A company on a filesystem that keeps whole seconds (FAT keeps 2 s, ext4 with 128-byte inodes and HFS+ 1 s): a file
 * rewritten at the same size within the second the site read it keeps its size, mtime, ctime and inode, so neither the
 * check around a read nor the scan cache can see the rewrite, unless the site waits for that second to pass before it
 * trusts a read (counted from the later of mtime and ctime: a copy that puts an old mtime back changes only the ctime).
 * Produced for real: an ext4 image with 128-byte inodes, made and loop-mounted by the test (root only;
 * skipped with a reason elsewhere), and a real worker pool over the built modules.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import crypto from 'node:crypto';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { tempDir, loopMountUnavailable, mountNewImage, unmountImage, built } from '../helpers.js';
import type { CompanyScanner as Scanner, Generation } from '../../src/scan/scanner.js';
import type { WorkerPool as Pool } from '../../src/work/pool.js';

const skipReason = loopMountUnavailable('mkfs.ext4', 'e2fsprogs');
if (skipReason) console.warn(`coarsetimes.test.ts skipped: ${skipReason}`);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The chunk ids of `rel` in a generation, as one string. */
function idsOf(g: Generation, rel: string): string {
  const e = g.manifest.entries.find((x) => x.path === rel);
  expect(e, `${rel} is in the generation`).toBeDefined();
  return Array.from(e!.ids ?? []).join(',');
}

describe.skipIf(skipReason !== undefined)('a company on a filesystem with whole-second timestamps (real ext4, 128-byte inodes)', () => {
  let tmp: ReturnType<typeof tempDir>;
  let mnt: string;
  let mounted = false;
  let pool: Pool;
  let CompanyScanner: typeof Scanner;

  beforeAll(async () => {
    tmp = tempDir();
    mnt = path.join(tmp.dir, 'mnt');
    mountNewImage(path.join(tmp.dir, 'coarse.img'), 32 << 20, 'mkfs.ext4', ['-q', '-F', '-I', '128'], mnt);
    mounted = true;
    ({ CompanyScanner } = await built<{ CompanyScanner: typeof Scanner }>('scan/scanner.js'));
    const { WorkerPool } = await built<{ WorkerPool: typeof Pool }>('work/pool.js');
    pool = new WorkerPool(1);
  });

  afterAll(async () => {
    await pool?.close();
    if (mounted) unmountImage(mnt);
    tmp.cleanup();
  });

  it('a same-size rewrite in the second a scan read the file is found by the next scan', async () => {
    const root = path.join(mnt, 'co');
    fs.mkdirSync(root);
    const ledger = path.join(root, 'Company.900');
    const size = 200_000;
    fs.writeFileSync(ledger, crypto.randomBytes(size));
    const old = fs.lstatSync(ledger, { bigint: true });
    // The filesystem is what the test says it is: timestamps in whole seconds.
    expect(old.mtimeNs % 1_000_000_000n).toBe(0n);
    expect(old.ctimeNs % 1_000_000_000n).toBe(0n);
    const scanner = new CompanyScanner(root, pool);
    // Written and read early in one second, rewritten right after the read: without the wait, all three in that second.
    await sleep(1000 - (Date.now() % 1000) + 10);
    fs.writeFileSync(ledger, crypto.randomBytes(size));
    const g1 = await scanner.scan();
    const first = idsOf(g1, 'Company.900');
    fs.writeFileSync(ledger, crypto.randomBytes(size));
    const g2 = await scanner.scan();
    // What a scanner with no cache reads now is the truth.
    const fresh = await new CompanyScanner(root, pool).scan();
    expect(idsOf(fresh, 'Company.900')).not.toBe(first);
    expect(idsOf(g2, 'Company.900')).toBe(idsOf(fresh, 'Company.900'));
    expect(g2.rootHash).toBe(fresh.rootHash);
  }, 30_000);

  it('a same-size copy that puts the old mtime back (cp -p), twice in one second, is found by the next scan', async () => {
    const root = path.join(mnt, 'co2');
    fs.mkdirSync(root);
    const ledger = path.join(root, 'Company.901');
    const size = 200_000;
    // An mtime of long ago: only the ctime tells when each copy was made.
    const old = new Date('2024-03-04T05:06:07Z');
    const copyIn = () => {
      fs.writeFileSync(ledger, crypto.randomBytes(size));
      fs.utimesSync(ledger, old, old);
    };
    const scanner = new CompanyScanner(root, pool);
    await sleep(1000 - (Date.now() % 1000) + 10);
    copyIn();
    const g1 = await scanner.scan();
    const first = idsOf(g1, 'Company.901');
    copyIn();
    const g2 = await scanner.scan();
    const fresh = await new CompanyScanner(root, pool).scan();
    expect(idsOf(fresh, 'Company.901')).not.toBe(first);
    expect(idsOf(g2, 'Company.901')).toBe(idsOf(fresh, 'Company.901'));
  }, 30_000);
});
