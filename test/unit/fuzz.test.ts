import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  encodeManifest,
  decodeManifest,
  checkTree,
  comparePaths,
  type Entry,
  type Manifest,
} from '../../src/manifest/manifest.js';
import {
  decodeGet,
  decodeData,
  decodePatchGet,
  decodePatch,
  decodeJson,
  encodeGet,
  encodePatchGet,
  encodeJson,
  encodeDataHeader,
  encodePatchHeader,
  MsgType,
} from '../../src/protocol/messages.js';
import { SnapferryError } from '../../src/util/errors.js';

const RUNS = 400;

/** Runs fn; passes if it returns or throws a SnapferryError, fails on any other throw or on a slow call. */
function returnsOrSnapferryError<T>(fn: () => T): T | undefined {
  const t0 = performance.now();
  try {
    return fn();
  } catch (e) {
    if (!(e instanceof SnapferryError)) {
      throw new Error(`threw ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    }
    expect(typeof e.code).toBe('string');
    expect(e.code.startsWith('SNAPFERRY_E_')).toBe(true);
    return undefined;
  } finally {
    const dt = performance.now() - t0;
    if (dt > 1000) throw new Error(`decoder took ${dt.toFixed(0)} ms`);
  }
}

// ---------- arbitraries ----------

/** Name characters whose toLowerCase is themselves (so generated trees never collide by case). */
const nameChar = fc.constantFrom('a', 'b', 'c', 'z', '0', '9', '-', '_', ' ', '.', '~', '\u00e9', '\u00df', '\u4e2d', '\ud83d\ude00');
const component = fc.string({ unit: nameChar, minLength: 1, maxLength: 6 }).filter((c) => c !== '.' && c !== '..');
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const i64 = fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n });
const chunkLen = fc.oneof(fc.integer({ min: 1, max: 300 }), fc.integer({ min: 1, max: 1 << 20 }));

const leaf = fc.record({
  comps: fc.array(component, { minLength: 1, maxLength: 3 }),
  kind: fc.constantFrom<'file' | 'dir' | 'symlink'>('file', 'dir', 'symlink'),
  mode: fc.integer({ min: 0, max: 0o7777 }),
  mtimeNs: i64,
  chunks: fc.array(fc.tuple(chunkLen, u64), { maxLength: 5 }),
  up: fc.nat(3),
  target: fc.array(component, { minLength: 1, maxLength: 3 }),
});

const params = fc.constantFrom(
  { minSize: 4096, avgSize: 16384, maxSize: 65536 },
  { minSize: 256, avgSize: 1024, maxSize: 4096 },
  { minSize: 65536, avgSize: 262144, maxSize: 1 << 20 },
);

/** Arbitrary valid manifests: safe names, every parent a dir, sorted bytewise, symlinks inside the tree. */
const manifestArb: fc.Arbitrary<Manifest> = fc.tuple(params, fc.array(leaf, { maxLength: 25 })).map(([p, leaves]) => {
  const parents = new Set<string>();
  for (const l of leaves) for (let i = 1; i < l.comps.length; i++) parents.add(l.comps.slice(0, i).join('/'));
  const byPath = new Map<string, Entry>();
  for (const dirPath of parents) byPath.set(dirPath, { path: dirPath, kind: 'dir', mode: 0o755, mtimeNs: 0n, size: 0 });
  for (const l of leaves) {
    const path = l.comps.join('/');
    const kind = parents.has(path) ? 'dir' : l.kind;
    const e: Entry = { path, kind, mode: l.mode, mtimeNs: l.mtimeNs, size: 0 };
    if (kind === 'file') {
      // As the chunker makes them: every chunk within [minSize, maxSize] but the last, which may be shorter.
      e.lens = Uint32Array.from(l.chunks.map((c, i) => (i === l.chunks.length - 1 ? 1 + (c[0] % p.maxSize) : p.minSize + (c[0] % (p.maxSize - p.minSize + 1)))));
      e.ids = BigUint64Array.from(l.chunks.map((c) => c[1]));
      e.size = e.lens.reduce((a, c) => a + c, 0);
    } else if (kind === 'symlink') {
      const depth = l.comps.length - 1;
      // One name after the ups: a target whose middle passed through another generated symlink would (rightly) be refused.
      e.target = '../'.repeat(Math.min(l.up, depth)) + l.target[l.target.length - 1];
    }
    byPath.set(path, e);
  }
  const entries = [...byPath.values()].sort((a, b) => comparePaths(a.path, b.path));
  return { params: { ...p }, entries };
});

type Op = { kind: 'flip' | 'set' | 'insert' | 'delete' | 'truncate'; pos: number; byte: number };
const opArb: fc.Arbitrary<Op> = fc.record({
  kind: fc.constantFrom<Op['kind']>('flip', 'set', 'insert', 'delete', 'truncate'),
  pos: fc.nat(),
  byte: fc.integer({ min: 0, max: 255 }),
});

function mutate(input: Uint8Array, ops: Op[]): Buffer {
  let b = Buffer.from(input);
  for (const op of ops) {
    if (b.length === 0 && op.kind !== 'insert') continue;
    const at = op.pos % (b.length + (op.kind === 'insert' ? 1 : 0) || 1);
    switch (op.kind) {
      case 'flip':
        b[at] ^= 1 << (op.byte & 7);
        break;
      case 'set':
        b[at] = op.byte;
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), Buffer.from([op.byte]), b.subarray(at)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]);
        break;
      case 'truncate':
        b = b.subarray(0, at);
        break;
    }
  }
  return b;
}

function same(a: Manifest, b: Manifest): void {
  expect(b.params).toEqual(a.params);
  expect(b.entries.map((e) => [e.path, e.kind, e.mode, e.mtimeNs, e.size, e.target])).toEqual(
    a.entries.map((e) => [e.path, e.kind, e.mode, e.mtimeNs, e.size, e.target]),
  );
  for (let i = 0; i < a.entries.length; i++) {
    expect(Array.from(b.entries[i]!.lens ?? [])).toEqual(Array.from(a.entries[i]!.lens ?? []));
    expect(Array.from(b.entries[i]!.ids ?? [])).toEqual(Array.from(a.entries[i]!.ids ?? []));
  }
}

// ---------- properties ----------

describe('manifest: encode -> decode is identity for valid manifests', () => {
  it('round trip and canonical re-encoding', () => {
    fc.assert(
      fc.property(manifestArb, (m) => {
        expect(() => checkTree(m)).not.toThrow();
        const enc = encodeManifest(m);
        const d = decodeManifest(enc);
        same(m, d);
        expect(Buffer.compare(encodeManifest(d), enc)).toBe(0);
      }),
      { numRuns: RUNS },
    );
  });
});

describe('decoders on arbitrary bytes return or throw SnapferryError', () => {
  const bytes = fc.uint8Array({ maxLength: 600 });

  it('decodeManifest on random bytes', () => {
    fc.assert(fc.property(bytes, (b) => void returnsOrSnapferryError(() => decodeManifest(b))), { numRuns: RUNS });
  });

  it('decodeManifest on random bytes behind a valid magic and header', () => {
    const head = Buffer.from([...Buffer.from('SFM1'), 0x80, 0x20, 0x80, 0x80, 0x01, 0x80, 0x80, 0x04]);
    fc.assert(
      fc.property(bytes, (b) => {
        const m = returnsOrSnapferryError(() => decodeManifest(Buffer.concat([head, b])));
        if (m) expect(() => checkTree(m)).not.toThrow();
      }),
      { numRuns: RUNS },
    );
  });

  it('decodeGet on random bytes (and canonical when it succeeds)', () => {
    const getLike = fc.oneof(
      bytes,
      fc.tuple(fc.integer({ min: 0, max: 5 }), fc.uint8Array({ maxLength: 48 })).map(([n, rest]) => {
        const b = Buffer.alloc(9 + rest.length);
        b[0] = MsgType.GET;
        b.writeUInt32BE(n, 5);
        b.set(rest, 9);
        return b;
      }),
    );
    fc.assert(
      fc.property(getLike, (b) => {
        const buf = Buffer.from(b);
        const g = returnsOrSnapferryError(() => decodeGet(buf));
        if (g) {
          expect(g.ranges.length).toBeGreaterThan(0);
          for (const [s, e] of g.ranges) expect(e).toBeGreaterThan(s);
          expect(encodeGet(g).subarray(1).equals(buf.subarray(1))).toBe(true);
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('decodeData on random bytes', () => {
    fc.assert(
      fc.property(bytes, (b) => {
        const d = returnsOrSnapferryError(() => decodeData(Buffer.from(b)));
        if (d) expect(d.payload.length).toBe(b.length - 10);
      }),
      { numRuns: RUNS },
    );
  });

  it('decodePatchGet on random bytes (and canonical when it succeeds)', () => {
    fc.assert(
      fc.property(bytes, (b) => {
        const buf = Buffer.from(b);
        const g = returnsOrSnapferryError(() => decodePatchGet(buf));
        if (g) expect(encodePatchGet(g).subarray(1).equals(buf.subarray(1))).toBe(true);
      }),
      { numRuns: RUNS },
    );
  });

  it('decodePatch on random bytes', () => {
    fc.assert(
      fc.property(bytes, (b) => {
        const p = returnsOrSnapferryError(() => decodePatch(Buffer.from(b)));
        if (p) expect(14 + p.bitmaps.reduce((n, bm) => n + 4 + bm.length, 0) + p.payload.length).toBe(b.length);
      }),
      { numRuns: RUNS },
    );
  });

  it('decodeJson on random bytes and random JSON-ish text', () => {
    const jsonish = fc.oneof(
      bytes.map((b) => Buffer.from(b)),
      fc.json().map((s) => Buffer.concat([Buffer.from([MsgType.OPEN]), Buffer.from(s)])),
      fc.string({ unit: fc.constantFrom('{', '}', '[', ']', '"', ':', ',', '1', 'a', '\\', ' ', 'n', 'u') }).map((s) =>
        Buffer.concat([Buffer.from([MsgType.ERROR]), Buffer.from(s)]),
      ),
    );
    fc.assert(
      fc.property(jsonish, (b) => {
        const v = returnsOrSnapferryError(() => decodeJson<unknown>(b));
        if (v !== undefined) {
          expect(typeof v).toBe('object');
          expect(v).not.toBeNull();
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('decodeJson survives pathological nesting within 64 KiB', () => {
    const deep = Buffer.concat([Buffer.from([MsgType.OPEN]), Buffer.from('['.repeat(40_000) + ']'.repeat(20_000))]);
    returnsOrSnapferryError(() => decodeJson(deep));
    const deepObj = Buffer.concat([Buffer.from([MsgType.OPEN]), Buffer.from('{"a":'.repeat(12_000) + '1' + '}'.repeat(12_000))]);
    returnsOrSnapferryError(() => decodeJson(deepObj));
  });
});

describe('decoders on mutated valid encodings return or throw SnapferryError', () => {
  const ops = fc.array(opArb, { minLength: 1, maxLength: 6 });

  it('decodeManifest on mutated generated manifests', () => {
    fc.assert(
      fc.property(manifestArb, ops, (m, o) => {
        const d = returnsOrSnapferryError(() => decodeManifest(mutate(encodeManifest(m), o)));
        if (d) expect(() => checkTree(d)).not.toThrow();
      }),
      { numRuns: RUNS },
    );
  });

  it('decodeManifest on mutated encodings of a fixed rich manifest', () => {
    const fixed: Manifest = {
      params: { minSize: 4096, avgSize: 16384, maxSize: 65536 },
      entries: [
        { path: 'a', kind: 'dir', mode: 0o755, mtimeNs: -5n, size: 0 },
        { path: 'a/f', kind: 'file', mode: 0o644, mtimeNs: 1n << 60n, size: 5200, lens: Uint32Array.from([5000, 200]), ids: BigUint64Array.from([1n, 2n]) },
        { path: 'a/l', kind: 'symlink', mode: 0o777, mtimeNs: 0n, size: 0, target: '../b' },
        { path: 'b', kind: 'file', mode: 0o600, mtimeNs: 7n, size: 70000, lens: Uint32Array.from([65536, 4464]), ids: BigUint64Array.from([3n, 4n]) },
      ],
    };
    const enc = encodeManifest(fixed);
    // the unmutated fixture itself must be valid, or every mutation would only test the refusal of one bad chunk
    expect(() => decodeManifest(enc)).not.toThrow();
    fc.assert(
      fc.property(ops, (o) => {
        const d = returnsOrSnapferryError(() => decodeManifest(mutate(enc, o)));
        if (d) expect(() => checkTree(d)).not.toThrow();
      }),
      { numRuns: RUNS },
    );
  });

  it('message decoders on mutated valid messages', () => {
    const valid = [
      encodeGet({ reqId: 7, ranges: [[0, 3], [10, 20]] }),
      Buffer.concat([encodeDataHeader(7, true, 1000), Buffer.alloc(20, 1)]),
      encodePatchGet({
        reqId: 7,
        blockSize: 4096,
        runs: [
          { chunk: 3, count: 2, sigs: Uint32Array.from([1, 2, 3]) },
          { chunk: 9, count: 1, sigs: Uint32Array.from([4]) },
        ],
      }),
      Buffer.concat([encodePatchHeader(7, true, 4096, [Uint8Array.from([5]), Uint8Array.from([1, 0])]), Buffer.alloc(30, 2)]),
      encodeJson(MsgType.OPEN, { company: 'acme', have: 'x', level: 3 }),
    ];
    const decoders = [decodeGet, decodeData, decodePatchGet, decodePatch, decodeJson] as Array<(b: Buffer) => unknown>;
    fc.assert(
      fc.property(fc.nat(valid.length - 1), ops, (k, o) => {
        const b = mutate(valid[k]!, o);
        // every decoder, not only the matching one, must cope with every input
        for (const dec of decoders) returnsOrSnapferryError(() => dec(b));
      }),
      { numRuns: RUNS },
    );
  });
});
