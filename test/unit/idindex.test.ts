import { describe, it, expect } from 'vitest';
import { IdIndex, idWords } from '../../src/manifest/idindex.js';

describe('IdIndex', () => {
  it('keeps the first chunk of each id and finds ids of another array', () => {
    const ids = BigUint64Array.from([5n, 2n ** 63n + 7n, 5n, 0n, 2n ** 32n, 2n ** 63n + 7n, 1n]);
    const idx = new IdIndex(ids, ids.length);
    const firsts = Array.from(ids, (_, g) => idx.add(g));
    expect(firsts).toEqual([-1, -1, 0, -1, -1, 1, -1]);
    expect(idx.size).toBe(5);
    const other = BigUint64Array.from([2n ** 32n, 3n, 1n, 2n ** 63n + 7n]);
    const w = idWords(other);
    expect([0, 1, 2, 3].map((k) => idx.findIn(w, k))).toEqual([4, -1, 6, 1]);
  });

  it('matches a Map on many random ids with collisions in the low bits', () => {
    const n = 50_000;
    const ids = new BigUint64Array(n);
    for (let i = 0; i < n; i++) ids[i] = (BigInt(Math.floor(Math.random() * 2000)) << 40n) | BigInt(i % 3000);
    const idx = new IdIndex(ids, n);
    const seen = new Map<bigint, number>();
    for (let g = 0; g < n; g++) {
      const want = seen.get(ids[g]!) ?? -1;
      if (want < 0) seen.set(ids[g]!, g);
      expect(idx.add(g)).toBe(want);
    }
    expect(idx.size).toBe(seen.size);
  });

  // BUG (slotOf): the slot came from the low bits of products, which depend only on the low bits of the id's two
  // halves: ids agreeing there (which anyone who writes files at the site can make, xxh64 being invertible for short
  // inputs) all fell in one slot, and adding n of them took n^2/2 probes.
  it('spreads ids that agree in the low bits of both halves (probes per lookup stay small)', () => {
    const n = 20_000;
    const ids = new BigUint64Array(n);
    for (let i = 0; i < n; i++) ids[i] = (BigInt(i + 1) << 48n) | (0x1234n << 32n) | (BigInt((i * 7919) & 0xffff) << 16n) | 0x5678n;
    const idx = new IdIndex(ids, n);
    for (let g = 0; g < n; g++) expect(idx.add(g)).toBe(-1);
    expect(idx.probes / n).toBeLessThan(4);
  });

  it('refuses more chunks than its capacity allows', () => {
    const ids = BigUint64Array.from({ length: 40 }, (_, i) => BigInt(i));
    const idx = new IdIndex(ids, 8);
    expect(() => {
      for (let g = 0; g < 40; g++) idx.add(g);
    }).toThrow(/capacity/);
  });
});
