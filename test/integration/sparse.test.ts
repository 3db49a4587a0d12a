/**
 * Sparse files and preallocated zeros at the site (a database grown by a hole, pages set aside as zeros): the branch
 * holds the same bytes without taking disk blocks for the zeros, at the seed and through a delta's base copy. Found by
 * a helper review: a 6 GiB file holding 42 MB took 6.1 GiB of the branch's disk, 12.3 GB once a delta had run.
 * Produced with real files (truncate, then data written at a few places) and the CLI as child processes.
 */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, tmpfsUnavailable } from '../helpers.js';

const MiB = 1 << 20;

describe('sparse files', () => {
  const tmp = tempDir('sf-sparse-');
  afterAll(() => tmp.cleanup());

  /** Disk bytes a file takes (its allocated blocks). */
  const allocated = (p: string) => fs.statSync(p).blocks * 512;
  /** A site's company holding one sparse ledger.db of `size` apparent bytes, with 1 MiB of random data at each offset. */
  const sparseCompany = (site: string, size: number, dataAt: number[]) => {
    const src = path.join(tmp.dir, site, 'acme');
    fs.mkdirSync(src, { recursive: true });
    const db = path.join(src, 'ledger.db');
    fs.writeFileSync(db, '');
    fs.truncateSync(db, size);
    const fd = fs.openSync(db, 'r+');
    for (const at of dataAt) fs.writeSync(fd, randomBytes(MiB), 0, MiB, at);
    fs.closeSync(fd);
    return { src, db };
  };

  it('arrive with their holes, at the seed and through a delta, with the same bytes', async () => {
    const key = secretFile(tmp.dir);
    // 64 MiB apparent, 3 MiB of data: at the start, in the middle, and the last bytes.
    const { src, db } = sparseCompany('site', 64 * MiB, [0, 30 * MiB + 12345, 63 * MiB]);
    fs.writeFileSync(path.join(src, 'small.txt'), 'not sparse\n');
    const site = await startServe(['--secret', key, '--company', `acme=${src}`]);
    try {
      const dest = path.join(tmp.dir, 'branch', 'acme');
      fs.mkdirSync(path.dirname(dest));
      for (const durable of [true, false]) {
        const seed = await runCli(['pull', site.url, 'acme', dest, '--secret', key, ...(durable ? [] : ['--no-fsync'])]);
        expect(seed.code, seed.stderr).toBe(0);
        expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
        expect(allocated(path.join(dest, 'ledger.db')), `seed (durable ${durable})`).toBeLessThan(16 * MiB);
        // A page rewritten: a first delta copies the file (no spare yet) and writes the page into the copy.
        const w = fs.openSync(db, 'r+');
        fs.writeSync(w, randomBytes(4096), 0, 4096, 8192);
        fs.closeSync(w);
        const delta = await runCli(['pull', site.url, 'acme', dest, '--secret', key, '--no-spare', ...(durable ? [] : ['--no-fsync'])]);
        expect(delta.code, delta.stderr).toBe(0);
        expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
        expect(allocated(path.join(dest, 'ledger.db')), `delta (durable ${durable})`).toBeLessThan(16 * MiB);
        fs.rmSync(path.dirname(dest), { recursive: true });
        fs.rmSync(path.join(tmp.dir, 'branch'), { recursive: true, force: true });
        fs.mkdirSync(path.dirname(dest));
      }
    } finally {
      await site.stop();
    }
  }, 120_000);
  // BUG (src/sync/pull.ts, found by a review of the change above): a file whose spare (the version before last)
  // holds nothing of the new one was started from that spare and still counted as written anew, so its runs of zeros
  // were left as "holes" over the spare's old bytes: 860 kB wrong, exit 0, plain verify intact. Produced: a file
  // replaced whole twice, the second time by data and 900 kB of zeros past the size the branch held.
  it('zeros are written where a file starts from a spare or a copy, never left over its old bytes', async () => {
    const key = secretFile(tmp.dir);
    const src = path.join(tmp.dir, 'site-spare', 'acme');
    fs.mkdirSync(src, { recursive: true });
    const file = path.join(src, 'P.dat');
    fs.writeFileSync(file, randomBytes(MiB));
    const site = await startServe(['--secret', key, '--company', `acme=${src}`]);
    try {
      const dest = path.join(tmp.dir, 'branch-spare', 'acme');
      fs.mkdirSync(path.dirname(dest));
      const pull = async () => {
        const r = await runCli(['pull', site.url, 'acme', dest, '--secret', key]);
        expect(r.code, r.stderr).toBe(0);
        expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
      };
      await pull();
      fs.writeFileSync(file, randomBytes(100 << 10));
      await pull();
      fs.writeFileSync(file, Buffer.concat([randomBytes(100 << 10), Buffer.alloc(900 << 10)]));
      await pull();
      expect((await runCli(['verify', dest, '--deep'])).code).toBe(0);
    } finally {
      await site.stop();
    }
  }, 60_000);

  // Found by a helper review: the space a pull asks to be free counted a sparse file at its full size, so a 6 GiB file
  // holding 42 MB was refused ("disk full") on a disk with a few GiB free. And the seed wrote the last byte of every
  // run of zeros, a block per 64 KiB of them (16 MiB for this file's 254 MiB of zeros). Produced: a 256 MiB file
  // holding 2 MiB, pulled onto a 48 MiB tmpfs (tmpfs keeps holes), seeded and then a delta through a base copy of it.
  const noTmpfs = tmpfsUnavailable();
  it.skipIf(noTmpfs !== undefined)('a sparse file larger than the free space, but not its data, is pulled (seed and delta)', async () => {
    const key = secretFile(tmp.dir);
    const { src, db } = sparseCompany('site-small-disk', 256 * MiB, [0, 200 * MiB]);
    const disk = path.join(tmp.dir, 'small-disk');
    fs.mkdirSync(disk);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=48m,mode=0755', 'tmpfs', disk], { encoding: 'utf8' });
    expect(m.status, m.stderr).toBe(0);
    const site = await startServe(['--secret', key, '--company', `acme=${src}`]);
    try {
      const dest = path.join(disk, 'acme');
      const pull = async () => {
        const r = await runCli(['pull', site.url, 'acme', dest, '--secret', key, '--no-spare']);
        expect(r.code, r.stderr).toBe(0);
        expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
        // 2 MiB of data and a 4 KiB page: a block per 64 KiB run of zeros would be 16 MiB more. (A delta's base copy
        // on tmpfs, which has no direct I/O, is the kernel's copy: it may fill some holes; copy.test.ts checks ext4's.)
        expect(allocated(path.join(dest, 'ledger.db'))).toBeLessThan(12 * MiB);
      };
      await pull();
      const w = fs.openSync(db, 'r+');
      fs.writeSync(w, randomBytes(4096), 0, 4096, 100 * MiB);
      fs.closeSync(w);
      await pull();
      // Found by a helper review: once the branch held a chunk of zeros, a delta copied it locally into every new
      // file's runs of zeros, written out: a new 150 MiB file holding 1 MiB was refused on this disk ("disk full"), and
      // a file grown by zeros had them written. Now both keep their holes.
      const other = path.join(src, 'other.db');
      fs.writeFileSync(other, randomBytes(MiB));
      fs.truncateSync(other, 150 * MiB);
      fs.truncateSync(db, 320 * MiB);
      const r = await runCli(['pull', site.url, 'acme', dest, '--secret', key, '--no-spare', '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
      expect(JSON.parse(r.stdout).chunksReused).toBeGreaterThan(2000);
      expect(allocated(path.join(dest, 'other.db'))).toBeLessThan(4 * MiB);
      expect(allocated(path.join(dest, 'ledger.db'))).toBeLessThan(12 * MiB);
      // A delta killed right after a base copy, before a checkpoint recorded it (SNAPFERRY_FAULT_KILL_AT=base-copied:
      // SIGKILL there): resumed, the file grown by 80 MiB of zeros on this 48 MiB disk keeps them as holes.
      const w2 = fs.openSync(db, 'r+');
      fs.writeSync(w2, randomBytes(4096), 0, 4096, 50 * MiB);
      fs.closeSync(w2);
      fs.truncateSync(db, 400 * MiB);
      const killed = await runCli(['pull', site.url, 'acme', dest, '--secret', key, '--no-spare'], { env: { SNAPFERRY_FAULT_KILL_AT: 'base-copied' } });
      expect(killed.signal, killed.stderr).toBe('SIGKILL');
      await pull();
      expect(allocated(path.join(dest, 'ledger.db'))).toBeLessThan(12 * MiB);
    } finally {
      await site.stop();
      spawnSync('umount', [disk]);
    }
  }, 120_000);
});
