/**
 * The branch's applied.stats record is written in pieces (writeStatsRecord); it must be byte for byte what
 * JSON.stringify of the whole record was, since every later pull parses it. Pure: entries made here, bytes compared.
 */
import { describe, it, expect } from 'vitest';
import type { Entry } from '../../src/manifest/manifest.js';
import { writeStatsRecord } from '../../src/store/state.js';

function written(rootHash: string, entries: Entry[], stampOf: (i: number) => string): { text: string; pieces: number } {
  const parts: Buffer[] = [];
  writeStatsRecord((b) => parts.push(Buffer.from(b)), rootHash, entries, stampOf);
  return { text: Buffer.concat(parts).toString('utf8'), pieces: parts.length };
}

/** The record as the commit built it before: whole arrays, one JSON.stringify. */
function whole(rootHash: string, entries: Entry[], stampOf: (i: number) => string): string {
  return JSON.stringify({
    rootHash,
    stats: entries.map((_, i) => stampOf(i)),
    paths: entries.map((e) => e.path),
    kinds: entries.map((e) => e.kind[0]).join(''),
    sizes: entries.map((e) => e.size),
    mtimes: entries.map((e) => String(e.mtimeNs)),
  });
}

const entry = (path: string, kind: Entry['kind'], size: number | undefined, mtimeNs: bigint): Entry => ({ path, kind, mode: 0o644, size: size as number, mtimeNs });

describe('writeStatsRecord', () => {
  it('writes what JSON.stringify wrote: quotes, backslashes, non-ASCII names, folders without a size, empty stamps', () => {
    const entries = [
      entry('a "quoted" name', 'file', 12, 1_700_000_000_123_456_789n),
      entry('back\\slash', 'dir', undefined, 0n),
      entry('Société/été 🧾', 'file', 0, 1n),
      entry('line\nbreak\ttab', 'symlink', 0, -5n),
      entry('z', 'file', 2 ** 40, 9_999_999_999_999_999_999n),
    ];
    const stamps = ['123:456', '', '9:1700000000000000000', '', '1:2'];
    const got = written('ab'.repeat(32), entries, (i) => stamps[i]!);
    expect(got.text).toBe(whole('ab'.repeat(32), entries, (i) => stamps[i]!));
    expect(JSON.parse(got.text).sizes[1]).toBeNull();
  });

  it('is the same across the pieces it writes for a large company, and for none', () => {
    const entries = Array.from({ length: 20_000 }, (_, i) => entry(`masters/g${i % 97}/file-${i}.xml`, i % 50 === 0 ? 'dir' : 'file', i % 50 === 0 ? undefined : i * 7, BigInt(i) * 1_000_003n));
    const stampOf = (i: number) => (i % 3 === 0 ? '' : `${i * 13}:${BigInt(i) * 999_999_937n}`);
    const got = written('00'.repeat(32), entries, stampOf);
    expect(got.pieces).toBeGreaterThan(10);
    expect(got.text).toBe(whole('00'.repeat(32), entries, stampOf));
    expect(written('ff', [], () => '').text).toBe(whole('ff', [], () => ''));
  });
});
