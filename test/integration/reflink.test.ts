/**
 * A branch on a filesystem with reflinks (XFS, as RHEL makes it; btrfs likewise): a first delta's base copies are
 * clones that share the old files' blocks, and the chunks written into them must land in the new generation only.
 * Produced for real: an XFS image with reflink=1, made and loop-mounted by the test (root only, mkfs.xfs from xfsprogs,
 * which scripts/install-deps.sh installs; skipped with a reason elsewhere), copyAround over it, and a seed and two
 * deltas with the CLI as child processes.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, loopMountUnavailable, mountNewImage, unmountImage, writeChunks } from '../helpers.js';
import { cachedSpans, copyAround } from '../../src/util/copy.js';

const MiB = 1 << 20;

function cannotMount(): string | undefined {
  const reason = loopMountUnavailable('mkfs.xfs', 'xfsprogs');
  if (reason) return reason;
  if (spawnSync('fincore', ['--version']).error) return 'fincore not found (util-linux)';
  if (!fs.readFileSync('/proc/filesystems', 'utf8').split('\n').some((l) => l.trim() === 'xfs')) return 'this kernel has no XFS';
  return undefined;
}

/** Bytes of `file` in the page cache (fincore, util-linux). */
function residentBytes(file: string): number {
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return Number(r.stdout.trim());
}

const skipReason = cannotMount();
if (skipReason) console.warn(`reflink.test.ts skipped: ${skipReason}`);

describe.skipIf(skipReason !== undefined)('a branch on XFS with reflinks (a loop-mounted image)', () => {
  let tmp: ReturnType<typeof tempDir>;
  let mnt: string;
  let mounted = false;
  /** Free bytes of the mounted filesystem (XFS counts a buffered write's blocks as it is made). */
  const free = () => {
    const s = fs.statfsSync(mnt);
    return s.bfree * s.bsize;
  };

  beforeAll(() => {
    tmp = tempDir('sf-reflink-');
    mnt = path.join(tmp.dir, 'mnt');
    // XFS needs more than 300 MB; the image is sparse and holds little.
    mountNewImage(path.join(tmp.dir, 'xfs.img'), 400 * MiB, 'mkfs.xfs', ['-q', '-m', 'reflink=1'], mnt);
    mounted = true;
  });

  afterAll(() => {
    if (mounted) unmountImage(mnt);
    tmp?.cleanup();
  });

  it('copyAround clones the file, puts the pages chunks will land in apart, and chunks written there leave the source as it was', async () => {
    const src = path.join(mnt, 'old');
    const dst = path.join(mnt, 'new');
    const old = crypto.randomBytes(9 * MiB + 777);
    fs.writeFileSync(src, old);
    spawnSync('sync');
    // Chunk-like ranges: inside a page, across pages, across a 4 MiB window, touching each other, at the very end.
    const rewritten = [100, 200, 4000, 9000, 9000, 20000, 4 * MiB - 50, 4 * MiB + 70000, old.length - 300, old.length];
    const before = free();
    await copyAround(src, dst, rewritten, false);
    // A clone: the copy took the pages around the rewritten ranges (~100 kB), not the file's 9 MiB.
    expect(before - free()).toBeLessThan(1 * MiB);
    // Those pages are in the page cache, so that writing a chunk never waits for its edge pages to be read from the
    // disk (a clone holds none of its source's cached pages; before, a first delta's patches on XFS went at ~80 MB/s).
    const spans = cachedSpans(rewritten, old.length);
    let spanBytes = 0;
    for (let k = 0; k < spans.length; k += 2) spanBytes += spans[k + 1]! - spans[k]!;
    expect(residentBytes(dst)).toBeGreaterThanOrEqual(spanBytes);
    expect(fs.readFileSync(dst).equals(old)).toBe(true);
    const expected = writeChunks(dst, old, rewritten);
    spawnSync('sync');
    expect(fs.readFileSync(dst).equals(expected)).toBe(true);
    expect(fs.readFileSync(src).equals(old)).toBe(true);
  });

  it('copyAround to a shorter new version: the clone holds the old bytes up to its size once the caller cuts it', async () => {
    const src = path.join(mnt, 'long');
    const dst = path.join(mnt, 'short');
    const old = crypto.randomBytes(6 * MiB + 5);
    fs.writeFileSync(src, old);
    const limit = 2 * MiB + 3;
    await copyAround(src, dst, [limit - 10, limit], false, limit);
    fs.truncateSync(dst, limit);
    expect(fs.readFileSync(dst).equals(old.subarray(0, limit))).toBe(true);
    expect(fs.readFileSync(src).equals(old)).toBe(true);
  });

  it('a seed and two deltas: exact copies, the first delta cloning the changed files, the old generation kept intact', async () => {
    const key = secretFile(tmp.dir);
    const src = path.join(tmp.dir, 'site', 'acme');
    const made = await runCli(['mkcompany', src, '24']);
    expect(made.code, made.stderr).toBe(0);
    const site = await startServe(['--secret', key, '--company', `acme=${src}`]);
    try {
      const dest = path.join(mnt, 'branch', 'acme');
      fs.mkdirSync(path.dirname(dest));
      const pull = async (flags: string[] = []) => {
        const r = await runCli(['pull', site.url, 'acme', dest, '--secret', key, '--json', ...flags], { timeoutMs: 60_000 });
        expect(r.code, r.stderr).toBe(0);
        expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
        return JSON.parse(r.stdout) as { generation: number; spareFiles: number; bytesWritten: number };
      };
      await pull();
      const large = fs.readdirSync(dest).filter((n) => fs.statSync(path.join(dest, n)).isFile() && fs.statSync(path.join(dest, n)).size >= MiB);
      expect(large.length).toBeGreaterThan(1);
      const seeded = new Map(large.map((n) => [n, fs.readFileSync(path.join(dest, n))]));
      const largeBytes = large.reduce((a, n) => a + seeded.get(n)!.length, 0);
      const mutated = await runCli(['mutate', src, '5']);
      expect(mutated.code, mutated.stderr).toBe(0);
      const changed = large.filter((n) => !fs.existsSync(path.join(src, n)) || !fs.readFileSync(path.join(src, n)).equals(seeded.get(n)!));
      expect(changed.length).toBeGreaterThan(0);
      spawnSync('sync');
      const before = free();
      const first = await pull();
      expect(first.spareFiles).toBe(0);
      // Clones, not copies: the changed large files would take their whole size again.
      const changedBytes = changed.reduce((a, n) => a + seeded.get(n)!.length, 0);
      expect(before - free()).toBeLessThan(changedBytes / 2);
      // The replaced versions, kept as the spare generation, are the seed's bytes: nothing written into the clones
      // reached the blocks they shared.
      const spare = path.join(path.dirname(dest), '.acme.snapferry', 'spare');
      for (const n of changed) {
        if (fs.existsSync(path.join(src, n))) expect(fs.readFileSync(path.join(spare, n)).equals(seeded.get(n)!), n).toBe(true);
      }
      // A second day: built on the spares, then every file byte for byte the site's.
      const again = await runCli(['mutate', src, '6']);
      expect(again.code, again.stderr).toBe(0);
      const second = await pull();
      expect(second.spareFiles).toBeGreaterThan(0);
      expect(second.bytesWritten).toBeLessThan(largeBytes / 2);
      expect((await runCli(['verify', dest, '--deep'])).code).toBe(0);
    } finally {
      await site.stop();
    }
  }, 180_000);
});
