import { describe, it, expect, beforeAll, afterAll, vi } from 'vitest';
import { expectCode, prng } from '../helpers.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  runJob,
  NO_COMPRESSION,
  blockLayout,
  blockSigsOf,
  type JobContext,
  type ChunkSegmentResult,
  type ReadPackResult,
  type ReadPackJob,
  type WritePackResult,
  type CopyRangesResult,
  type MakePatchResult,
  type ApplyPatchResult,
  type WritePackJob,
  type ApplyPatchJob,
  type StoreChunksJob,
  type StoreChunksResult,
} from '../../src/work/tasks.js';
import { Compressor, Decompressor, scratchSize, compressBound } from '../../src/work/zstd.js';
import { loadHasher } from '../../src/chunk/hash.js';
import { chunkLengths, DEFAULT_CHUNK_PARAMS, type ChunkParams } from '../../src/chunk/chunker.js';
import { SnapferryError, ErrorCodes } from '../../src/util/errors.js';

let ctx: JobContext;
let dir: string;

beforeAll(async () => {
  ctx = { hasher: await loadHasher(), compressor: new Compressor(), decompressor: new Decompressor() };
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snapferry-tasks-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

// ---------- helpers ----------


/** Compressible, XML-ish bytes that still chunk at content-defined points. */
function textish(n: number, seed = 1): Buffer {
  const words = ['<record>', '</record>', '<amount>', '</amount>', 'ACME', 'invoice', '2024-01-', '\n', ' ', 'EUR'];
  const r = prng(n, seed);
  const parts: string[] = [];
  let len = 0;
  for (let i = 0; len < n; i++) {
    const w = words[r[i % n]! % words.length]! + (r[(i * 7) % n]! % 100).toString();
    parts.push(w);
    len += w.length;
  }
  return Buffer.from(parts.join('')).subarray(0, n);
}

let fileCounter = 0;
function writeTmp(data: Uint8Array, name = `f${fileCounter++}`): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, data);
  return p;
}
/** A target path that does not exist yet (the jobs create their target files on first write). */
function targetPath(name = `t${fileCounter++}`): string {
  return path.join(dir, name);
}


function chunksOf(data: Buffer, params: ChunkParams = DEFAULT_CHUNK_PARAMS) {
  const lens = chunkLengths(data, params);
  const offsets: number[] = [];
  const ids: bigint[] = [];
  let o = 0;
  for (const l of lens) {
    offsets.push(o);
    ids.push(ctx.hasher.h64(data.subarray(o, o + l)));
    o += l;
  }
  return { lens, offsets, ids };
}

// ---------- chunkSegment ----------

describe('chunkSegment', () => {
  it('chunks a whole file exactly as chunkLengths does, with xxh64 ids', () => {
    const data = prng(600_000, 11);
    const p = writeTmp(data);
    const r = runJob(ctx, { kind: 'chunkSegment', path: p, offset: 0, length: data.length, params: DEFAULT_CHUNK_PARAMS }) as ChunkSegmentResult;
    const want = chunksOf(data);
    expect(r.lens).toBeInstanceOf(Uint32Array);
    expect(r.ids).toBeInstanceOf(BigUint64Array);
    expect(Array.from(r.lens)).toEqual(want.lens);
    expect(Array.from(r.ids)).toEqual(want.ids);
  });

  it('chunks a segment in the middle of a file from its own first byte', () => {
    const data = prng(300_000, 12);
    const p = writeTmp(data);
    const seg = data.subarray(100_000, 250_000);
    const params = { minSize: 1024, avgSize: 4096, maxSize: 16384 };
    const r = runJob(ctx, { kind: 'chunkSegment', path: p, offset: 100_000, length: 150_000, params }) as ChunkSegmentResult;
    const want = chunksOf(Buffer.from(seg), params);
    expect(Array.from(r.lens)).toEqual(want.lens);
    expect(Array.from(r.ids)).toEqual(want.ids);
    expect(Array.from(r.lens).reduce((a, b) => a + b, 0)).toBe(150_000);
  });

  it('an empty segment gives no chunks', () => {
    const p = writeTmp(Buffer.alloc(0));
    const r = runJob(ctx, { kind: 'chunkSegment', path: p, offset: 0, length: 0, params: DEFAULT_CHUNK_PARAMS }) as ChunkSegmentResult;
    expect(r.lens.length).toBe(0);
    expect(r.ids.length).toBe(0);
  });

  it('a file shorter than the segment is UNSTABLE_FILE', () => {
    const p = writeTmp(prng(1000, 13));
    expectCode(() => runJob(ctx, { kind: 'chunkSegment', path: p, offset: 0, length: 2000, params: DEFAULT_CHUNK_PARAMS }), ErrorCodes.UNSTABLE_FILE);
    expectCode(() => runJob(ctx, { kind: 'chunkSegment', path: p, offset: 500, length: 501, params: DEFAULT_CHUNK_PARAMS }), ErrorCodes.UNSTABLE_FILE);
  });
});

// ---------- readPack / writePack ----------

/** A readPack job for every chunk of a file holding `data`, in order. */
function wholeFilePack(path: string, data: Uint8Array, level: number): ReadPackJob {
  const c = chunksOf(data);
  return {
    kind: 'readPack',
    paths: [path],
    pathIdx: new Uint32Array(c.lens.length),
    offsets: Float64Array.from(c.offsets),
    lens: Uint32Array.from(c.lens),
    ids: BigUint64Array.from(c.ids),
    level,
  };
}

describe('readPack and writePack', () => {
  it('readPack compresses a pack that writePack decompresses, verifies and writes at offsets', () => {
    const a = textish(400_000, 21);
    const b = textish(150_000, 22);
    const pa = writeTmp(a);
    const pb = writeTmp(b);
    const ca = chunksOf(a);
    const cb = chunksOf(b);
    expect(ca.lens.length).toBeGreaterThan(5);
    // A pack: chunks 1..3 of a, all of b, then chunk 0 of a.
    const pick: Array<[number, number]> = [[0, 1], [0, 2], [0, 3], ...cb.lens.map((_, i) => [1, i] as [number, number]), [0, 0]];
    const src = [ca, cb];
    const pathIdx = Uint32Array.from(pick.map(([f]) => f));
    const offsets = Float64Array.from(pick.map(([f, i]) => src[f]!.offsets[i]!));
    const lens = Uint32Array.from(pick.map(([f, i]) => src[f]!.lens[i]!));
    const ids = BigUint64Array.from(pick.map(([f, i]) => src[f]!.ids[i]!));
    const rawLen = Array.from(lens).reduce((x, y) => x + y, 0);

    const r = runJob(ctx, { kind: 'readPack', paths: [pa, pb], pathIdx, offsets, lens, ids, level: 3 }) as ReadPackResult;
    if ('stale' in r) throw new Error(`unexpected stale ${r.stale}`);
    expect(r.compressed).toBe(true);
    expect(r.rawLen).toBe(rawLen);
    expect(r.payload.length).toBeLessThan(rawLen / 2);

    // Write a's chunks back into a fresh a-sized file and b's into another; a's chunk 1 also goes to a second place.
    // The pack arrives inside a larger frame (payloadOffset), as the puller passes it.
    const ta = targetPath();
    const tb = targetPath();
    const tItem: number[] = [];
    const tPath: number[] = [];
    const tOffset: number[] = [];
    pick.forEach(([f, i], k) => {
      tItem.push(k);
      tPath.push(f);
      tOffset.push(src[f]!.offsets[i]!);
    });
    tItem.push(0);
    tPath.push(1);
    tOffset.push(b.length); // an extra copy of a's chunk 1 appended after b
    const frame = Buffer.concat([Buffer.from('0123456789'), r.payload]);
    const job: WritePackJob = {
      kind: 'writePack',
      payload: frame,
      payloadOffset: 10,
      compressed: true,
      rawLen: r.rawLen,
      lens,
      ids,
      paths: [ta, tb],
      tItem: Uint32Array.from(tItem),
      tPath: Uint32Array.from(tPath),
      tOffset: Float64Array.from(tOffset),
    };
    const w = runJob(ctx, job) as WritePackResult;
    expect(w.written).toBe(rawLen + ca.lens[1]!);

    const gotA = fs.readFileSync(ta);
    const want = a.subarray(0, ca.offsets[3]! + ca.lens[3]!);
    expect(gotA.equals(want)).toBe(true);
    // created owner-only
    expect(fs.statSync(ta).mode & 0o777).toBe(0o600);
    const gotB = fs.readFileSync(tb);
    expect(gotB.subarray(0, b.length).equals(b)).toBe(true);
    expect(gotB.subarray(b.length).equals(a.subarray(ca.offsets[1]!, ca.offsets[1]! + ca.lens[1]!))).toBe(true);
  });

  it('readPack sends incompressible data or level NO_COMPRESSION uncompressed, and writePack accepts it', () => {
    const data = prng(100_000, 23);
    const c = chunksOf(data);
    const job = wholeFilePack(writeTmp(data), data, 3);
    const r = runJob(ctx, job) as ReadPackResult;
    if ('stale' in r) throw new Error('stale');
    expect(r.compressed).toBe(false);
    expect(r.payload.equals(data)).toBe(true);

    const t = textish(50_000, 24);
    const r2 = runJob(ctx, wholeFilePack(writeTmp(t), t, NO_COMPRESSION)) as ReadPackResult;
    if ('stale' in r2) throw new Error('stale');
    expect(r2.compressed).toBe(false);
    expect(r2.payload.equals(t)).toBe(true);

    const target = targetPath();
    const w = runJob(ctx, {
      kind: 'writePack',
      payload: r.payload,
      compressed: false,
      rawLen: r.rawLen,
      lens: job.lens,
      ids: job.ids,
      paths: [target],
      tItem: Uint32Array.from(c.lens.map((_, i) => i)),
      tPath: new Uint32Array(c.lens.length),
      tOffset: Float64Array.from(c.offsets),
    }) as WritePackResult;
    expect(w.written).toBe(data.length);
    expect(fs.readFileSync(target).equals(data)).toBe(true);
  });

  it('direct writes: long runs at unaligned offsets, written out of order by three jobs, make the file exactly', () => {
    // Three packs of one 3 MiB file, each a run that starts and ends inside a page (content-defined chunk edges): the
    // pages each run covers whole go to the disk directly, the pages two runs share through the page cache.
    const data = prng(3 << 20, 41);
    const c = chunksOf(data);
    const cut = [0, Math.floor(c.lens.length / 3), Math.floor((2 * c.lens.length) / 3), c.lens.length];
    expect(c.offsets[cut[1]!]! % 4096).not.toBe(0);
    const target = targetPath();
    const packJob = (from: number, to: number, direct: number): WritePackJob => {
      const idx = Array.from({ length: to - from }, (_, k) => from + k);
      return {
        kind: 'writePack',
        payload: data.subarray(c.offsets[from]!, c.offsets[to - 1]! + c.lens[to - 1]!),
        compressed: false,
        rawLen: idx.reduce((n, i) => n + c.lens[i]!, 0),
        lens: Uint32Array.from(idx, (i) => c.lens[i]!),
        ids: BigUint64Array.from(idx, (i) => c.ids[i]!),
        paths: [target],
        tItem: Uint32Array.from(idx, (_, k) => k),
        tPath: new Uint32Array(idx.length),
        tOffset: Float64Array.from(idx, (i) => c.offsets[i]!),
        holes: { from: Float64Array.of(direct ? 0 : -1), size: Float64Array.of(data.length) },
        direct: true,
      };
    };
    // The middle first (a hole before it), then the end, then the start through the page cache only.
    for (const [k, direct] of [[1, 1], [2, 1], [0, 0]] as const) {
      const w = runJob(ctx, packJob(cut[k]!, cut[k + 1]!, direct)) as WritePackResult;
      expect(w.written).toBe(c.offsets[cut[k + 1]! - 1]! + c.lens[cut[k + 1]! - 1]! - c.offsets[cut[k]!]!);
    }
    expect(fs.readFileSync(target).equals(data)).toBe(true);
  });

  it('writePack finishes the files it completes through their descriptors: final mode, mtime and their inode:ctime', () => {
    const data = textish(100_000, 31);
    const p = writeTmp(data);
    const job = wholeFilePack(p, data, 1);
    const r = runJob(ctx, job) as ReadPackResult;
    if ('stale' in r) throw new Error('stale');
    const c = chunksOf(data);
    const done = targetPath();
    const open = targetPath();
    const mtime = 1_700_000_000.123456;
    const w = runJob(ctx, {
      kind: 'writePack',
      payload: r.payload,
      compressed: r.compressed,
      rawLen: r.rawLen,
      lens: job.lens,
      ids: job.ids,
      paths: [done, open],
      tItem: Uint32Array.from([...c.lens.map((_, i) => i), 0]),
      tPath: Uint32Array.from([...c.lens.map(() => 0), 1]),
      tOffset: Float64Array.from([...c.offsets, 0]),
      finishModes: Int32Array.from([0o444, -1]),
      finishMtimes: Float64Array.from([mtime, 0]),
    }) as WritePackResult;
    const st = fs.lstatSync(done, { bigint: true });
    expect(fs.readFileSync(done).equals(data)).toBe(true);
    expect([Number(st.mode & 0o777n), Number(st.mtimeNs / 1000n)]).toEqual([0o444, Math.round(mtime * 1e6)]);
    expect(w.finished).toEqual([`${st.ino}:${st.ctimeNs}`, '']);
    // The file not completed here keeps the mode it was created with.
    expect(fs.statSync(open).mode & 0o777).toBe(0o600);
  });

  it('readPack returns {stale} when the file changed after its ids were computed', () => {
    const data = textish(200_000, 25);
    const p = writeTmp(data);
    const job = wholeFilePack(p, data, 1);
    expect('stale' in (runJob(ctx, job) as ReadPackResult)).toBe(false);
    // same size, one byte changed in the last chunk
    const fd = fs.openSync(p, 'r+');
    fs.writeSync(fd, Buffer.from([data[data.length - 10]! ^ 0xff]), 0, 1, data.length - 10);
    fs.closeSync(fd);
    expect(runJob(ctx, job)).toEqual({ stale: p });
    // truncated
    fs.truncateSync(p, 100_000);
    expect(runJob(ctx, job)).toEqual({ stale: p });
    // gone
    fs.unlinkSync(p);
    expect(runJob(ctx, job)).toEqual({ stale: p });
  });

  describe('writePack refusals', () => {
    const setup = () => {
      const data = textish(120_000, 26);
      const c = chunksOf(data);
      const lens = Uint32Array.from(c.lens);
      const ids = BigUint64Array.from(c.ids);
      const payload = ctx.compressor.compress(data, 3)!;
      expect(payload).toBeDefined();
      const target = targetPath();
      const job: WritePackJob = {
        kind: 'writePack',
        payload,
        compressed: true,
        rawLen: data.length,
        lens,
        ids,
        paths: [target],
        tItem: Uint32Array.from(c.lens.map((_, i) => i)),
        tPath: new Uint32Array(c.lens.length),
        tOffset: Float64Array.from(c.offsets),
      };
      return { data, job, target };
    };

    it('accepts the untouched job (control)', () => {
      const { data, job, target } = setup();
      expect((runJob(ctx, job) as WritePackResult).written).toBe(data.length);
      expect(fs.readFileSync(target).equals(data)).toBe(true);
    });

    it('a wrong id is BAD_CHUNK and nothing is written', () => {
      const { job, target } = setup();
      const ids = BigUint64Array.from(job.ids);
      ids[ids.length - 1] ^= 1n;
      expectCode(() => runJob(ctx, { ...job, ids }), ErrorCodes.BAD_CHUNK);
      expect(fs.existsSync(target)).toBe(false);
    });

    it('rawLen not matching the chunk lengths is BAD_CHUNK', () => {
      const { job } = setup();
      expectCode(() => runJob(ctx, { ...job, rawLen: job.rawLen - 1 }), ErrorCodes.BAD_CHUNK);
      const lens = Uint32Array.from(job.lens);
      lens[0] += 1;
      expectCode(() => runJob(ctx, { ...job, lens }), ErrorCodes.BAD_CHUNK);
    });

    it('an uncompressed payload of the wrong length is BAD_CHUNK', () => {
      const { data, job } = setup();
      expectCode(() => runJob(ctx, { ...job, compressed: false, payload: data.subarray(1) }), ErrorCodes.BAD_CHUNK);
    });

    it('a corrupt compressed payload is BAD_CHUNK', () => {
      const { job } = setup();
      const bad = Buffer.from(job.payload);
      bad[0] ^= 0xff; // zstd magic
      expectCode(() => runJob(ctx, { ...job, payload: bad }), ErrorCodes.BAD_CHUNK);
      expectCode(() => runJob(ctx, { ...job, payload: Buffer.from(job.payload).subarray(0, job.payload.length - 3) }), ErrorCodes.BAD_CHUNK);
    });

    it('a payload decompressing to less than rawLen is BAD_CHUNK', () => {
      const { data, job } = setup();
      const smaller = ctx.compressor.compress(data.subarray(0, data.length - 100), 3)!;
      expectCode(() => runJob(ctx, { ...job, payload: smaller }), ErrorCodes.BAD_CHUNK);
    });
  });

  it('a zstd bomb (64 MiB of zeros declared as 1000 bytes) is BAD_CHUNK without allocating the big size', () => {
    const bomb = ctx.compressor.compress(Buffer.alloc(64 << 20), 1)!;
    expect(bomb.length).toBeLessThan(64 << 10);
    const zeros = Buffer.alloc(1000);
    const target = targetPath();
    const job: WritePackJob = {
      kind: 'writePack',
      payload: bomb,
      compressed: true,
      rawLen: 1000,
      lens: Uint32Array.from([1000]),
      ids: BigUint64Array.from([ctx.hasher.h64(zeros)]),
      paths: [target],
      tItem: Uint32Array.from([0]),
      tPath: Uint32Array.from([0]),
      tOffset: Float64Array.from([0]),
    };
    // a fresh decompressor: its reusable scratch buffer starts empty, so any allocation is seen below
    const bctx: JobContext = { ...ctx, decompressor: new Decompressor() };
    const sizes: number[] = [];
    const spies = [vi.spyOn(Buffer, 'allocUnsafe'), vi.spyOn(Buffer, 'alloc'), vi.spyOn(Buffer, 'allocUnsafeSlow')];
    const before = process.memoryUsage().arrayBuffers;
    try {
      expectCode(() => runJob(bctx, job), ErrorCodes.BAD_CHUNK);
    } finally {
      const grown = process.memoryUsage().arrayBuffers - before;
      for (const s of spies) {
        for (const call of s.mock.calls) sizes.push(Number(call[0]));
        s.mockRestore();
      }
      expect(grown).toBeLessThan(16 << 20);
    }
    // at most the declared size (or the decompressor's 1 MiB minimum scratch), never anything near 64 MiB
    expect(Math.max(0, ...sizes)).toBeLessThanOrEqual(1 << 20);
    expect(fs.existsSync(target)).toBe(false);
  });
});

describe("a thread's reused buffers", () => {
  it('are not replaced as jobs creep past the largest so far (the replaced ones lingered until a major collection)', () => {
    // Produced as a store fill does: jobs of about 2 MiB that each end a little further into the file.
    const data = textish(3 << 20, 41);
    const p = writeTmp(data);
    const whole = wholeFilePack(p, data, 1);
    const own: JobContext = { hasher: ctx.hasher, compressor: new Compressor(), decompressor: new Decompressor() };
    const segDir = fs.mkdtempSync(path.join(dir, 'seg-'));
    const seen = { read: new Set<unknown>(), store: new Set<unknown>() };
    let jobs = 0;
    for (let end = 1, bytes = 0; end <= whole.lens.length; end++) {
      bytes += whole.lens[end - 1]!;
      if (bytes < (3 << 20) / 2) continue;
      const pick = <T extends Uint32Array | Float64Array | BigUint64Array>(a: T): T => a.slice(0, end) as T;
      const job = { kind: 'storeChunks' as const, paths: [p], pathIdx: pick(whole.pathIdx), offsets: pick(whole.offsets), lens: pick(whole.lens), ids: pick(whole.ids), level: 1, segDir };
      const r = runJob(own, job);
      expect('stale' in (r as object)).toBe(false);
      seen.read.add(own.readBuffer);
      seen.store.add(own.storeBuffer);
      jobs++;
    }
    expect(jobs).toBeGreaterThan(10);
    // One buffer each, made at the first job: 1.5 MiB and more rounded up to 2 MiB, then 4 MiB, not one per new size.
    expect(seen.read.size).toBeLessThanOrEqual(2);
    expect(seen.store.size).toBeLessThanOrEqual(2);
    expect(scratchSize(1)).toBe(1 << 20);
    expect(scratchSize((2 << 20) + 1)).toBe(4 << 20);
    expect(scratchSize(4 << 20)).toBe(4 << 20);
    for (const seg of own.segments?.values() ?? []) fs.closeSync(seg.fd);
  });
});

describe('storeChunks and readPack against what they meet', () => {
  // BUG (src/work/tasks.ts segmentOf): a thread kept one open segment, in one folder; a site storing two companies'
  // chunks in turn (one --cache-dir) started a new segment at every switch: a file, and a reader's descriptor, more
  // per generation, with no compaction in sight.
  it('a thread storing two folders\' chunks in turn appends to one segment in each', () => {
    const data = textish(300_000, 51);
    const p = writeTmp(data);
    const job = wholeFilePack(p, data, 1);
    const own: JobContext = { hasher: ctx.hasher, compressor: new Compressor(), decompressor: new Decompressor() };
    const dirs = [fs.mkdtempSync(path.join(dir, 'segA-')), fs.mkdtempSync(path.join(dir, 'segB-'))];
    try {
      for (let i = 0; i < 6; i++) {
        const r = runJob(own, { ...job, kind: 'storeChunks', lens: job.lens.slice(), ids: job.ids.slice(), segDir: dirs[i % 2]! });
        expect('stale' in (r as object)).toBe(false);
      }
      for (const d of dirs) expect(fs.readdirSync(d).filter((n) => n.endsWith('.seg'))).toHaveLength(1);
    } finally {
      for (const seg of own.segments?.values() ?? []) fs.closeSync(seg.fd);
    }
  });

  // BUG (src/work/tasks.ts storeChunks): one file changed since the scan made the whole job answer STALE, so a store
  // fill left out up to 2 MiB of other files' chunks with it, at every generation while that file kept changing (its
  // held-back version's chunks are asked for again each time), and each pull compressed them again. Produced here
  // with three files in one job: one rewritten in its middle after the scan, one deleted, one untouched.
  it('storeChunks stores the chunks that still match, and leaves out only those of files changed since the scan', () => {
    const datas = [textish(200_000, 61), textish(200_000, 62), textish(200_000, 63)];
    const ps = datas.map((d) => writeTmp(d));
    const packs = ps.map((p, i) => wholeFilePack(p, datas[i]!, 1));
    const job: StoreChunksJob = {
      kind: 'storeChunks',
      paths: ps,
      pathIdx: Uint32Array.from(packs.flatMap((pk, i) => Array.from(pk.pathIdx, () => i))),
      offsets: Float64Array.from(packs.flatMap((pk) => Array.from(pk.offsets))),
      lens: Uint32Array.from(packs.flatMap((pk) => Array.from(pk.lens))),
      ids: BigUint64Array.from(packs.flatMap((pk) => Array.from(pk.ids))),
      level: 1,
      segDir: fs.mkdtempSync(path.join(dir, 'segS-')),
    };
    const changedAt = 100_000;
    const changed = Buffer.from(datas[0]!);
    changed.fill(0x41, changedAt, changedAt + 10);
    fs.writeFileSync(ps[0]!, changed);
    fs.rmSync(ps[2]!);
    // readPack still answers STALE: a branch must never get a chunk of a file that changed.
    expect(runJob(ctx, { ...job, kind: 'readPack', lens: job.lens.slice(), ids: job.ids.slice() })).toEqual({ stale: ps[0] });
    const own: JobContext = { hasher: ctx.hasher, compressor: new Compressor(), decompressor: new Decompressor() };
    try {
      const r = runJob(own, { ...job, lens: job.lens.slice(), ids: job.ids.slice() }) as StoreChunksResult;
      const seg = fs.readFileSync(path.join(job.segDir, r.segment));
      let raw = 0;
      const left: number[] = [];
      for (let i = 0; i < job.lens.length; i++) {
        const file = job.pathIdx[i]!;
        const start = job.offsets[i]!;
        const hit = file === 2 || (file === 0 && start < changedAt + 10 && start + job.lens[i]! > changedAt);
        if (hit) {
          left.push(i);
          expect(r.clens[i]).toBe(0);
        } else {
          expect(r.clens[i]).toBeGreaterThan(0);
          const frame = seg.subarray(r.offsets[i]!, r.offsets[i]! + r.clens[i]!);
          expect(own.decompressor.decompress(frame, job.lens[i]!).equals(datas[file]!.subarray(start, start + job.lens[i]!))).toBe(true);
          raw += job.lens[i]!;
        }
      }
      // Only the chunk holding the rewritten bytes and the deleted file's chunks are left out.
      expect(left.filter((i) => job.pathIdx[i] === 0)).toHaveLength(1);
      expect(left.length).toBe(1 + packs[2]!.lens.length);
      expect(raw).toBe(400_000 - job.lens[left[0]!]!);
      // A job whose every file changed stores nothing and names no segment.
      const none = runJob(own, { ...job, paths: [ps[2]!, ps[2]!, ps[2]!], lens: job.lens.slice(), ids: job.ids.slice() }) as StoreChunksResult;
      expect(none.segment).toBe('');
      expect(Array.from(none.clens).every((c) => c === 0)).toBe(true);
    } finally {
      for (const seg of own.segments?.values() ?? []) fs.closeSync(seg.fd);
    }
  });

  // BUG (src/work/tasks.ts readChunks): every failure to open a listed file answered STALE ("changed at the site"),
  // out of descriptors (EMFILE) included: branches were sent after changes that never happened. Produced here with a
  // name too long to open (ENAMETOOLONG), which like EMFILE says nothing of the file.
  it('a file gone is STALE; an open that fails for another reason is an error, not STALE', () => {
    const data = textish(50_000, 52);
    const p = writeTmp(data);
    const job = wholeFilePack(p, data, 1);
    const gone = path.join(dir, 'gone.bin');
    expect(runJob(ctx, { ...job, paths: [gone] })).toEqual({ stale: gone });
    const tooLong = path.join(dir, 'x'.repeat(300));
    expect(() => runJob(ctx, { ...job, paths: [tooLong] })).toThrow(/ENAMETOOLONG|too long/);
  });
});

// ---------- zstd ----------

describe('Compressor / Decompressor', () => {
  it('round-trips compressible data, declines incompressible data', () => {
    const t = textish(100_000, 31);
    const c = ctx.compressor.compress(t, 3)!;
    expect(c.length).toBeLessThan(t.length);
    expect(ctx.decompressor.decompress(c, t.length).equals(t)).toBe(true);
    expect(ctx.compressor.compress(prng(100_000, 32), 3)).toBeUndefined();
    expect(ctx.compressor.compress(new Uint8Array(0), 3)).toBeUndefined();
  });

  it('the returned buffer is not aliased to the scratch buffer', () => {
    const a = ctx.compressor.compress(textish(50_000, 33), 3)!;
    const copy = Buffer.from(a);
    ctx.compressor.compress(textish(50_000, 34), 3);
    expect(a.equals(copy)).toBe(true);
  });

  it('declared size too large or too small is BAD_CHUNK', () => {
    const t = textish(10_000, 35);
    const c = ctx.compressor.compress(t, 3)!;
    expectCode(() => ctx.decompressor.decompress(c, t.length + 1), ErrorCodes.BAD_CHUNK);
    expectCode(() => ctx.decompressor.decompress(c, t.length - 1), ErrorCodes.BAD_CHUNK);
    expectCode(() => ctx.decompressor.decompress(Buffer.from('not zstd at all'), 10), ErrorCodes.BAD_CHUNK);
  });
});

// ---------- copyRanges ----------

describe('copyRanges', () => {
  it('copies verified ranges and reports the indices whose source does not match', () => {
    const src = prng(50_000, 41);
    const ps = writeTmp(src);
    const missing = path.join(dir, 'does-not-exist');
    const dst = targetPath();
    const h = (o: number, l: number) => ctx.hasher.h64(src.subarray(o, o + l));
    const ranges = [
      { si: 0, off: 0, len: 1000, id: h(0, 1000), dOff: 0 }, // ok
      { si: 0, off: 1000, len: 1000, id: h(1000, 1000) ^ 1n, dOff: 1000 }, // wrong id
      { si: 0, off: 30_000, len: 20_000, id: h(30_000, 20_000), dOff: 2000 }, // ok
      { si: 1, off: 0, len: 10, id: 0n, dOff: 22_000 }, // source missing
      { si: 0, off: 49_000, len: 2000, id: h(49_000, 1000), dOff: 22_010 }, // past EOF
      { si: 0, off: 5, len: 70_000, id: 1n, dOff: 30_000 }, // longer than the reusable buffer, past EOF
      { si: 0, off: 2, len: 3, id: h(2, 3), dOff: 24_010 }, // ok, tiny
    ];
    const r = runJob(ctx, {
      kind: 'copyRanges',
      srcPaths: [ps, missing],
      srcIdx: Uint32Array.from(ranges.map((x) => x.si)),
      srcOffsets: Float64Array.from(ranges.map((x) => x.off)),
      lens: Uint32Array.from(ranges.map((x) => x.len)),
      ids: BigUint64Array.from(ranges.map((x) => x.id)),
      dstPaths: [dst],
      dstIdx: new Uint32Array(ranges.length),
      dstOffsets: Float64Array.from(ranges.map((x) => x.dOff)),
    }) as CopyRangesResult;
    expect(r.failed).toEqual([1, 3, 4, 5]);
    const out = fs.readFileSync(dst);
    expect(out.length).toBe(24_013);
    expect(out.subarray(0, 1000).equals(src.subarray(0, 1000))).toBe(true);
    expect(out.subarray(1000, 2000).equals(Buffer.alloc(1000))).toBe(true); // not copied: a hole
    expect(out.subarray(2000, 22_000).equals(src.subarray(30_000, 50_000))).toBe(true);
    expect(out.subarray(22_000, 24_010).equals(Buffer.alloc(2010))).toBe(true);
    expect(out.subarray(24_010).equals(src.subarray(2, 5))).toBe(true);
  });

  it('copies a range larger than 64 KiB', () => {
    const src = textish(300_000, 42);
    const ps = writeTmp(src);
    const dst = targetPath();
    const dst2 = targetPath();
    const r = runJob(ctx, {
      kind: 'copyRanges',
      srcPaths: [ps],
      srcIdx: Uint32Array.from([0, 0]),
      srcOffsets: Float64Array.from([10, 0]),
      lens: Uint32Array.from([200_000, 10]),
      ids: BigUint64Array.from([ctx.hasher.h64(src.subarray(10, 200_010)), ctx.hasher.h64(src.subarray(0, 10))]),
      dstPaths: [dst2, dst],
      dstIdx: Uint32Array.from([1, 1]),
      dstOffsets: Float64Array.from([10, 0]),
    }) as CopyRangesResult;
    expect(r.failed).toEqual([]);
    expect(fs.readFileSync(dst).equals(src.subarray(0, 200_010))).toBe(true);
    // a destination nothing was copied to is not created
    expect(fs.existsSync(dst2)).toBe(false);
  });
});

// ---------- patch level ----------

describe('blockLayout / blockSigsOf', () => {
  it('aligns blocks to absolute multiples of the block size', () => {
    expect(blockLayout(0, 10_000, 4096)).toEqual({ starts: [0, 4096, 8192], ends: [4096, 8192, 10_000] });
    expect(blockLayout(10_000, 30_000, 4096)).toEqual({
      starts: [0, 2288, 6384, 10_480, 14_576, 18_672, 22_768, 26_864],
      ends: [2288, 6384, 10_480, 14_576, 18_672, 22_768, 26_864, 30_000],
    });
    expect(blockLayout(4096, 4096, 4096)).toEqual({ starts: [0], ends: [4096] });
    expect(blockLayout(100, 10, 4096)).toEqual({ starts: [0], ends: [10] });
    expect(blockLayout(4095, 2, 4096)).toEqual({ starts: [0, 1], ends: [1, 2] });
    expect(blockLayout(123, 0, 4096)).toEqual({ starts: [], ends: [] });
  });

  it('blockSigsOf hashes each block with xxh32', () => {
    const bytes = prng(9000, 51);
    const sigs = blockSigsOf(ctx, bytes, 5000, 4096);
    expect(Array.from(sigs)).toEqual([
      ctx.hasher.h32(bytes.subarray(0, 3192)),
      ctx.hasher.h32(bytes.subarray(3192, 7288)),
      ctx.hasher.h32(bytes.subarray(7288, 9000)),
    ]);
  });
});

describe('blockSigs + makePatch + applyPatch', () => {
  const OFF = 10_000;
  const LEN = 30_000;
  const BS = 4096;
  /**
   * A run of three chunks over [OFF, OFF+LEN): [10000, 15000), [15000, 32000), [32000, 40000). The changed page
   * [16384, 20480) lies wholly inside the middle one.
   */
  const RUN3 = [5_000, 17_000, 8_000];

  /** Old (base) and new files that differ only in the 4 KiB page [16384, 20480). */
  function pair(seed: number, compressiblePage = false) {
    const oldData = prng(60_000, seed);
    const newData = Buffer.from(oldData);
    const page = compressiblePage ? Buffer.alloc(4096, 0x61) : prng(4096, seed + 1000);
    page.copy(newData, 16_384);
    const base = writeTmp(oldData);
    const server = writeTmp(newData);
    return { oldData, newData, base, server };
  }

  /** The run of chunks with the given lengths starting at OFF, with ids of the new bytes. */
  function runOf(p: ReturnType<typeof pair>, chunkLens: number[] = [LEN]) {
    const lens = Uint32Array.from(chunkLens);
    const ids = new BigUint64Array(lens.length);
    const starts: number[] = [];
    let o = OFF;
    for (let i = 0; i < lens.length; i++) {
      starts.push(o);
      ids[i] = ctx.hasher.h64(p.newData.subarray(o, o + lens[i]!));
      o += lens[i]!;
    }
    expect(o).toBe(OFF + LEN);
    return { lens, ids, starts };
  }

  /** Block signatures of one range (a blockSigs job of a single range). */
  function sigsOf(p: string, offset = OFF, length = LEN): Uint32Array {
    const r = runJob(ctx, { kind: 'blockSigs', ranges: [{ path: p, offset, length }], blockSize: BS }) as Uint32Array[];
    expect(r.length).toBe(1);
    return r[0]!;
  }

  /** A makePatch job of the single run at OFF in the server file. */
  function makePatch(
    p: ReturnType<typeof pair>,
    run: ReturnType<typeof runOf>,
    sigs: Uint32Array,
    level = 3,
  ): Exclude<MakePatchResult, { stale: string }> {
    const mp = runJob(ctx, {
      kind: 'makePatch',
      runs: [{ path: p.server, offset: OFF, lens: run.lens, ids: run.ids, sigs }],
      blockSize: BS,
      level,
    }) as MakePatchResult;
    if ('stale' in mp) throw new Error('stale');
    expect(mp.bitmaps.length).toBe(1);
    return mp;
  }

  /** An applyPatch job of the single run (base p.base unless given) writing chunk i to targets[i] at its own file offset. */
  function patchJob(
    p: ReturnType<typeof pair>,
    run: ReturnType<typeof runOf>,
    mp: Exclude<MakePatchResult, { stale: string }>,
    targets: string[],
    basePath = p.base,
  ): ApplyPatchJob {
    expect(targets.length).toBe(run.lens.length);
    return {
      kind: 'applyPatch',
      runs: [{ path: basePath, offset: OFF, lens: run.lens, ids: run.ids, bitmap: mp.bitmaps[0]! }],
      blockSize: BS,
      payload: mp.payload,
      compressed: mp.compressed,
      rawLen: mp.rawLen,
      paths: targets,
      tItem: Uint32Array.from(targets.map((_, i) => i)),
      tPath: Uint32Array.from(targets.map((_, i) => i)),
      tOffset: Float64Array.from(run.starts),
    };
  }

  /** Target i holds exactly the new bytes of chunk i at the chunk's file offset. */
  function expectWritten(p: ReturnType<typeof pair>, run: ReturnType<typeof runOf>, targets: string[], i: number): void {
    const out = fs.readFileSync(targets[i]!);
    const s = run.starts[i]!;
    expect(out.length).toBe(s + run.lens[i]!);
    expect(out.subarray(s).equals(p.newData.subarray(s, s + run.lens[i]!))).toBe(true);
  }

  it('reconstructs a chunk whose one aligned 4 KiB page changed; the patch carries exactly 4096 bytes', () => {
    const p = pair(61);
    const run = runOf(p);
    const sigs = sigsOf(p.base);
    expect(sigs.length).toBe(8);
    const mp = makePatch(p, run, sigs);
    expect(mp.rawLen).toBe(4096);
    // block 2 of the layout is [16384, 20480) in the file
    expect(mp.bitmaps.map((b) => Array.from(b))).toEqual([[0b0000_0100]]);
    expect(mp.compressed).toBe(false);
    expect(mp.payload.equals(p.newData.subarray(16_384, 20_480))).toBe(true);

    const t = [targetPath()];
    const r = runJob(ctx, patchJob(p, run, mp, t)) as ApplyPatchResult;
    expect(r).toEqual({ failed: [], written: LEN });
    expectWritten(p, run, t, 0);
  });

  it('a run of 3 chunks where only the middle one changed: all three rebuilt and written, the patch carries 4096 bytes', () => {
    const p = pair(69);
    const run = runOf(p, RUN3);
    // only the middle chunk differs between base and new
    expect(ctx.hasher.h64(p.oldData.subarray(run.starts[0]!, run.starts[1]!))).toBe(run.ids[0]);
    expect(ctx.hasher.h64(p.oldData.subarray(run.starts[1]!, run.starts[2]!))).not.toBe(run.ids[1]);
    expect(ctx.hasher.h64(p.oldData.subarray(run.starts[2]!, OFF + LEN))).toBe(run.ids[2]);
    const mp = makePatch(p, run, sigsOf(p.base));
    expect(mp.rawLen).toBe(4096);
    expect(mp.bitmaps.map((b) => Array.from(b))).toEqual([[0b0000_0100]]);
    const t = [targetPath(), targetPath(), targetPath()];
    const r = runJob(ctx, patchJob(p, run, mp, t)) as ApplyPatchResult;
    expect(r.failed).toEqual([]);
    expect(r.written).toBe(LEN);
    for (let i = 0; i < 3; i++) expectWritten(p, run, t, i);
  });

  it('two runs in two different files in one job (one page changed in each): both rebuilt, failed empty, 8192 bytes', () => {
    const p1 = pair(75);
    const p2 = pair(76); // both differ only in [16384, 20480)
    const run1 = runOf(p1, RUN3); // [10000, 40000): 8 blocks, the changed one is block 2
    // run 2: [12288, 32288) of the second file, blocks [12288, 16384) [16384, 20480) ... : the changed one is block 1
    const OFF2 = 12_288;
    const lens2 = Uint32Array.from([3_000, 9_000, 8_000]);
    const starts2: number[] = [];
    const ids2 = new BigUint64Array(lens2.length);
    for (let i = 0, o = OFF2; i < lens2.length; o += lens2[i]!, i++) {
      starts2.push(o);
      ids2[i] = ctx.hasher.h64(p2.newData.subarray(o, o + lens2[i]!));
    }
    const LEN2 = 20_000;

    const sigs = runJob(ctx, {
      kind: 'blockSigs',
      ranges: [
        { path: p1.base, offset: OFF, length: LEN },
        { path: p2.base, offset: OFF2, length: LEN2 },
      ],
      blockSize: BS,
    }) as Uint32Array[];
    expect(sigs.length).toBe(2);
    expect(Array.from(sigs[0]!)).toEqual(Array.from(sigsOf(p1.base)));
    expect(Array.from(sigs[1]!)).toEqual(Array.from(sigsOf(p2.base, OFF2, LEN2)));
    expect(sigs[1]!.length).toBe(5);

    const mp = runJob(ctx, {
      kind: 'makePatch',
      runs: [
        { path: p1.server, offset: OFF, lens: run1.lens, ids: run1.ids, sigs: sigs[0]! },
        { path: p2.server, offset: OFF2, lens: lens2, ids: ids2, sigs: sigs[1]! },
      ],
      blockSize: BS,
      level: 3,
    }) as MakePatchResult;
    if ('stale' in mp) throw new Error('stale');
    expect(mp.rawLen).toBe(8192);
    expect(mp.bitmaps.map((b) => Array.from(b))).toEqual([[0b0000_0100], [0b0000_0010]]);
    expect(mp.compressed).toBe(false);
    expect(mp.payload.equals(Buffer.concat([p1.newData.subarray(16_384, 20_480), p2.newData.subarray(16_384, 20_480)]))).toBe(true);

    // chunks 0..2 are run 1's, 3..5 run 2's; each goes to its own target at its own file offset
    const t = Array.from({ length: 6 }, () => targetPath());
    const allStarts = [...run1.starts, ...starts2];
    const allLens = [...run1.lens, ...lens2];
    const allNew = [p1.newData, p1.newData, p1.newData, p2.newData, p2.newData, p2.newData];
    const job = (base2 = p2.base): ApplyPatchJob => ({
      kind: 'applyPatch',
      runs: [
        { path: p1.base, offset: OFF, lens: run1.lens, ids: run1.ids, bitmap: mp.bitmaps[0]! },
        { path: base2, offset: OFF2, lens: lens2, ids: ids2, bitmap: mp.bitmaps[1]! },
      ],
      blockSize: BS,
      payload: mp.payload,
      compressed: mp.compressed,
      rawLen: mp.rawLen,
      paths: t,
      tItem: Uint32Array.from(t.map((_, i) => i)),
      tPath: Uint32Array.from(t.map((_, i) => i)),
      tOffset: Float64Array.from(allStarts),
    });
    const r = runJob(ctx, job()) as ApplyPatchResult;
    expect(r).toEqual({ failed: [], written: LEN + LEN2 });
    for (let i = 0; i < 6; i++) {
      const out = fs.readFileSync(t[i]!);
      const s = allStarts[i]!;
      expect(out.length).toBe(s + allLens[i]!);
      expect(out.subarray(s).equals(allNew[i]!.subarray(s, s + allLens[i]!))).toBe(true);
    }

    // failures are numbered across all runs: the second file's base changes in an unsignalled block of its last chunk
    const base2 = writeTmp(p2.oldData);
    const fd = fs.openSync(base2, 'r+');
    fs.writeSync(fd, Buffer.from([p2.oldData[28_000]! ^ 0x5a]), 0, 1, 28_000);
    fs.closeSync(fd);
    for (const x of t) fs.unlinkSync(x);
    const r2 = runJob(ctx, job(base2)) as ApplyPatchResult;
    expect(r2.failed).toEqual([5]);
    expect(r2.written).toBe(LEN + LEN2 - lens2[2]!);
    expect(fs.existsSync(t[5]!)).toBe(false);
  });

  it('works with a compressed patch too', () => {
    const p = pair(62, true);
    const run = runOf(p);
    const mp = makePatch(p, run, sigsOf(p.base));
    expect(mp.compressed).toBe(true);
    expect(mp.rawLen).toBe(4096);
    expect(mp.payload.length).toBeLessThan(4096);
    const t = [targetPath()];
    expect(runJob(ctx, patchJob(p, run, mp, t))).toEqual({ failed: [], written: LEN });
    expectWritten(p, run, t, 0);
  });

  it('an unchanged run gives an empty patch that still applies', () => {
    const p = pair(63);
    const run = runOf(p, RUN3);
    const mp = makePatch(p, run, sigsOf(p.server));
    expect(mp.rawLen).toBe(0);
    expect(mp.payload.length).toBe(0);
    expect(mp.bitmaps.map((b) => Array.from(b))).toEqual([[0]]);
    const t = [targetPath(), targetPath(), targetPath()];
    const job = patchJob(p, run, mp, t, p.server);
    expect(runJob(ctx, job)).toEqual({ failed: [], written: LEN });
    for (let i = 0; i < 3; i++) expectWritten(p, run, t, i);
  });

  it('applyPatch reports the chunk as failed (and writes nothing for it) when the base changed in an unsignalled block', () => {
    const p = pair(64);
    const run = runOf(p, RUN3);
    const mp = makePatch(p, run, sigsOf(p.base));
    // the base changes after its signatures were sent, in a block the patch does not carry (inside the middle chunk)
    const fd = fs.openSync(p.base, 'r+');
    fs.writeSync(fd, Buffer.from([p.oldData[30_000]! ^ 0x5a]), 0, 1, 30_000);
    fs.closeSync(fd);
    const t = [targetPath(), targetPath(), targetPath()];
    const r = runJob(ctx, patchJob(p, run, mp, t)) as ApplyPatchResult;
    expect(r.failed).toEqual([1]);
    expect(r.written).toBe(RUN3[0]! + RUN3[2]!);
    expect(fs.existsSync(t[1]!)).toBe(false);
    expectWritten(p, run, t, 0);
    expectWritten(p, run, t, 2);
  });

  it('applyPatch reports every chunk as failed when the base file is gone', () => {
    const p = pair(65);
    const run = runOf(p, RUN3);
    const mp = makePatch(p, run, sigsOf(p.base));
    fs.unlinkSync(p.base);
    const t = [targetPath(), targetPath(), targetPath()];
    expect(runJob(ctx, patchJob(p, run, mp, t))).toEqual({ failed: [0, 1, 2], written: 0 });
    for (const x of t) expect(fs.existsSync(x)).toBe(false);
  });

  it('applyPatch refuses a bitmap of the wrong size or a payload that disagrees with it (BAD_CHUNK)', () => {
    const p = pair(66);
    const run = runOf(p);
    const mp = makePatch(p, run, sigsOf(p.base));
    const t = [targetPath()];
    const job = patchJob(p, run, mp, t);
    const withBitmap = (bitmap: Uint8Array): ApplyPatchJob => ({ ...job, runs: [{ ...job.runs[0]!, bitmap }] });
    expectCode(() => runJob(ctx, withBitmap(Uint8Array.from([4, 0]))), ErrorCodes.BAD_CHUNK);
    expectCode(() => runJob(ctx, withBitmap(new Uint8Array(0))), ErrorCodes.BAD_CHUNK);
    // bitmap says two blocks but the payload holds one
    expectCode(() => runJob(ctx, withBitmap(Uint8Array.from([0b0000_1100]))), ErrorCodes.BAD_CHUNK);
    // bitmap says nothing but the payload holds a block
    expectCode(() => runJob(ctx, withBitmap(Uint8Array.from([0]))), ErrorCodes.BAD_CHUNK);
    // rawLen lies
    expectCode(() => runJob(ctx, { ...job, rawLen: 4095 }), ErrorCodes.BAD_CHUNK);
    expect(fs.existsSync(t[0]!)).toBe(false);
  });

  it('makePatch returns {stale} when the server file changed, and PROTOCOL for a wrong signature count', () => {
    const p = pair(67);
    const run = runOf(p, RUN3);
    const sigs = sigsOf(p.base);
    const mk = (s: Uint32Array, ids = run.ids) =>
      runJob(ctx, { kind: 'makePatch', runs: [{ path: p.server, offset: OFF, lens: run.lens, ids, sigs: s }], blockSize: BS, level: 3 }) as MakePatchResult;
    // any chunk of the run that no longer matches its id makes the whole run stale
    for (let i = 0; i < 3; i++) {
      const ids = BigUint64Array.from(run.ids);
      ids[i] = ids[i]! ^ 1n;
      expect(mk(sigs, ids)).toEqual({ stale: p.server });
    }
    expectCode(() => mk(sigs.subarray(1)), ErrorCodes.PROTOCOL);
    expectCode(() => mk(Uint32Array.from([...sigs, 0])), ErrorCodes.PROTOCOL);
    fs.truncateSync(p.server, OFF + LEN - 1);
    expect(mk(sigs)).toEqual({ stale: p.server });
  });

  it('blockSigs of a base shorter than the range: unreadable blocks get signature 0 and are sent', () => {
    const p = pair(68);
    fs.truncateSync(p.base, 25_000); // blocks starting at file offsets >= 25000 are beyond EOF
    const sigs = sigsOf(p.base);
    const { starts } = blockLayout(OFF, LEN, BS);
    const full = Buffer.alloc(LEN);
    p.oldData.copy(full, 0, OFF, 25_000);
    for (let b = 0; b < starts.length; b++) {
      if (OFF + starts[b]! >= 25_000) expect(sigs[b]).toBe(0);
      else expect(sigs[b]).toBe(blockSigsOf(ctx, full, OFF, BS)[b]);
    }
    const run = runOf(p);
    const mp = makePatch(p, run, sigs, -5);
    // the changed page plus the block straddling EOF (partly zero-padded) and every block past EOF
    expect(mp.rawLen).toBe(4096 + (40_000 - 24_576));
    const t = [targetPath()];
    expect(runJob(ctx, patchJob(p, run, mp, t))).toEqual({ failed: [], written: LEN });
    expectWritten(p, run, t, 0);
    // a missing base: every signature is 0
    expect(Array.from(sigsOf(path.join(dir, 'nope')))).toEqual(new Array(8).fill(0));
  });

  // A held-back file's last state may be gone from it and still be in the site's chunk store (CompanyServer.sendPatch).
  it('makes the patch from stored frames when given them, whatever the file holds; frames that do not decompress are stale', () => {
    const p = pair(71);
    const run = runOf(p, RUN3);
    const sigs = sigsOf(p.base);
    // The file at the site no longer holds the new bytes: the base's are there.
    const job = { kind: 'makePatch' as const, runs: [{ path: p.base, offset: OFF, lens: run.lens, ids: run.ids, sigs }], blockSize: BS, level: 3 };
    expect(runJob(ctx, { ...job, runs: [{ ...job.runs[0]!, lens: run.lens.slice(), ids: run.ids.slice(), sigs: sigs.slice() }] })).toEqual({ stale: p.base });
    // Frames of each chunk, concatenated (as the store sends a pack).
    const z = new Compressor();
    const frames = Buffer.concat(
      RUN3.map((_, i) => {
        const out = Buffer.alloc(compressBound(run.lens[i]!));
        return out.subarray(0, z.compressInto(out, p.newData.subarray(run.starts[i]!, run.starts[i]! + run.lens[i]!), 1));
      }),
    );
    const mp = runJob(ctx, { ...job, stored: frames }) as Exclude<MakePatchResult, { stale: string }>;
    expect(mp.bitmaps.map((b) => Array.from(b))).toEqual([[0b0000_0100]]);
    const t = [targetPath(), targetPath(), targetPath()];
    expect(runJob(ctx, patchJob(p, run, mp, t))).toEqual({ failed: [], written: LEN });
    for (let i = 0; i < 3; i++) expectWritten(p, run, t, i);
    expect(runJob(ctx, { ...job, stored: frames.subarray(0, frames.length - 9) })).toEqual({ stale: p.base });
  });
});
