import { describe, expect, it } from 'vitest';
import { lanePacksOf } from '../../src/sync/pull.js';
import type { Layout } from '../../src/manifest/layout.js';

/** From.GET in pull.ts (a const enum: not there at run time). */
const GET = 1;
const KiB = 1024;

/** A layout of files cut into 64 KiB chunks (the last one shorter), every chunk to be fetched unless `skip` says not. */
function layoutOfSizes(sizes: number[], skip: (g: number) => boolean = () => false): { L: Layout; from: Uint8Array } {
  const entry: number[] = [];
  const offset: number[] = [];
  const len: number[] = [];
  const entryStart = new Uint32Array(sizes.length + 1);
  sizes.forEach((size, ei) => {
    entryStart[ei] = entry.length;
    for (let o = 0; o < size; o += 64 * KiB) {
      entry.push(ei);
      offset.push(o);
      len.push(Math.min(64 * KiB, size - o));
    }
  });
  entryStart[sizes.length] = entry.length;
  const total = entry.length;
  const L: Layout = {
    total,
    entryStart,
    entry: Uint32Array.from(entry),
    offset: Float64Array.from(offset),
    len: Uint32Array.from(len),
    id: BigUint64Array.from(entry.map((_, g) => BigInt(g + 1))),
  };
  const from = new Uint8Array(total).map((_, g) => (skip(g) ? 0 : GET));
  return { L, from };
}

describe('lanePacksOf (which worker writes which pack of a seed)', () => {
  // The reference company's shape: a 45 % file, a 25 % one, three more large ones and many small files.
  const MiB = 1024 * KiB;
  const sizes = [48 * MiB, 27 * MiB, 11 * MiB, 9 * MiB, 4 * MiB, ...Array.from({ length: 200 }, (_, i) => 3 * KiB + i * 97)];

  it('asks for every chunk to fetch once, a file in one lane (but where it begins in a pack of another) and in order', () => {
    const { L, from } = layoutOfSizes(sizes, (g) => g % 7 === 3);
    const packs = [...lanePacksOf(from, L, 512 * KiB, 2)];
    const seen = new Uint8Array(L.total);
    const laneOf = new Map<number, number>();
    const lastOf = new Map<number, number>();
    const ledBy = new Map<number, (typeof packs)[number]>();
    for (const p of packs) {
      expect(p.bytes).toBe(p.firsts.reduce((n, g) => n + L.len[g]!, 0));
      expect(p.bytes).toBeLessThanOrEqual(512 * KiB);
      const first = L.entry[p.firsts[0]!]!;
      for (const g of p.firsts) {
        seen[g]!++;
        const ei = L.entry[g]!;
        if (ei === first) {
          expect(laneOf.get(ei) ?? p.lane).toBe(p.lane);
          laneOf.set(ei, p.lane);
        } else {
          // Only where the file begins: in the one pack that another file's chunks lead.
          expect(ledBy.get(ei) ?? p).toBe(p);
          ledBy.set(ei, p);
        }
        // Within a lane, a file's chunks come in order.
        expect(g).toBeGreaterThan(lastOf.get(ei * 4 + p.lane) ?? -1);
        lastOf.set(ei * 4 + p.lane, g);
      }
    }
    for (let g = 0; g < L.total; g++) expect(seen[g]).toBe(g % 7 === 3 ? 0 : 1);
  });

  it('cuts the same packs whatever the number of workers (a site shares the packs it compresses between branches)', () => {
    const { L, from } = layoutOfSizes(sizes, (g) => g % 11 === 5);
    const cut = (lanes: number) => [...lanePacksOf(from, L, 512 * KiB, lanes)].map((p) => p.firsts.join(',')).sort();
    expect(cut(2)).toEqual(cut(1));
    expect(cut(4)).toEqual(cut(1));
  });

  it('keeps both workers writing to the end: the largest file in one lane, the rest in the other, the lanes in turn', () => {
    const { L, from } = layoutOfSizes(sizes);
    const packs = [...lanePacksOf(from, L, 512 * KiB, 2)];
    const bytesOf = [0, 0];
    for (const p of packs) bytesOf[p.lane]! += p.bytes;
    // 48 MiB against 27 + 11 + 9 + 4 MiB and the small files: within a tenth of each other.
    expect(Math.abs(bytesOf[0]! - bytesOf[1]!) / (bytesOf[0]! + bytesOf[1]!)).toBeLessThan(0.1);
    expect(packs.filter((p) => p.firsts.some((g) => L.entry[g] === 0)).every((p) => p.lane === 0)).toBe(true);
    // Taking turns: in every run of ten packs while both lanes have packs left, both lanes are asked.
    const lastOfLane = [0, 1].map((k) => packs.map((p) => p.lane).lastIndexOf(k));
    const bothUntil = Math.min(...lastOfLane);
    for (let i = 0; i + 10 <= bothUntil; i += 10) expect(new Set(packs.slice(i, i + 10).map((p) => p.lane)).size).toBe(2);
    expect(bothUntil).toBeGreaterThan(packs.length * 0.9);
  });

  it('with one worker, asks in plain chunk order', () => {
    const { L, from } = layoutOfSizes(sizes, (g) => g % 5 === 0);
    const order = [...lanePacksOf(from, L, 512 * KiB, 1)].flatMap((p) => {
      expect(p.lane).toBe(0);
      return p.firsts;
    });
    expect(order).toEqual([...Array(L.total).keys()].filter((g) => g % 5 !== 0));
  });
});
