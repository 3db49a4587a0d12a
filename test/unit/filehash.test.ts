import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { prng } from '../helpers.js';
import { loadHasher, type Hasher } from '../../src/chunk/hash.js';
import { FileHasher } from '../../src/sync/filehash.js';
import { SnapferryError, ErrorCodes } from '../../src/util/errors.js';

let dir: string;
let h: Hasher;
beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snapferry-filehash-'));
  h = await loadHasher();
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The ids a correct reader gives: each chunk of `lens` hashed from `data`. */
function expectedIds(data: Uint8Array, lens: number[]): bigint[] {
  let o = 0;
  return lens.map((l) => h.h64(data.subarray(o, (o += l))));
}

function write(name: string, data: Uint8Array): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, data);
  return p;
}

describe('FileHasher', () => {
  it('hashes every chunk of intact files, pieces smaller and larger than a chunk, few reads in flight', async () => {
    const a = prng(100_000, 71);
    const b = prng(50_000, 72);
    const lensA = [3000, 40_000, 7000, 20_000, 30_000]; // 40,000 and 30,000 are larger than a piece
    const lensB = [25_000, 25_000];
    const fh = new FileHasher(h, { inFlight: 2, pieceBytes: 16_384 });
    const [ra, rb] = await Promise.all([fh.hashFile(write('a', a), lensA), fh.hashFile(write('b', b), lensB)]);
    expect(Array.from(ra.ids)).toEqual(expectedIds(a, lensA));
    expect(ra.readable).toBe(100_000);
    expect(Array.from(rb.ids)).toEqual(expectedIds(b, lensB));
    expect(rb.readable).toBe(50_000);
  });

  it('on a truncated file: chunks past the end get id 0 and readable tells how far it got', async () => {
    const data = prng(10_000, 73);
    const lens = [3000, 2000, 1000, 500, 3500];
    const p = write('short', data.subarray(0, 5500)); // [5000, 6000) only half there
    const r = await new FileHasher(h, { inFlight: 4, pieceBytes: 1000 }).hashFile(p, lens);
    expect(r.readable).toBe(5500);
    const want = expectedIds(data, lens);
    expect(Array.from(r.ids)).toEqual([want[0], want[1], 0n, 0n, 0n]);
  });

  it('one changed byte spoils exactly the chunk that holds it', async () => {
    const data = prng(20_000, 74);
    const lens = [5000, 5000, 5000, 5000];
    const bad = Buffer.from(data);
    bad[12_345] ^= 1;
    const r = await new FileHasher(h).hashFile(write('flip', bad), lens);
    const want = expectedIds(data, lens);
    expect(Array.from(r.ids).map((id, k) => id === want[k])).toEqual([true, true, false, true]);
  });

  it('a missing file, a folder, a link and a FIFO in the place of a file: readable 0, all ids 0, nothing waits', async () => {
    const lens = [1, 2];
    fs.mkdirSync(path.join(dir, 'folder'));
    write('target', prng(3, 75));
    fs.symlinkSync(path.join(dir, 'target'), path.join(dir, 'link'));
    execFileSync('mkfifo', [path.join(dir, 'fifo')]); // with no writer: a blocking open would hang the test
    const fh = new FileHasher(h);
    for (const name of ['missing', 'folder', 'link', 'fifo']) {
      const r = await fh.hashFile(path.join(dir, name), lens);
      expect({ name, readable: r.readable, ids: Array.from(r.ids) }).toEqual({ name, readable: 0, ids: [0n, 0n] });
    }
  });

  it('room() holds a caller back while too many pieces wait, and lets it on as the reads catch up', async () => {
    const data = prng(20_000, 77);
    const lens = new Array<number>(20).fill(1000);
    const fh = new FileHasher(h, { inFlight: 1, pieceBytes: 1000 });
    const done = fh.hashFile(write('many', data), lens);
    expect(fh.queued).toBe(19); // one read started at once
    let waits = 0;
    while (fh.queued >= 5) {
      await fh.room(5);
      waits++;
    }
    expect(fh.queued).toBe(4);
    expect(waits).toBeGreaterThan(0);
    await fh.room(5); // at once: below the limit
    expect(Array.from((await done).ids)).toEqual(expectedIds(data, lens));
    expect(fh.queued).toBe(0);
  });

  it('a file with no chunks resolves at once', async () => {
    expect((await new FileHasher(h).hashFile(path.join(dir, 'none'), [])).readable).toBe(0);
  });

  it('a read that fails rejects that file only', async () => {
    // Produced with /proc/self/mem: a regular file to fstat, whose read at offset 0 (an unmapped address) fails with EIO.
    const fh = new FileHasher(h, { inFlight: 2, pieceBytes: 4096 });
    const ok = write('fine', prng(9000, 76));
    const [bad, good] = await Promise.allSettled([fh.hashFile('/proc/self/mem', [4096, 4096]), fh.hashFile(ok, [9000])]);
    expect(bad.status === 'rejected' && (bad.reason as SnapferryError).code).toBe(ErrorCodes.IO);
    expect(bad.status === 'rejected' && (bad.reason as Error).message).toMatch(/reading \/proc\/self\/mem: EIO/);
    expect(good.status === 'fulfilled' && good.value.readable).toBe(9000);
  });
});
