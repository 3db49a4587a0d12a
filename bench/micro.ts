/**
 * Micro benchmarks of the hot path, in process, on generated company data (MB = 10^6 bytes):
 *  - chunker MB/s and chunk size distribution (p10/p50/p90), beside a plain JS byte loop (the floor of any JS scan);
 *  - xxh64 MB/s on chunk-sized (16 KiB) and 1 MiB inputs (snapferry's hasher: native @node-rs/xxhash where it loads),
 *    beside xxhash-wasm called directly;
 *  - zstd levels -3, -1, 1, 3 on 128 KiB inputs: ratio, compress and decompress MB/s, beside zstd-napi's simple API;
 *  - AEAD frame seal/open MB/s at 64 KiB and 1 MiB, beside a bare node:crypto AES-256-GCM call;
 *  - GET and DATA frame encode+decode rate;
 *  - patch block signatures (the delta's old chunks read and hashed in 1 KiB blocks) beside xxh32 over memory;
 *  - worker pool scaling: the same bytes chunked and hashed by 1 and by 2 worker threads.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createCipheriv, randomBytes } from 'node:crypto';
import xxhash from 'xxhash-wasm';
import * as zstdNapi from 'zstd-napi';
import { chunkLengths, DEFAULT_CHUNK_PARAMS, SEGMENT_SIZE } from '../src/chunk/chunker.js';
import { loadHasher } from '../src/chunk/hash.js';
import { Compressor, Decompressor } from '../src/work/zstd.js';
import { FrameSealer, FrameOpener, DIR_CLIENT_TO_SERVER } from '../src/protocol/seal.js';
import { encodeGet, decodeGet, encodeDataHeader, decodeData } from '../src/protocol/messages.js';
import { WorkerPool } from '../src/work/pool.js';
import { runJob, type ChunkSegmentResult } from '../src/work/tasks.js';
import { Results, MicroResult } from './report.js';
import { log, percentile, Budget } from './util.js';

const MB = 1e6;

/** Results fed here so that no benchmarked computation is dead code. */
export let microSink = 0;

/** Files of a folder, largest first (the big record files dominate company data, as they dominate its bytes). */
function filesOf(dir: string): Array<{ path: string; size: number }> {
  const out: Array<{ path: string; size: number }> = [];
  const rec = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) rec(p);
      else if (e.isFile()) out.push({ path: p, size: fs.statSync(p).size });
    }
  };
  rec(dir);
  return out.sort((a, b) => b.size - a.size || (a.path < b.path ? -1 : 1));
}

/**
 * A sample of `bytes` bytes taken proportionally from every file (the head of each), so that the small-file share
 * is represented, concatenated.
 */
function sample(files: Array<{ path: string; size: number }>, bytes: number): Buffer {
  const total = files.reduce((a, f) => a + f.size, 0);
  const frac = Math.min(1, bytes / total);
  const parts: Buffer[] = [];
  let got = 0;
  for (const f of files) {
    const n = Math.min(f.size, Math.ceil(f.size * frac), bytes - got);
    if (n <= 0) continue;
    const b = Buffer.allocUnsafe(n);
    const fd = fs.openSync(f.path, 'r');
    let o = 0;
    while (o < n) {
      const r = fs.readSync(fd, b, o, n - o, o);
      if (r === 0) break;
      o += r;
    }
    fs.closeSync(fd);
    parts.push(b.subarray(0, o));
    got += o;
    if (got >= bytes) break;
  }
  return Buffer.concat(parts);
}

/** Runs fn repeatedly for at least minMs (at most maxIters times); returns seconds per call. */
function timeIt(fn: () => void, minMs: number, maxIters = 1_000_000): number {
  fn(); // warm-up (JIT)
  let iters = 0;
  const t0 = performance.now();
  let t = t0;
  while (iters < maxIters && t - t0 < minMs) {
    fn();
    iters++;
    t = performance.now();
  }
  return (t - t0) / 1000 / Math.max(1, iters);
}

function slices(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let o = 0; o + size <= buf.length; o += size) out.push(buf.subarray(o, o + size));
  return out;
}

export interface MicroOptions {
  companyDir: string;
  microMiB: number;
  quick: boolean;
  results: Results;
  budget: Budget;
}

export async function runMicro(o: MicroOptions): Promise<void> {
  const R = o.results;
  const add = (m: MicroResult): void => {
    R.micro.push(m);
    log(`  micro ${m.name} [${m.tool}]: ${m.value.toFixed(m.unit === 'x' ? 2 : 1)} ${m.unit}${m.detail ? ` (${m.detail})` : ''}`);
  };
  const minMs = o.quick ? 250 : 1000;
  const files = filesOf(o.companyDir);
  const data = sample(files, Math.floor(o.microMiB * 1048576));
  let hasher = await loadHasher();
  log(`micro: ${(data.length / 1048576).toFixed(0)} MiB sample of ${o.companyDir}`);

  // --- chunker ---------------------------------------------------------------------------------------------
  {
    const segs = slices(data, SEGMENT_SIZE);
    if (segs.length === 0) segs.push(data);
    const segBytes = segs.reduce((a, s) => a + s.length, 0);
    let lens: number[] = [];
    const sec = timeIt(() => {
      lens = [];
      for (const s of segs) for (const l of chunkLengths(s, DEFAULT_CHUNK_PARAMS)) lens.push(l);
    }, minMs, o.quick ? 2 : 5);
    const sorted = Float64Array.from(lens).sort();
    const kib = (x: number) => (x / 1024).toFixed(1);
    const mean = segBytes / lens.length;
    add({
      name: 'chunker',
      tool: 'snapferry',
      value: segBytes / sec / MB,
      unit: 'MB/s',
      detail: `${lens.length} chunks; KiB p10 ${kib(percentile(sorted, 10))} p50 ${kib(percentile(sorted, 50))} p90 ${kib(percentile(sorted, 90))} mean ${kib(mean)} (min/avg/max ${DEFAULT_CHUNK_PARAMS.minSize >> 10}/${DEFAULT_CHUNK_PARAMS.avgSize >> 10}/${DEFAULT_CHUNK_PARAMS.maxSize >> 10})`,
      extra: { p10: percentile(sorted, 10), p50: percentile(sorted, 50), p90: percentile(sorted, 90), meanChunk: mean, chunks: lens.length },
    });
    let sink = 0;
    const rawSec = timeIt(() => {
      let h = 0;
      for (const s of segs) for (let i = 0; i < s.length; i++) h = (h + s[i]!) | 0;
      sink ^= h;
    }, minMs, o.quick ? 2 : 5);
    microSink ^= sink;
    add({ name: 'chunker', tool: 'raw', value: segBytes / rawSec / MB, unit: 'MB/s', detail: 'plain JS loop reading every byte (the chunker skips minSize bytes per chunk)' });
  }
  if (o.budget.spent) return R.note('time budget spent: rest of micro skipped');

  // --- xxh64 -----------------------------------------------------------------------------------------------
  {
    hasher = await loadHasher();
    const api = await xxhash();
    const bytes = Math.min(data.length, 64 << 20);
    for (const size of [16 << 10, 1 << 20]) {
      const parts = slices(data.subarray(0, bytes), size);
      const n = parts.length * size;
      let x = 0n;
      const ours = timeIt(() => {
        for (const p of parts) x ^= hasher.h64(p);
      }, minMs, 50);
      const raw = timeIt(() => {
        for (const p of parts) x ^= api.h64Raw(p, 0n);
      }, minMs, 50);
      const label = size >= 1 << 20 ? '1 MiB' : `${size >> 10} KiB`;
      microSink ^= Number(x & 0xffffn);
      add({ name: `xxh64 ${label}`, tool: 'snapferry', value: n / ours / MB, unit: 'MB/s', detail: `loadHasher().h64 (${(hasher as { kind?: string }).kind ?? '?'})` });
      add({ name: `xxh64 ${label}`, tool: 'raw', value: n / raw / MB, unit: 'MB/s', detail: 'xxhash-wasm h64Raw' });
    }
  }
  if (o.budget.spent) return R.note('time budget spent: rest of micro skipped');

  // --- zstd ------------------------------------------------------------------------------------------------
  {
    const zBytes = Math.min(data.length, (o.quick ? 16 : 64) << 20);
    const blocks = slices(data.subarray(0, zBytes), 128 << 10);
    const n = blocks.length * (128 << 10);
    const comp = new Compressor();
    const dec = new Decompressor();
    for (const level of [-3, -1, 1, 3]) {
      let out: Array<Buffer | undefined> = [];
      const cs = timeIt(() => {
        out = blocks.map((b) => comp.compress(b, level));
      }, minMs, 20);
      const packed = out.reduce((a, b, i) => a + (b ? b.length : blocks[i]!.length), 0);
      const ds = timeIt(() => {
        out.forEach((b, i) => (b ? dec.decompress(b, blocks[i]!.length) : undefined));
      }, minMs, 50);
      add({
        name: `zstd level ${level}`,
        tool: 'snapferry',
        value: n / cs / MB,
        unit: 'MB/s',
        detail: `ratio ${(n / packed).toFixed(2)}, decompress ${(n / ds / MB).toFixed(0)} MB/s, 128 KiB inputs`,
        extra: { level, ratio: n / packed, decompressMBps: n / ds / MB },
      });
    }
    const raw = timeIt(() => {
      for (const b of blocks) zstdNapi.compress(b, { compressionLevel: 1 });
    }, minMs, 20);
    add({ name: 'zstd level 1', tool: 'raw', value: n / raw / MB, unit: 'MB/s', detail: 'zstd-napi compress() (simple API)' });
  }
  if (o.budget.spent) return R.note('time budget spent: rest of micro skipped');

  // --- AEAD ------------------------------------------------------------------------------------------------
  {
    const key = randomBytes(32);
    const total = (o.quick ? 32 : 128) << 20;
    for (const size of [64 << 10, 1 << 20]) {
      const buf = data.length >= size ? data.subarray(0, size) : Buffer.alloc(size, 7);
      const count = Math.max(1, Math.floor(total / size));
      const label = size >= 1 << 20 ? '1 MiB' : '64 KiB';
      let sunk = 0;
      const sealT = timeIt(() => {
        const s = new FrameSealer(key, DIR_CLIENT_TO_SERVER);
        for (let i = 0; i < count; i++) sunk += s.seal(buf).length;
      }, minMs, 20);
      microSink ^= sunk;
      // Frames to open, made outside the timed loop (at most 32 kept at once).
      const kept = Math.min(count, 32);
      const sealer = new FrameSealer(key, DIR_CLIENT_TO_SERVER);
      const frames = Array.from({ length: kept }, () => sealer.seal(buf));
      const openT =
        timeIt(() => {
          const op = new FrameOpener(key, DIR_CLIENT_TO_SERVER);
          for (const f of frames) op.open(f);
        }, minMs, 200) *
        (count / kept);
      const iv = randomBytes(12);
      const rawT = timeIt(() => {
        for (let i = 0; i < count; i++) {
          const c = createCipheriv('aes-256-gcm', key, iv);
          sunk += c.update(buf).length + c.final().length + c.getAuthTag().length;
        }
      }, minMs, 20);
      add({ name: `AEAD seal ${label}`, tool: 'snapferry', value: (count * size) / sealT / MB, unit: 'MB/s', detail: 'FrameSealer.seal (AES-256-GCM)' });
      add({ name: `AEAD open ${label}`, tool: 'snapferry', value: (count * size) / openT / MB, unit: 'MB/s', detail: 'FrameOpener.open' });
      add({ name: `AEAD seal ${label}`, tool: 'raw', value: (count * size) / rawT / MB, unit: 'MB/s', detail: 'bare createCipheriv aes-256-gcm' });
    }
  }

  // --- frames ----------------------------------------------------------------------------------------------
  {
    const ranges: Array<[number, number]> = Array.from({ length: 64 }, (_, i) => [i * 10, i * 10 + 5]);
    const payload = Buffer.alloc(64 << 10, 1);
    const per = 1000;
    let sink = 0;
    const g = timeIt(() => {
      for (let i = 0; i < per; i++) sink += decodeGet(encodeGet({ reqId: i, ranges })).ranges.length;
    }, minMs, 10_000);
    const d = timeIt(() => {
      for (let i = 0; i < per; i++) {
        const h = encodeDataHeader(i, true, 1 << 16);
        // decodeData takes the whole opened frame; header and payload as the opener would hand them over
        sink += decodeData(Buffer.concat([h, payload.subarray(0, 16)])).rawLen;
      }
    }, minMs, 10_000);
    microSink ^= sink;
    add({ name: 'GET frame encode+decode', tool: 'snapferry', value: per / g, unit: 'ops/s', detail: '64 ranges each' });
    add({ name: 'DATA header encode+decode', tool: 'snapferry', value: per / d, unit: 'ops/s', detail: 'header only (payload passed by reference)' });
  }
  // --- patch level: block signatures of a delta's old chunks ---------------------------------------------------
  {
    // Chunk-sized ranges spread over the largest files, 64 per job as a PATCH request carries them.
    const big = files.slice(0, 4).filter((f) => f.size > 1 << 20);
    const ranges: Array<{ path: string; offset: number; length: number }> = [];
    let bytes = 0;
    for (let i = 0; bytes < Math.min(64 << 20, data.length) && big.length > 0; i++) {
      const f = big[i % big.length]!;
      const length = 8192 + ((i * 7919) % 40_000);
      const offset = (Math.floor((f.size - length) * (((i * 2654435761) >>> 0) / 2 ** 32)) >>> 12) << 12;
      ranges.push({ path: f.path, offset, length });
      bytes += length;
    }
    if (ranges.length > 0) {
      const ctx = { hasher, compressor: new Compressor(), decompressor: new Decompressor() };
      const sec = timeIt(() => {
        for (let k = 0; k < ranges.length; k += 64) microSink ^= (runJob(ctx, { kind: 'blockSigs', ranges: ranges.slice(k, k + 64), blockSize: 1024 }) as Uint32Array[]).length;
      }, minMs, o.quick ? 3 : 20);
      const flat = Buffer.concat(ranges.map((r) => data.subarray(0, Math.min(r.length, data.length))));
      const raw = timeIt(() => {
        for (let pos = 0; pos < flat.length; pos += 1024) microSink ^= hasher.h32(flat.subarray(pos, pos + 1024));
      }, minMs, o.quick ? 3 : 20);
      add({ name: 'patch block signatures', tool: 'snapferry', value: bytes / sec / MB, unit: 'MB/s', detail: `blockSigs jobs, ${ranges.length} chunk-sized ranges of the largest files, 1 KiB blocks, page cache` });
      add({ name: 'patch block signatures', tool: 'raw', value: flat.length / raw / MB, unit: 'MB/s', detail: 'xxh32 of 1 KiB blocks of one buffer in memory (no reads)' });
    }
  }
  if (o.budget.spent) return R.note('time budget spent: worker pool scaling skipped');

  // --- worker pool scaling ---------------------------------------------------------------------------------
  {
    const target = Math.floor(o.microMiB * 1048576);
    const jobs: Array<{ path: string; offset: number; length: number }> = [];
    let sum = 0;
    for (const f of files) {
      for (let off = 0; off < f.size && sum < target; off += SEGMENT_SIZE) {
        const len = Math.min(SEGMENT_SIZE, f.size - off, target - sum);
        jobs.push({ path: f.path, offset: off, length: len });
        sum += len;
      }
      if (sum >= target) break;
    }
    const times: number[] = [];
    for (const size of [1, 2]) {
      const pool = new WorkerPool(size);
      try {
        const runAll = async (): Promise<void> => {
          let next = 0;
          const lane = async (): Promise<void> => {
            while (next < jobs.length) {
              const j = jobs[next++]!;
              await pool.run<ChunkSegmentResult>({ kind: 'chunkSegment', path: j.path, offset: j.offset, length: j.length, params: DEFAULT_CHUNK_PARAMS });
            }
          };
          await Promise.all(Array.from({ length: size * 2 }, lane));
        };
        await runAll(); // warm-up: threads started, JIT, page cache
        const t0 = performance.now();
        await runAll();
        times.push((performance.now() - t0) / 1000);
      } finally {
        await pool.close();
      }
    }
    add({ name: 'pool chunk+hash, 1 worker', tool: 'snapferry', value: sum / times[0]! / MB, unit: 'MB/s', detail: `${(sum / 1048576).toFixed(0)} MiB, chunkSegment jobs` });
    add({ name: 'pool chunk+hash, 2 workers', tool: 'snapferry', value: sum / times[1]! / MB, unit: 'MB/s', detail: `${(sum / 1048576).toFixed(0)} MiB` });
    add({ name: 'pool scaling 2 vs 1 worker', tool: 'snapferry', value: times[0]! / times[1]!, unit: 'x', detail: 'ideal 2.00 on 2 idle cores' });
  }
}
