/**
 * Crafted xxh64 collisions in a company (someone who can write files at the site can make them: xxh64 is not
 * collision resistant, and for 16-byte inputs it can be inverted). Two chunks with one id and different lengths must
 * each arrive as they are, never one written in the other's place. Real site and puller (CLI child processes).
 */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, waitFor } from '../helpers.js';

const { xxh64 } = createRequire(import.meta.url)('@node-rs/xxhash') as { xxh64: (b: Buffer, seed: bigint) => bigint };

const M = (1n << 64n) - 1n;
const P1 = 0x9e3779b185ebca87n;
const P2 = 0xc2b2ae3d27d4eb4fn;
const P3 = 0x165667b19e3779f9n;
const P4 = 0x85ebca77c2b2ae63n;
const P5 = 0x27d4eb2f165667c5n;
const rotl = (x: bigint, r: number) => ((x << BigInt(r)) | (x >> BigInt(64 - r))) & M;
const rotr = (x: bigint, r: number) => rotl(x, 64 - r);
/** Inverse of an odd number modulo 2^64 (Newton). */
const inv = (a: bigint) => {
  let x = 1n;
  for (let i = 0; i < 7; i++) x = (x * (2n - a * x)) & M;
  return x;
};
/** Undoes x ^= x >> s. */
const unXorShift = (h: bigint, s: number) => {
  let x = h;
  for (let i = 0; i < 64; i += s) x = h ^ (x >> BigInt(s));
  return x & M;
};

/** 16 bytes whose xxh64 (seed 0) is `target`: the final avalanche and the last lane's round undone. */
function preimage16(target: bigint): Buffer {
  let H = unXorShift(target, 32);
  H = (H * inv(P3)) & M;
  H = unXorShift(H, 29);
  H = (H * inv(P2)) & M;
  H = unXorShift(H, 33);
  const round = (lane: bigint) => (rotl((lane * P2) & M, 31) * P1) & M;
  const lane0 = 0x0123456789abcdefn;
  let h = (P5 + 16n) & M;
  h ^= round(lane0);
  h = (rotl(h, 27) * P1 + P4) & M;
  const k1 = (h ^ rotr(((H - P4) * inv(P1)) & M, 27)) & M;
  const lane1 = (rotr((k1 * inv(P1)) & M, 31) * inv(P2)) & M;
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(lane0, 0);
  b.writeBigUInt64LE(lane1, 8);
  return b;
}

describe('crafted chunk id collisions', () => {
  const tmp = tempDir('sf-collide-');
  afterAll(() => tmp.cleanup());

  // BUG (src/sync/pull.ts plan): identical ids were taken for identical chunks whatever their lengths: the second was
  // written as a copy of the first (its length, unverified), and the pull committed a file of the wrong size.
  it('two files whose single chunks share an id but not a length each arrive exactly', async () => {
    const a = Buffer.from('this is file A, 24 bytes');
    const b = preimage16(xxh64(a, 0n));
    expect(xxh64(b, 0n)).toBe(xxh64(a, 0n));
    const key = secretFile(tmp.dir);
    const src = path.join(tmp.dir, 'site', 'acme');
    fs.mkdirSync(src, { recursive: true });
    fs.writeFileSync(path.join(src, 'a.bin'), a);
    fs.writeFileSync(path.join(src, 'b.bin'), b);
    const site = await startServe(['--secret', key, '--company', `acme=${src}`]);
    try {
      const dest = path.join(tmp.dir, 'branch', 'acme');
      fs.mkdirSync(path.dirname(dest));
      const r = await runCli(['pull', site.url, 'acme', dest, '--secret', key]);
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
      expect((await runCli(['verify', dest, '--deep'])).code).toBe(0);
    } finally {
      await site.stop();
    }
  });

  // BUG (src/store/chunkstore.ts): the site's chunk store found frames by id alone, so the two chunks shared one
  // stored frame, sent for both: the branch rejected the pack (BAD_CHUNK, not retried) and every pull failed. The
  // case above passed only because its 24-byte chunk does not compress (such packs are made on demand).
  it('two colliding chunks, one compressible, served from the site\'s chunk store: each arrives exactly', async () => {
    const a = Buffer.from('ledger line, '.repeat(16));
    const b = preimage16(xxh64(a, 0n));
    const key = secretFile(tmp.dir, 'store.key');
    const src = path.join(tmp.dir, 'site-store', 'acme');
    fs.mkdirSync(src, { recursive: true });
    fs.writeFileSync(path.join(src, 'a.txt'), a);
    fs.writeFileSync(path.join(src, 'b.bin'), b);
    const site = await startServe(['--secret', key, '--company', `acme=${src}`]);
    try {
      // Pulled once the store is filled, so that packs come from it.
      await waitFor(() => /stored acme: generation 1/.test(site.stderr()), 20_000);
      const dest = path.join(tmp.dir, 'branch-store', 'acme');
      fs.mkdirSync(path.dirname(dest));
      const r = await runCli(['pull', site.url, 'acme', dest, '--secret', key]);
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    } finally {
      await site.stop();
    }
  });
});
