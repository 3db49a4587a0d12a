/**
 * Deterministic synthetic "company data folder" generator and a realistic mutation of it.
 *
 * Same shape as the reference `mkcompany.py` (which users do not have): a few large record
 * files updated in place by 4 KiB pages, a journal that grows by appends, and many small
 * master/report files. The bytes differ from Python's (we use our own PRNG, not the Mersenne
 * Twister) but the figures match: file names and count, size shares, 5 % binary-noise lines,
 * the record line format and hence compressibility (zstd -1 ≈ 3.2x).
 *
 * Speed matters (benches generate GiBs), so records are formatted straight into byte buffers,
 * never through JS strings, and written in multi-MiB blocks with the next block generated while
 * the previous write is in flight.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeDirs } from '../util/mkdirs.js';

const fsp = fs.promises;

// ---------------------------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------------------------

const TWO32 = 4294967296;
const INV_TWO32 = 1 / TWO32;

/**
 * Small seeded PRNG: xoshiro128** with its state seeded by splitmix32.
 *
 * Only 32-bit integer arithmetic (Math.imul, shifts) and exact float operations are used, so the
 * stream is identical on every machine and Node version.
 */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** @param seed any finite number; integer seeds up to 2^53 are distinguished. */
  constructor(seed: number) {
    // Fold the seed's high word in so seeds beyond 2^32 are not aliased.
    let x = (seed >>> 0) ^ Math.imul(Math.floor(seed / TWO32) >>> 0, 0x9e3779b1);
    const splitmix32 = (): number => {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = splitmix32();
    this.s1 = splitmix32();
    this.s2 = splitmix32();
    this.s3 = splitmix32();
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // all-zero state is a fixed point
  }

  /** Next uniform 32-bit unsigned integer. */
  next(): number {
    const s1 = this.s1;
    const m = Math.imul(s1, 5);
    const result = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = (this.s3 << 11) | (this.s3 >>> 21);
    return result;
  }

  /** Uniform float in [0, 1) with 53 bits of precision. */
  random(): number {
    return ((this.next() >>> 5) * 67108864 + (this.next() >>> 6)) / 9007199254740992;
  }

  /** Uniform integer in [0, n). For n ≤ 2^32 one draw suffices (multiply-shift, negligible bias). */
  int(n: number): number {
    // × 2^-32 is exact (power-of-two scaling), and cheaper than a division.
    if (n <= TWO32) return Math.floor(this.next() * n * INV_TWO32);
    return Math.floor(this.random() * n);
  }

  /** Uniform integer in [lo, hi], both inclusive (like Python's randint). */
  randint(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  /** A uniformly chosen element of a non-empty array. */
  choice<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** `k` distinct elements drawn without replacement, in draw order (like Python's sample). */
  sample<T>(items: readonly T[], k: number): T[] {
    const a = items.slice();
    const n = Math.min(k, a.length);
    for (let j = 0; j < n; j++) {
      const r = j + this.int(a.length - j);
      const tmp = a[j]!;
      a[j] = a[r]!;
      a[r] = tmp;
    }
    return a.slice(0, n);
  }

  /** Fill buf[start, end) with random bytes (explicit little-endian order: machine-independent). */
  fillBytes(buf: Uint8Array, start = 0, end = buf.length): void {
    let i = start;
    for (; i + 4 <= end; i += 4) {
      const v = this.next();
      buf[i] = v;
      buf[i + 1] = v >>> 8;
      buf[i + 2] = v >>> 16;
      buf[i + 3] = v >>> 24;
    }
    if (i < end) {
      let v = this.next();
      for (; i < end; i++, v >>>= 8) buf[i] = v;
    }
  }

  /** A new Buffer of n random bytes. */
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    this.fillBytes(b);
    return b;
  }
}

// ---------------------------------------------------------------------------------------------
// Record lines, formatted directly into bytes
// ---------------------------------------------------------------------------------------------

const enc = (s: string): Uint8Array => Buffer.from(s, 'latin1');
const B_VCH = enc('VCH');
const B_DATE = enc('|2026-');
const B_LEDGER = enc('|Ledger ');
const B_INR = enc('|INR|Narration for voucher ');
const B_PARTY = enc(' party ');
const KINDS = ['Sales', 'Purchase', 'Receipt', 'Payment', 'Journal', 'Contra'].map((k) => enc(`|${k}|`));
const HEX = enc('0123456789abcdef');
/** Longest possible record is ~130 bytes; leave generous slack past a block's end. */
const MAX_LINE = 512;
/** Noise threshold: next() < 0.05 * 2^32 ⇔ a 5 % chance. */
const NOISE_CUT = Math.round(0.05 * TWO32);
const CH_0 = 48;
const CH_DASH = 45;
const CH_BAR = 124;
const CH_DOT = 46;
const CH_NL = 10;

function putBytes(buf: Uint8Array, pos: number, src: Uint8Array): number {
  for (let k = 0; k < src.length; k++) buf[pos + k] = src[k]!;
  return pos + src.length;
}

/** Decimal digits of a non-negative integer, at least `width` wide (zero-padded). */
function putUint(buf: Uint8Array, pos: number, v: number, width = 1): number {
  if (v > 0x7fffffff) {
    // Rare (record numbers past 2^31): float-safe path.
    const s = String(v).padStart(width, '0');
    for (let k = 0; k < s.length; k++) buf[pos + k] = s.charCodeAt(k);
    return pos + s.length;
  }
  let n = v < 10 ? 1 : v < 100 ? 2 : v < 1000 ? 3 : v < 10000 ? 4 : v < 100000 ? 5 : v < 1000000 ? 6 : v < 10000000 ? 7 : v < 100000000 ? 8 : v < 1000000000 ? 9 : 10;
  if (n < width) n = width;
  for (let k = pos + n - 1; k >= pos; k--) {
    const q = (v / 10) | 0; // int32 fast path
    buf[k] = CH_0 + v - q * 10;
    v = q;
  }
  return pos + n;
}

/**
 * One voucher record, as mkcompany.py's `record()`:
 * `VCH000000042|2026-03-17|Ledger 1234|Sales|12345.67|INR|Narration for voucher 42 party 77|<16 hex>\n`
 */
function putRecord(buf: Uint8Array, pos: number, r: Rng, i: number): number {
  pos = putBytes(buf, pos, B_VCH);
  pos = putUint(buf, pos, i, 9);
  pos = putBytes(buf, pos, B_DATE);
  pos = putUint(buf, pos, r.randint(1, 12), 2);
  buf[pos++] = CH_DASH;
  pos = putUint(buf, pos, r.randint(1, 28), 2);
  pos = putBytes(buf, pos, B_LEDGER);
  pos = putUint(buf, pos, r.randint(1, 4000));
  pos = putBytes(buf, pos, KINDS[r.int(KINDS.length)]!);
  const amount = r.randint(1, 10_000_000); // paise; printed as rupees with 2 decimals
  pos = putUint(buf, pos, Math.floor(amount / 100));
  buf[pos++] = CH_DOT;
  pos = putUint(buf, pos, amount % 100, 2);
  pos = putBytes(buf, pos, B_INR);
  pos = putUint(buf, pos, i);
  pos = putBytes(buf, pos, B_PARTY);
  pos = putUint(buf, pos, r.randint(1, 900));
  buf[pos++] = CH_BAR;
  for (let w = 0; w < 2; w++) {
    const v = r.next();
    for (let sh = 28; sh >= 0; sh -= 4) buf[pos++] = HEX[(v >>> sh) & 15]!;
  }
  buf[pos++] = CH_NL;
  return pos;
}

/**
 * Append records (numbered from `i`) to buf at `pos` until `pos >= limit`; 5 % of lines are
 * replaced by random bytes of the same length, as database pages carry binary noise.
 * Returns the new position and next record number.
 */
function putRecords(buf: Uint8Array, pos: number, limit: number, r: Rng, i: number, noise: boolean): [number, number] {
  while (pos < limit) {
    const start = pos;
    pos = putRecord(buf, pos, r, i++);
    if (noise && r.next() < NOISE_CUT) r.fillBytes(buf, start, pos);
  }
  return [pos, i];
}

// ---------------------------------------------------------------------------------------------
// File writing
// ---------------------------------------------------------------------------------------------

/** Generation block: big enough to amortise syscalls, small enough to stay in cache-ish memory. */
const BLOCK = 4 << 20;

async function writeAll(fh: fs.promises.FileHandle, buf: Uint8Array, len: number, position: number): Promise<void> {
  let done = 0;
  while (done < len) {
    const { bytesWritten } = await fh.write(buf, done, len - done, position + done);
    if (bytesWritten <= 0) throw new Error('short write');
    done += bytesWritten;
  }
}

/** Reusable pair of block buffers: generate into one while the other is being written. */
class Filler {
  private readonly bufs = [Buffer.allocUnsafe(BLOCK + MAX_LINE), Buffer.allocUnsafe(BLOCK + MAX_LINE)];

  /**
   * Write exactly `size` bytes of records to `file` (truncating the last line, like Python's
   * fill + truncate). Returns the next record number.
   */
  async fill(file: string, size: number, r: Rng, start: number): Promise<number> {
    const fh = await fsp.open(file, 'w');
    let i = start;
    try {
      let written = 0;
      let cur = 0;
      let pending: Promise<void> | null = null;
      while (written < size) {
        const buf = this.bufs[cur]!;
        let pos: number;
        [pos, i] = putRecords(buf, 0, Math.min(BLOCK, size - written), r, i, true);
        const n = Math.min(pos, size - written);
        if (pending) await pending;
        pending = writeAll(fh, buf, n, written);
        written += n;
        cur ^= 1;
      }
      if (pending) await pending;
    } finally {
      await fh.close();
    }
    return i;
  }
}

/** Exactly `size` bytes of records in a fresh Buffer (for small files). Returns [bytes, next i]. */
function recordsBuffer(size: number, r: Rng, start: number): [Buffer, number] {
  const buf = Buffer.allocUnsafe(size + MAX_LINE);
  const [, i] = putRecords(buf, 0, size, r, start, true);
  return [buf.subarray(0, size), i];
}

/**
 * Writes many small files with bounded concurrency. Contents are generated synchronously in call
 * order, so determinism does not depend on I/O completion order.
 */
class SmallWriter {
  private inflight: Promise<void>[] = [];
  private readonly dirs = new Set<string>();
  constructor(private readonly limit = 32) {}

  async write(file: string, data: Buffer): Promise<void> {
    const dir = path.dirname(file);
    if (!this.dirs.has(dir)) {
      await this.drain(); // files already queued may live in dirs we created; keep it simple
      makeDirs(dir);
      this.dirs.add(dir);
    }
    this.inflight.push(fsp.writeFile(file, data));
    if (this.inflight.length >= this.limit) await this.drain();
  }

  async drain(): Promise<void> {
    const p = this.inflight;
    this.inflight = [];
    await Promise.all(p);
  }
}

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/** The large page-updated stores and their share of the requested total (as mkcompany.py). */
const BIG_FILES: ReadonlyArray<readonly [string, number]> = [
  ['Tranmgr.900', 0.45],
  ['Company.900', 0.25],
  ['LinkMgr.900', 0.1],
  ['Manager.900', 0.08],
];
const JOURNAL = 'Journal.log';
/**
 * What the top of a folder made by {@link makeCompany} holds, mutated or not: the large files, the journal and the two
 * folders of small files (`mutate` on the CLI refuses any other folder, since it rewrites, deletes and renames files).
 */
export const SYNTHETIC_TOP_NAMES: ReadonlySet<string> = new Set([...BIG_FILES.map(([n]) => n), JOURNAL, 'masters', 'reports']);
const JOURNAL_SHARE = 0.04;
const SMALL_SHARE = 0.08;

/**
 * Create a deterministic synthetic company data folder of about `sizeMiB` MiB in `dir`
 * (created if missing; existing files of the same names are overwritten).
 *
 * Layout (shares of the total): `Tranmgr.900` 45 %, `Company.900` 25 %, `LinkMgr.900` 10 %,
 * `Manager.900` 8 %, `Journal.log` 4 %, and ~8 % in `total*0.08/32KiB` small files of 1–63 KiB:
 * `reports/gNN/mKKKKK.xml` when K % 3 == 0, else `masters/gNN/mKKKKK.xml`, NN = K % 17.
 * Contents are pipe-separated voucher records, 5 % of lines replaced by random bytes.
 *
 * @param dir target folder
 * @param sizeMiB nominal total size in MiB (fractions allowed)
 * @param seed PRNG seed; the same seed gives byte-identical output on any machine
 * @returns number of files written and their total size in bytes
 */
export async function makeCompany(dir: string, sizeMiB: number, seed = 1): Promise<{ files: number; bytes: number }> {
  const r = new Rng(seed);
  makeDirs(dir);
  const total = Math.floor(sizeMiB * 1048576);
  const filler = new Filler();
  let i = 0; // record numbers run on across files, as in the reference
  let files = 0;
  let bytes = 0;
  for (const [name, share] of BIG_FILES) {
    const size = Math.floor(total * share);
    i = await filler.fill(path.join(dir, name), size, r, i);
    files++;
    bytes += size;
  }
  const jsize = Math.floor(total * JOURNAL_SHARE);
  i = await filler.fill(path.join(dir, JOURNAL), jsize, r, i);
  files++;
  bytes += jsize;

  const small = Math.floor(total * SMALL_SHARE);
  const n = Math.max(1, Math.floor(small / (32 << 10)));
  const w = new SmallWriter();
  for (let k = 0; k < n; k++) {
    const sub = path.join(dir, k % 3 ? 'masters' : 'reports', `g${String(k % 17).padStart(2, '0')}`);
    const size = r.randint(1 << 10, 63 << 10);
    let data: Buffer;
    [data, i] = recordsBuffer(size, r, i);
    await w.write(path.join(sub, `m${String(k).padStart(5, '0')}.xml`), data);
    files++;
    bytes += size;
  }
  await w.drain();
  return { files, bytes };
}

/** Result of {@link mutateCompany}. Paths are relative to the folder, '/'-separated. */
export interface MutateResult {
  /** Bytes rewritten in place as random 4 KiB pages in the 4 largest files (~1 % of the total). */
  bytesChanged: number;
  /** Small files removed (20). */
  deleted: string[];
  /** New files `masters/new/nNNN.xml` (20, 1–32 KiB each). */
  added: string[];
  /** Small files renamed to `NAME.renamed` (5), as [from, to]. */
  renamed: Array<[string, string]>;
  /** Bytes appended to Journal.log (2000 records). */
  appendedBytes: number;
  /** Bytes inserted mid-file into the smallest of the 4 largest files (65536). */
  insertedBytes: number;
  /** File that received the insert. */
  insertedInto: string;
  /** Total size of the new files. */
  addedBytes: number;
  /** Folder size before the mutation. */
  totalBefore: number;
}

/** All regular files under dir, relative '/'-separated paths, sorted (like Python's sorted()). */
function walk(dir: string): string[] {
  const out: string[] = [];
  const rec = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) rec(p);
      else if (e.isFile()) out.push(p);
    }
  };
  rec('');
  return out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Insert `data` at `at` in an open file by shifting the tail up, in chunks from the end. */
async function insertInFile(fh: fs.promises.FileHandle, size: number, at: number, data: Buffer): Promise<void> {
  const chunk = Buffer.allocUnsafe(BLOCK);
  let end = size;
  while (end > at) {
    const start = Math.max(at, end - BLOCK);
    const len = end - start;
    let got = 0;
    while (got < len) {
      const { bytesRead } = await fh.read(chunk, got, len - got, start + got);
      if (bytesRead <= 0) throw new Error('short read');
      got += bytesRead;
    }
    await writeAll(fh, chunk, len, start + data.length);
    end = start;
  }
  await writeAll(fh, data, data.length, at);
}

/**
 * Change a folder made by {@link makeCompany} the way such data changes between syncs
 * (the same steps as `mkcompany.py mutate`):
 *  1. random 4 KiB pages, 4096-aligned, rewritten in the 4 largest files (file chosen uniformly)
 *     until 1 % of the folder's bytes are covered;
 *  2. 2000 records appended to `Journal.log`;
 *  3. 64 KiB of random bytes inserted in the middle of the smallest of those 4 files;
 *  4. 20 small files deleted; 5. 20 new `masters/new/nNNN.xml` of 1–32 KiB;
 *  6. 5 remaining small files renamed to `NAME.renamed`.
 *
 * @param dir folder to mutate in place
 * @param seed PRNG seed; deterministic for a given folder and seed
 */
export async function mutateCompany(dir: string, seed = 2): Promise<MutateResult> {
  const r = new Rng(seed);
  const files = walk(dir);
  const sizes = new Map<string, number>();
  let total = 0;
  for (const f of files) {
    const s = fs.statSync(path.join(dir, f)).size;
    sizes.set(f, s);
    total += s;
  }
  let budget = Math.floor(total / 100);
  // Stable sort by size; ties keep path order, as Python's sorted(key=getsize).
  const bigs = [...files].sort((a, b) => sizes.get(a)! - sizes.get(b)!).slice(-4);

  // 1. In-place page rewrites.
  let bytesChanged = 0;
  if (bigs.length > 0) {
    const handles = await Promise.all(bigs.map((f) => fsp.open(path.join(dir, f), 'r+')));
    try {
      const page = Buffer.allocUnsafe(4096);
      while (budget > 0) {
        const k = r.int(bigs.length);
        const sz = sizes.get(bigs[k]!)!;
        let off = r.int(Math.max(1, sz - 4096));
        off -= off % 4096; // & ~4095 without 32-bit truncation
        r.fillBytes(page);
        await writeAll(handles[k]!, page, 4096, off);
        sizes.set(bigs[k]!, Math.max(sz, off + 4096));
        budget -= 4096;
        bytesChanged += 4096;
      }
    } finally {
      await Promise.all(handles.map((h) => h.close()));
    }
  }

  // 2. Growth by append.
  const jbuf = Buffer.allocUnsafe(2000 * MAX_LINE);
  let jlen = 0;
  for (let k = 0; k < 2000; k++) jlen = putRecord(jbuf, jlen, r, 100_000_000 + k);
  await fsp.appendFile(path.join(dir, JOURNAL), jbuf.subarray(0, jlen));

  // 3. An insert that shifts the rest of a file.
  let insertedBytes = 0;
  const insertedInto = bigs[0] ?? '';
  if (bigs.length > 0) {
    const fh = await fsp.open(path.join(dir, insertedInto), 'r+');
    try {
      const size = (await fh.stat()).size;
      const ins = r.bytes(65536);
      await insertInFile(fh, size, Math.floor(size / 2), ins);
      insertedBytes = ins.length;
    } finally {
      await fh.close();
    }
  }

  // 4. Deletes.
  const bigSet = new Set(bigs);
  const smalls = files.filter((x) => !bigSet.has(x) && !x.endsWith(JOURNAL));
  const deleted = r.sample(smalls, 20);
  for (const x of deleted) await fsp.rm(path.join(dir, x));

  // 5. New files.
  const added: string[] = [];
  let addedBytes = 0;
  makeDirs(path.join(dir, 'masters', 'new'));
  for (let k = 0; k < 20; k++) {
    const rel = `masters/new/n${String(k).padStart(3, '0')}.xml`;
    const size = r.randint(1 << 10, 32 << 10);
    const [data] = recordsBuffer(size, r, 1_000_000_000 + k * 1000);
    await fsp.writeFile(path.join(dir, rel), data);
    added.push(rel);
    addedBytes += size;
  }

  // 6. Renames.
  const gone = new Set(deleted);
  const left = smalls.filter((x) => !gone.has(x) && fs.existsSync(path.join(dir, x)));
  const renamed: Array<[string, string]> = [];
  for (const x of r.sample(left, 5)) {
    await fsp.rename(path.join(dir, x), path.join(dir, `${x}.renamed`));
    renamed.push([x, `${x}.renamed`]);
  }

  return {
    bytesChanged,
    deleted,
    added,
    renamed,
    appendedBytes: jlen,
    insertedBytes,
    insertedInto,
    addedBytes,
    totalBefore: total,
  };
}

/**
 * Create `count` small record-style files (1–8 KiB each, 5 % noise lines) for a
 * "many small files" bench scenario: `dir/gAAA/hBB/fNNNNNN.xml`, 100 files per leaf folder
 * and up to 100 leaf folders per parent. Deterministic for a given count and seed.
 *
 * @returns number of files and their total size in bytes
 */
export async function makeSmallFiles(dir: string, count: number, seed = 3): Promise<{ files: number; bytes: number }> {
  const r = new Rng(seed);
  makeDirs(dir);
  const w = new SmallWriter();
  let i = 0;
  let bytes = 0;
  for (let k = 0; k < count; k++) {
    const leaf = Math.floor(k / 100);
    const rel = `g${String(Math.floor(leaf / 100)).padStart(3, '0')}/h${String(leaf % 100).padStart(2, '0')}/f${String(k).padStart(6, '0')}.xml`;
    const size = r.randint(1 << 10, 8 << 10);
    let data: Buffer;
    [data, i] = recordsBuffer(size, r, i);
    await w.write(path.join(dir, rel), data);
    bytes += size;
  }
  await w.drain();
  return { files: count, bytes };
}
