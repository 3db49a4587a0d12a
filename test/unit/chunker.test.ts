import { describe, it, expect, beforeAll } from 'vitest';
import { prng as prngFrom } from '../helpers.js';
import {
  chunkLengths,
  chunkParamsFor,
  CHUNK_LEVELS,
  DEFAULT_CHUNK_PARAMS,
  SEGMENT_SIZE,
  validateChunkParams,
  type ChunkParams,
} from '../../src/chunk/chunker.js';
import { loadHasher, loadNative, loadWasm, idHex, type Hasher } from '../../src/chunk/hash.js';

/** Deterministic pseudo-random bytes (the shared generator, this file's default seed). */
const prng = (n: number, seed = 0x12345678): Buffer => prngFrom(n, seed);


function sum(a: number[]): number {
  return a.reduce((x, y) => x + y, 0);
}

/** Checks every structural invariant of a chunking of `n` bytes. */
function checkInvariants(lens: number[], n: number, p: ChunkParams): void {
  expect(sum(lens)).toBe(n);
  for (let i = 0; i < lens.length; i++) {
    const l = lens[i]!;
    expect(Number.isInteger(l)).toBe(true);
    expect(l).toBeGreaterThan(0);
    expect(l).toBeLessThanOrEqual(p.maxSize);
    // Only the last chunk may be shorter than minSize (and never for a non-final chunk).
    if (i < lens.length - 1) expect(l).toBeGreaterThan(p.minSize);
  }
}

function chunkIds(h: Hasher, data: Uint8Array, lens: number[]): bigint[] {
  const ids: bigint[] = [];
  let o = 0;
  for (const l of lens) {
    ids.push(h.h64(data.subarray(o, o + l)));
    o += l;
  }
  return ids;
}

let hasher: Hasher;
beforeAll(async () => {
  hasher = await loadHasher();
});

describe('constants', () => {
  it('DEFAULT_CHUNK_PARAMS are 4/16/64 KiB and valid', () => {
    expect(DEFAULT_CHUNK_PARAMS).toEqual({ minSize: 4096, avgSize: 16384, maxSize: 65536 });
    expect(validateChunkParams(DEFAULT_CHUNK_PARAMS)).toBe(true);
  });

  it('SEGMENT_SIZE is 4 MiB and a multiple of the default maxSize', () => {
    expect(SEGMENT_SIZE).toBe(4 * 1024 * 1024);
    expect(SEGMENT_SIZE % DEFAULT_CHUNK_PARAMS.maxSize).toBe(0);
  });
});

describe('chunkLengths', () => {
  it('returns no chunks for empty input', () => {
    expect(chunkLengths(new Uint8Array(0))).toEqual([]);
  });

  it('returns one chunk for tiny inputs (up to and including minSize)', () => {
    for (const n of [1, 2, 31, 100, 4095, 4096]) {
      expect(chunkLengths(prng(n, n))).toEqual([n]);
    }
  });

  it('never cuts a chunk of minSize bytes or fewer before the last one', () => {
    const data = prng(200_000, 7);
    const lens = chunkLengths(data);
    checkInvariants(lens, data.length, DEFAULT_CHUNK_PARAMS);
    expect(lens.length).toBeGreaterThan(3);
  });

  it('lengths sum to the input and respect min/max for many sizes', () => {
    for (const n of [4097, 5000, 16384, 65535, 65536, 65537, 100_000, 262_144, 1_000_003]) {
      const data = prng(n, n * 31 + 1);
      checkInvariants(chunkLengths(data), n, DEFAULT_CHUNK_PARAMS);
    }
  });

  it('cuts all-zero data at exactly maxSize (no content boundary ever appears)', () => {
    const n = 5 * 65536 + 1234;
    const lens = chunkLengths(new Uint8Array(n));
    expect(lens).toEqual([65536, 65536, 65536, 65536, 65536, 1234]);
  });

  it('respects custom parameters', () => {
    const p: ChunkParams = { minSize: 512, avgSize: 2048, maxSize: 8192 };
    expect(validateChunkParams(p)).toBe(true);
    const data = prng(300_000, 99);
    const lens = chunkLengths(data, p);
    checkInvariants(lens, data.length, p);
    const avg = data.length / lens.length;
    expect(avg).toBeGreaterThan(1024);
    expect(avg).toBeLessThan(4096);
    // constant data with custom params: cut at maxSize
    expect(chunkLengths(new Uint8Array(20_000).fill(0xaa), p)).toEqual([8192, 8192, 3616]);
  });

  it('is deterministic (same bytes, same cuts; copies and subarrays included)', () => {
    const data = prng(1 << 20, 42);
    const a = chunkLengths(data);
    const b = chunkLengths(new Uint8Array(data));
    const padded = new Uint8Array(data.length + 100);
    padded.set(data, 50);
    const c = chunkLengths(padded.subarray(50, 50 + data.length));
    expect(b).toEqual(a);
    expect(c).toEqual(a);
    expect(chunkLengths(Buffer.from(data))).toEqual(a);
  });

  it('yields a sane average chunk size on random data (between 8 and 32 KiB)', () => {
    const data = prng(4 << 20, 2024);
    const lens = chunkLengths(data);
    checkInvariants(lens, data.length, DEFAULT_CHUNK_PARAMS);
    const avg = data.length / lens.length;
    expect(avg).toBeGreaterThan(8 << 10);
    expect(avg).toBeLessThan(32 << 10);
    // not all forced cuts: random data must produce content-defined (short of max) cuts
    const forced = lens.filter((l) => l === DEFAULT_CHUNK_PARAMS.maxSize).length;
    expect(forced).toBeLessThan(lens.length / 4);
  });

  it('is content-defined: an insert near the start changes only the first few chunks', () => {
    const base = prng(2 << 20, 0xc0ffee);
    const insert = prng(100, 0xbeef);
    const at = 1000;
    const edited = new Uint8Array(base.length + insert.length);
    edited.set(base.subarray(0, at), 0);
    edited.set(insert, at);
    edited.set(base.subarray(at), at + insert.length);

    const la = chunkLengths(base);
    const lb = chunkLengths(edited);
    checkInvariants(la, base.length, DEFAULT_CHUNK_PARAMS);
    checkInvariants(lb, edited.length, DEFAULT_CHUNK_PARAMS);
    const ia = chunkIds(hasher, base, la);
    const ib = chunkIds(hasher, edited, lb);

    const setA = new Set(ia);
    const newChunks = ib.map((id, k) => (setA.has(id) ? -1 : k)).filter((k) => k >= 0);
    // Only a handful of chunks are new, and they are all at the front.
    expect(newChunks.length).toBeGreaterThan(0);
    expect(newChunks.length).toBeLessThanOrEqual(3);
    for (const k of newChunks) expect(k).toBeLessThan(4);
    // Most of the old chunks reappear.
    const setB = new Set(ib);
    const kept = ia.filter((id) => setB.has(id)).length;
    expect(kept / ia.length).toBeGreaterThan(0.95);
    // And after resynchronisation the tails are identical.
    const tail = 10;
    expect(ib.slice(-tail)).toEqual(ia.slice(-tail));
  });

  it('is content-defined for a deletion in the middle too', () => {
    const base = prng(2 << 20, 0xabcdef);
    const cutAt = 1 << 20;
    const edited = new Uint8Array(base.length - 500);
    edited.set(base.subarray(0, cutAt), 0);
    edited.set(base.subarray(cutAt + 500), cutAt);
    const la = chunkLengths(base);
    const lb = chunkLengths(edited);
    const ia = chunkIds(hasher, base, la);
    const ib = chunkIds(hasher, edited, lb);
    const setA = new Set(ia);
    const fresh = ib.filter((id) => !setA.has(id)).length;
    expect(fresh).toBeGreaterThan(0);
    expect(fresh).toBeLessThanOrEqual(3);
    expect(ib.length).toBeGreaterThan(50);
  });

  it('a one-byte change leaves chunks far away untouched', () => {
    const base = prng(1 << 20, 5);
    const edited = new Uint8Array(base);
    edited[500_000] ^= 0xff;
    const ia = chunkIds(hasher, base, chunkLengths(base));
    const ib = chunkIds(hasher, edited, chunkLengths(edited));
    const setA = new Set(ia);
    expect(ib.filter((id) => !setA.has(id)).length).toBeLessThanOrEqual(2);
    expect(ib.length).toBeGreaterThanOrEqual(ia.length - 2);
  });
});

describe('validateChunkParams', () => {
  const ok = (p: Partial<ChunkParams>) => validateChunkParams({ ...DEFAULT_CHUNK_PARAMS, ...p });

  it('accepts sane variants', () => {
    expect(ok({})).toBe(true);
    expect(validateChunkParams({ minSize: 256, avgSize: 512, maxSize: 1024 })).toBe(true);
    expect(validateChunkParams({ minSize: 65536, avgSize: 262144, maxSize: 1 << 20 })).toBe(true);
  });

  it('rejects an average that is not a positive power of two', () => {
    expect(ok({ avgSize: 16000 })).toBe(false);
    expect(ok({ avgSize: 0 })).toBe(false);
    expect(ok({ avgSize: -16384 })).toBe(false);
    expect(ok({ avgSize: 16384.5 })).toBe(false);
    expect(ok({ avgSize: NaN })).toBe(false);
  });

  it('rejects minSize below 256 or not below avgSize', () => {
    expect(ok({ minSize: 255 })).toBe(false);
    expect(ok({ minSize: 0 })).toBe(false);
    expect(ok({ minSize: 16384 })).toBe(false);
    expect(ok({ minSize: 20000 })).toBe(false);
    expect(ok({ minSize: NaN })).toBe(false);
  });

  it('rejects maxSize not above avgSize, above 1 MiB, or not dividing SEGMENT_SIZE', () => {
    expect(ok({ maxSize: 16384 })).toBe(false);
    expect(ok({ maxSize: 8192 })).toBe(false);
    expect(ok({ maxSize: 2 << 20 })).toBe(false);
    expect(ok({ maxSize: 3 * 65536 })).toBe(false);
    expect(ok({ maxSize: 100_000 })).toBe(false);
    expect(ok({ maxSize: NaN })).toBe(false);
  });
});

describe('hash', () => {
  it('loadHasher returns the same instance each time', async () => {
    expect(await loadHasher()).toBe(hasher);
  });

  it('the native and the WebAssembly hashers agree on every length and alignment (sites may run either)', async () => {
    const wasm = await loadWasm();
    const native = await loadNative().catch(() => undefined);
    if (!native) return void console.warn('no prebuilt @node-rs/xxhash binary on this platform: only the WebAssembly hasher is checked');
    expect(native.kind).toBe('native');
    const data = prng(70_000, 11);
    for (const len of [0, 1, 3, 4, 7, 8, 15, 16, 31, 32, 33, 63, 64, 1023, 1024, 4096, 16_384, 65_536]) {
      for (const at of [0, 1, 5]) {
        const view = data.subarray(at, at + len);
        expect(native.h64(view)).toBe(wasm.h64(view));
        expect(native.h32(view)).toBe(wasm.h32(view));
      }
    }
  });

  it('xxh64 known answers (seed 0)', () => {
    expect(hasher.h64(new Uint8Array(0))).toBe(0xef46db3751d8e999n);
    expect(hasher.h64(Buffer.from('a'))).toBe(0xd24ec4f1a98c6e5bn);
    expect(hasher.h64(Buffer.from('abc'))).toBe(0x44bc2cf5ad770999n);
  });

  it('xxh32 known answers (seed 0), as unsigned numbers', () => {
    expect(hasher.h32(new Uint8Array(0))).toBe(0x02cc5d05);
    expect(hasher.h32(Buffer.from('a'))).toBe(0x550d7456);
    expect(hasher.h32(Buffer.from('abc'))).toBe(0x32d153ff);
    for (let i = 0; i < 200; i++) {
      const v = hasher.h32(prng(i + 1, i + 1));
      expect(v).toBeGreaterThanOrEqual(0);
      expect(v).toBeLessThanOrEqual(0xffffffff);
      expect(Number.isInteger(v)).toBe(true);
    }
  });

  it('h64 is unsigned 64-bit and depends only on the bytes (not on the view)', () => {
    const data = prng(10_000, 3);
    const big = new Uint8Array(20_000);
    big.set(data, 777);
    const a = hasher.h64(data);
    expect(hasher.h64(big.subarray(777, 777 + data.length))).toBe(a);
    expect(a).toBeGreaterThanOrEqual(0n);
    expect(a).toBeLessThan(1n << 64n);
    const flipped = new Uint8Array(data);
    flipped[9999] ^= 1;
    expect(hasher.h64(flipped)).not.toBe(a);
  });

  it('idHex pads to 16 lowercase hex digits', () => {
    expect(idHex(0n)).toBe('0000000000000000');
    expect(idHex(1n)).toBe('0000000000000001');
    expect(idHex(0xabcn)).toBe('0000000000000abc');
    expect(idHex(0xef46db3751d8e999n)).toBe('ef46db3751d8e999');
    expect(idHex((1n << 64n) - 1n)).toBe('ffffffffffffffff');
    expect(idHex(hasher.h64(new Uint8Array(0)))).toBe('ef46db3751d8e999');
  });
});

describe('chunkParamsFor (chunk size by company size)', () => {
  const GiB = 2 ** 30;
  const level = (p: ChunkParams) => CHUNK_LEVELS.indexOf(p);

  it('every level is valid, each four times the one before, the first the defaults', () => {
    expect(CHUNK_LEVELS[0]).toBe(DEFAULT_CHUNK_PARAMS);
    CHUNK_LEVELS.forEach((p, k) => {
      expect(validateChunkParams(p)).toBe(true);
      if (k > 0) expect([p.minSize, p.avgSize, p.maxSize]).toEqual([CHUNK_LEVELS[k - 1]!.minSize * 4, CHUNK_LEVELS[k - 1]!.avgSize * 4, CHUNK_LEVELS[k - 1]!.maxSize * 4]);
    });
  });

  it('a first scan chooses by size: 16 KiB up to 2 GiB, 64 KiB up to 8 GiB, 256 KiB beyond (chunk counts stay near a 2 GiB company\'s)', () => {
    const sizes = [0, 1, GiB, 2 * GiB, 2 * GiB + 1, 4 * GiB, 8 * GiB, 8 * GiB + 1, 100 * GiB];
    expect(sizes.map((s) => level(chunkParamsFor(s)))).toEqual([0, 0, 0, 0, 1, 1, 1, 2, 2]);
    // Up to 32 GiB; beyond, counts grow again (1 MiB is the largest chunk a manifest may carry).
    for (const s of sizes.filter((x) => x <= 32 * GiB)) expect(s / chunkParamsFor(s).avgSize).toBeLessThanOrEqual(2 ** 17);
  });

  it('the level in use is kept within twice its bounds, so a company hovering about a bound does not switch back and forth', () => {
    const [l0, l1, l2] = CHUNK_LEVELS as [ChunkParams, ChunkParams, ChunkParams];
    // Grown past 2 GiB on level 0: kept up to 4 GiB, then re-chosen.
    expect(chunkParamsFor(3 * GiB, l0)).toBe(l0);
    expect(chunkParamsFor(4 * GiB, l0)).toBe(l0);
    expect(chunkParamsFor(4 * GiB + 1, l0)).toBe(l1);
    expect(chunkParamsFor(40 * GiB, l0)).toBe(l2);
    // Shrunk below 2 GiB on level 1: kept down to just over 1 GiB.
    expect(chunkParamsFor(1.5 * GiB, l1)).toBe(l1);
    expect(chunkParamsFor(1 * GiB, l1)).toBe(l0);
    expect(chunkParamsFor(16 * GiB, l1)).toBe(l1);
    expect(chunkParamsFor(16 * GiB + 1, l1)).toBe(l2);
    expect(chunkParamsFor(4 * GiB + 1, l2)).toBe(l2);
    expect(chunkParamsFor(4 * GiB, l2)).toBe(l1);
    // Parameters of the caller's own are never replaced.
    const own = { minSize: 1024, avgSize: 8192, maxSize: 32768 };
    expect(chunkParamsFor(50 * GiB, own)).toBe(own);
    // A copy of a level counts as that level.
    expect(chunkParamsFor(3 * GiB, { ...l0 })).toBe(l0);
  });
});
