/**
 * The manifest: one generation of a company as a sorted list of entries, in a canonical binary encoding whose
 * SHA-256 is the generation's root hash. Pure: no I/O. The decoder is written for hostile input (see docs/SECURITY.md):
 * every count and length is bounded before anything is allocated, and every path is checked by `checkTree`.
 */
import { createHash } from 'node:crypto';
import { fail, ErrorCodes } from '../util/errors.js';
import { idWords } from './idindex.js';
import { ChunkParams, DEFAULT_CHUNK_PARAMS, SEGMENT_SIZE, validateChunkParams } from '../chunk/chunker.js';

export type EntryKind = 'file' | 'dir' | 'symlink';

/** One path of a generation. Paths are relative, '/'-separated, never '.' or '..' components. */
export interface Entry {
  path: string;
  kind: EntryKind;
  /** Permission bits (mode & 0o7777). */
  mode: number;
  /** Modification time in nanoseconds since the epoch. */
  mtimeNs: bigint;
  /** File size in bytes (0 for dirs and symlinks). */
  size: number;
  /** Chunk lengths of a file, in order; they sum to size. */
  lens?: Uint32Array;
  /** Chunk ids (xxh64) of a file, parallel to lens. */
  ids?: BigUint64Array;
  /** Link target of a symlink (relative, staying inside the tree). */
  target?: string;
}

/**
 * An entry that keeps its chunk arrays as buffer, offset and count, and makes the typed-array views when they are read.
 * A view costs V8 ~92 bytes besides its data, two per file: for 100,000 small files that was 18 MB of a site's and of
 * a branch's heap, more than the entries themselves. Reading `lens` or `ids` makes a new view each time (~0.1 us), so
 * loops take them once; two reads are never the same object (compare with PackedEntry.sameChunks or sameChunkArrays,
 * not ===).
 */
export class PackedEntry implements Entry {
  kind: EntryKind;
  target: string | undefined = undefined;
  #lensOf: ArrayBufferLike | undefined = undefined;
  #idsOf: ArrayBufferLike | undefined = undefined;
  #lensAt = 0;
  #idsAt = 0;
  #lensCount = 0;
  #idsCount = 0;

  constructor(
    public path: string,
    kind: EntryKind,
    public mode: number,
    public mtimeNs: bigint,
    public size = 0,
  ) {
    this.kind = kind;
  }

  get lens(): Uint32Array | undefined {
    return this.#lensOf && new Uint32Array(this.#lensOf, this.#lensAt, this.#lensCount);
  }

  set lens(v: Uint32Array | undefined) {
    this.#lensOf = v?.buffer;
    this.#lensAt = v?.byteOffset ?? 0;
    this.#lensCount = v?.length ?? 0;
  }

  get ids(): BigUint64Array | undefined {
    return this.#idsOf && new BigUint64Array(this.#idsOf, this.#idsAt, this.#idsCount);
  }

  set ids(v: BigUint64Array | undefined) {
    this.#idsOf = v?.buffer;
    this.#idsAt = v?.byteOffset ?? 0;
    this.#idsCount = v?.length ?? 0;
  }

  /** Whether both entries' chunk arrays are the same bytes, without making views when both are PackedEntry. */
  static sameChunks(a: Entry, b: Entry): boolean {
    if (a instanceof PackedEntry && b instanceof PackedEntry) {
      return (
        a.#lensOf === b.#lensOf && a.#lensAt === b.#lensAt && a.#lensCount === b.#lensCount &&
        a.#idsOf === b.#idsOf && a.#idsAt === b.#idsAt && a.#idsCount === b.#idsCount
      );
    }
    return sameChunkArrays(a.lens, b.lens) && sameChunkArrays(a.ids, b.ids);
  }
}

/** Whether two typed arrays are views of the same bytes (the same chunk list, however many views were made of it). */
export function sameChunkArrays(a: ArrayBufferView | undefined, b: ArrayBufferView | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.buffer === b.buffer && a.byteOffset === b.byteOffset && a.byteLength === b.byteLength;
}

/** A decoded generation. */
export interface Manifest {
  params: ChunkParams;
  entries: Entry[];
}

/** Limits that a decoder enforces on what a peer sends. */
export const LIMITS = {
  maxEntries: 5_000_000,
  maxPathBytes: 4096,
  maxComponentBytes: 255,
  maxFileSize: 2 ** 50,
  maxChunkLen: 1 << 20,
  maxTotalChunks: 200_000_000,
};

const MAGIC = Buffer.from('SFM1');
const KIND_CODE: Record<EntryKind, number> = { file: 1, dir: 2, symlink: 3 };
const CODE_KIND: Record<number, EntryKind> = { 1: 'file', 2: 'dir', 3: 'symlink' };
const END = 0xff;
/** Which 32-bit half of a BigUint64Array element holds its low bits on this platform. */
const LO = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1 ? 0 : 1;
const HI = 1 - LO;

/**
 * Hands out the chunk arrays (lengths, ids) of many files as views of shared buffers: one pair of ArrayBuffers per
 * slab instead of one per file. V8 spends about 160 bytes on every ArrayBuffer besides its data; for 100,000 small
 * files that was a third of a site's heap. Views must not be posted to another thread (a structured clone copies the
 * whole slab): jobs take copies. Files with many chunks get arrays of their own.
 */
export class ChunkArrays {
  private lens = new Uint32Array(0);
  private ids = new BigUint64Array(0);
  private used = 0;
  private slab = 1 << 10;

  take(n: number): { lens: Uint32Array; ids: BigUint64Array } {
    if (n > 1 << 12) return { lens: new Uint32Array(n), ids: new BigUint64Array(n) };
    if (this.used + n > this.lens.length) {
      // Slabs grow with the manifest, so a small one wastes little; never smaller than what is asked for.
      this.slab = Math.min(this.slab * 2, 1 << 16);
      this.lens = new Uint32Array(Math.max(this.slab, n));
      this.ids = new BigUint64Array(Math.max(this.slab, n));
      this.used = 0;
    }
    const out = { lens: this.lens.subarray(this.used, this.used + n), ids: this.ids.subarray(this.used, this.used + n) };
    this.used += n;
    return out;
  }
}

/**
 * A byte buffer for encoders (also used for the site's scan cache file). Without a sink it grows to hold everything;
 * with one it hands each full buffer to the sink and starts again, so writing a file of any size takes `capacity`
 * bytes. Growing by doubling leaves the old buffers behind as holes the C heap keeps (a 4 GiB company's manifest went
 * through 64 KiB..4 MiB): callers that know the size say so.
 */
export class Writer {
  private buf: Buffer;
  private len = 0;
  /**
   * @param capacity bytes to start with (the whole output's size when the caller knows it)
   * @param sink where full buffers go (and any bytes() larger than the buffer); the bytes are only valid during the call
   */
  constructor(
    capacity = 1 << 16,
    private readonly sink?: (bytes: Uint8Array) => void,
  ) {
    this.buf = Buffer.allocUnsafe(Math.max(16, capacity));
  }
  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    if (this.sink) {
      this.drain();
      return; // every write but bytes() is at most 10 bytes, and the buffer holds at least 16
    }
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = Buffer.allocUnsafe(cap);
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }
  private drain(): void {
    if (this.len > 0) this.sink!(this.buf.subarray(0, this.len));
    this.len = 0;
  }
  u8(v: number): void {
    this.ensure(1);
    this.buf[this.len++] = v;
  }
  varint(v: number): void {
    this.ensure(10);
    while (v >= 0x80) {
      this.buf[this.len++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.len++] = v;
  }
  u64(v: bigint): void {
    this.ensure(8);
    this.buf.writeBigUInt64BE(v, this.len);
    this.len += 8;
  }
  /**
   * Writes id k of `words` (a BigUint64Array seen as 32-bit halves, see idindex.ts) as a big-endian u64, without
   * making a BigInt: a manifest has one id per chunk.
   */
  u64At(words: Uint32Array, k: number): void {
    this.ensure(8);
    this.buf.writeUInt32BE(words[2 * k + HI]!, this.len);
    this.buf.writeUInt32BE(words[2 * k + LO]!, this.len + 4);
    this.len += 8;
  }
  i64(v: bigint): void {
    this.ensure(8);
    this.buf.writeBigInt64BE(v, this.len);
    this.len += 8;
  }
  bytes(b: Uint8Array): void {
    if (this.sink && b.length > this.buf.length) {
      // Past the buffer: handed over as it is, so that the buffer never grows.
      this.drain();
      this.sink(b);
      return;
    }
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.varint(b.length);
    this.bytes(b);
  }
  /** Bytes held (not yet given to the sink). */
  get length(): number {
    return this.len;
  }
  /**
   * The bytes written; copied out when the buffer has grown well past them (a site keeps manifests for hours). With a
   * sink, gives it the rest and returns an empty buffer.
   */
  finish(): Buffer {
    if (this.sink) {
      this.drain();
      return Buffer.alloc(0);
    }
    const out = this.buf.subarray(0, this.len);
    return this.buf.length - this.len > 1 << 16 ? Buffer.from(out) : out;
  }
}

/** UTF-8 that throws on any invalid sequence (overlong, surrogate, beyond U+10FFFF) and keeps a leading BOM. */
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A bounds-checked reader; every overrun is a BAD_MANIFEST error, never a crash. */
export class Reader {
  pos = 0;
  constructor(private readonly buf: Uint8Array) {}
  private need(n: number): void {
    if (this.pos + n > this.buf.length) fail(ErrorCodes.BAD_MANIFEST, 'manifest truncated');
  }
  get remaining(): number {
    return this.buf.length - this.pos;
  }
  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  varint(max = Number.MAX_SAFE_INTEGER): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8();
      v += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        // Canonical encoding only: one manifest, one byte string, one root hash.
        if (b === 0 && i > 0) fail(ErrorCodes.BAD_MANIFEST, 'manifest varint not minimal');
        if (v > max) fail(ErrorCodes.BAD_MANIFEST, `manifest value ${v} over limit ${max}`);
        return v;
      }
      mul *= 0x80;
    }
    return fail(ErrorCodes.BAD_MANIFEST, 'manifest varint too long');
  }
  u64(): bigint {
    this.need(8);
    const v = Buffer.from(this.buf.buffer, this.buf.byteOffset + this.pos, 8).readBigUInt64BE(0);
    this.pos += 8;
    return v;
  }
  /** Reads a big-endian u64 into id k of `words` (a BigUint64Array seen as 32-bit halves), without making a BigInt. */
  u64Into(words: Uint32Array, k: number): void {
    this.need(8);
    const b = this.buf;
    const p = this.pos;
    words[2 * k + HI] = ((b[p]! << 24) | (b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!) >>> 0;
    words[2 * k + LO] = ((b[p + 4]! << 24) | (b[p + 5]! << 16) | (b[p + 6]! << 8) | b[p + 7]!) >>> 0;
    this.pos += 8;
  }
  /**
   * Reads a file's n (length varint, u64 id) pairs into `lens` and `words` (the ids as 32-bit halves): the bulk of a
   * manifest, one pair per chunk, in one loop over local variables (about 4x faster than a method call per field
   * before the JIT warms up, which is what a short command such as `verify` pays). Same checks as varint() and
   * u64Into(): truncation, canonical form, the limit.
   */
  chunkList(n: number, maxLen: number, lens: Uint32Array, words: Uint32Array): void {
    const b = this.buf;
    const end = b.length;
    let p = this.pos;
    for (let i = 0; i < n; i++) {
      let v = 0;
      let shift = 1;
      let k = 0;
      for (;;) {
        if (p >= end) fail(ErrorCodes.BAD_MANIFEST, 'manifest truncated');
        const c = b[p++]!;
        v += (c & 0x7f) * shift;
        if ((c & 0x80) === 0) {
          if (c === 0 && k > 0) fail(ErrorCodes.BAD_MANIFEST, 'manifest varint not minimal');
          break;
        }
        shift *= 0x80;
        if (++k === 8) fail(ErrorCodes.BAD_MANIFEST, 'manifest varint too long');
      }
      if (v > maxLen) fail(ErrorCodes.BAD_MANIFEST, `manifest value ${v} over limit ${maxLen}`);
      lens[i] = v;
      if (p + 8 > end) fail(ErrorCodes.BAD_MANIFEST, 'manifest truncated');
      words[2 * i + HI] = ((b[p]! << 24) | (b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!) >>> 0;
      words[2 * i + LO] = ((b[p + 4]! << 24) | (b[p + 5]! << 16) | (b[p + 6]! << 8) | b[p + 7]!) >>> 0;
      p += 8;
    }
    this.pos = p;
  }
  i64(): bigint {
    this.need(8);
    const v = Buffer.from(this.buf.buffer, this.buf.byteOffset + this.pos, 8).readBigInt64BE(0);
    this.pos += 8;
    return v;
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  str(maxBytes: number): string {
    const n = this.varint(maxBytes);
    const b = this.bytes(n);
    try {
      return strictUtf8.decode(b);
    } catch {
      return fail(ErrorCodes.BAD_MANIFEST, 'manifest string is not valid UTF-8');
    }
  }
}

/** Canonical encoding of a manifest. The same manifest always encodes to the same bytes. */
export function encodeManifest(m: Manifest): Buffer {
  // + 10: a varint asks for room for its longest form, the last one too.
  const w = new Writer(encodedSize(m) + 10);
  w.bytes(MAGIC);
  w.varint(m.params.minSize);
  w.varint(m.params.avgSize);
  w.varint(m.params.maxSize);
  for (const e of m.entries) {
    w.u8(KIND_CODE[e.kind]);
    w.str(e.path);
    w.varint(e.mode);
    w.i64(e.mtimeNs);
    if (e.kind === 'file') {
      w.varint(e.size);
      const lens = e.lens!;
      const words = idWords(e.ids!);
      w.varint(lens.length);
      for (let i = 0; i < lens.length; i++) {
        w.varint(lens[i]!);
        w.u64At(words, i);
      }
    } else if (e.kind === 'symlink') {
      w.str(e.target!);
    }
  }
  w.u8(END);
  return w.finish();
}

/** Bytes of encodeManifest(m), counted without encoding: its buffer is made once, at its final size. */
export function encodedSize(m: Manifest): number {
  let n = MAGIC.length + varintSize(m.params.minSize) + varintSize(m.params.avgSize) + varintSize(m.params.maxSize) + 1;
  for (const e of m.entries) {
    n += 1 + strSize(e.path) + varintSize(e.mode) + 8;
    if (e.kind === 'file') {
      const lens = e.lens!;
      n += varintSize(e.size) + varintSize(lens.length) + 8 * lens.length;
      for (let i = 0; i < lens.length; i++) n += varintSize(lens[i]!);
    } else if (e.kind === 'symlink') n += strSize(e.target!);
  }
  return n;
}

/** Bytes of Writer.varint(v). */
function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 0x80);
    n++;
  }
  return n;
}

/** Bytes of Writer.str(s). */
function strSize(s: string): number {
  const b = Buffer.byteLength(s, 'utf8');
  return varintSize(b) + b;
}

/** Decodes and fully validates a manifest a peer sent (or that was read back from our own state). */
export function decodeManifest(buf: Uint8Array): Manifest {
  const r = new Reader(buf);
  const magic = r.bytes(4);
  if (Buffer.compare(Buffer.from(magic), MAGIC) !== 0) fail(ErrorCodes.BAD_MANIFEST, 'not a snapferry manifest');
  const params: ChunkParams = { minSize: r.varint(1 << 20), avgSize: r.varint(1 << 20), maxSize: r.varint(1 << 20) };
  if (!validateChunkParams(params)) fail(ErrorCodes.BAD_MANIFEST, 'manifest has invalid chunk parameters');
  const entries: Entry[] = [];
  const arrays = new ChunkArrays();
  let totalChunks = 0;
  for (;;) {
    const code = r.u8();
    if (code === END) break;
    const kind = CODE_KIND[code];
    if (!kind) fail(ErrorCodes.BAD_MANIFEST, `manifest entry of unknown kind ${code}`);
    if (entries.length >= LIMITS.maxEntries) fail(ErrorCodes.LIMIT, `manifest has more than ${LIMITS.maxEntries} entries`);
    const path = r.str(LIMITS.maxPathBytes);
    const mode = r.varint(0o7777);
    const mtimeNs = r.i64();
    const e: Entry = new PackedEntry(path, kind, mode, mtimeNs);
    if (kind === 'file') {
      e.size = r.varint(LIMITS.maxFileSize);
      const n = r.varint(LIMITS.maxTotalChunks);
      // Each chunk takes at least 9 encoded bytes: refuse a count the remaining input cannot hold before allocating.
      if (n * 9 > r.remaining) fail(ErrorCodes.BAD_MANIFEST, 'manifest chunk count exceeds its data');
      // Nor more chunks than a file of this size can have (the check of each length below, counted up front): every
      // chunk shorter than the minimum ends a segment or the file. Refused before the arrays are allocated.
      if (n > Math.floor(e.size / Math.max(1, params.minSize)) + Math.ceil(e.size / SEGMENT_SIZE) + 1) {
        fail(ErrorCodes.BAD_MANIFEST, `more chunks than ${path} can have`);
      }
      totalChunks += n;
      if (totalChunks > LIMITS.maxTotalChunks) fail(ErrorCodes.LIMIT, 'manifest has too many chunks');
      const { lens, ids } = arrays.take(n);
      r.chunkList(n, params.maxSize, lens, idWords(ids));
      let sum = 0;
      for (let i = 0; i < n; i++) {
        const len = lens[i]!;
        if (len === 0) fail(ErrorCodes.BAD_MANIFEST, `empty chunk in ${path}`);
        // The chunker cuts short chunks only at a segment's end: anything else inflates the chunk count (and the
        // memory a branch spends on it) beyond what any real file produces.
        if (len < params.minSize && i < n - 1 && (sum + len) % SEGMENT_SIZE !== 0) {
          fail(ErrorCodes.BAD_MANIFEST, `chunk shorter than the minimum in ${path}`);
        }
        sum += len;
      }
      if (sum !== e.size) fail(ErrorCodes.BAD_MANIFEST, `chunk lengths of ${path} do not add up to its size`);
      e.lens = lens;
      e.ids = ids;
    } else if (kind === 'symlink') {
      e.target = r.str(LIMITS.maxPathBytes);
    }
    entries.push(e);
  }
  if (r.remaining !== 0) fail(ErrorCodes.BAD_MANIFEST, 'trailing bytes after manifest');
  const m = { params, entries };
  checkTree(m);
  return m;
}

/** SHA-256 of the canonical encoding, hex: the generation's root hash. */
export function rootHashOf(encoded: Uint8Array): string {
  return createHash('sha256').update(encoded).digest('hex');
}

/**
 * The path of a manifest entry under a folder. Entry paths are relative and '/'-separated with no '.', '..' or empty
 * components (checkTree), so plain concatenation is exact, and several times cheaper than path.join, which for
 * 100,000 files cost a branch over half a second of CPU.
 */
export function entryPath(root: string, rel: string): string {
  return `${root}/${rel}`;
}

/** mtimes set through utimes keep microseconds: compare at that precision. */
export function sameMtime(a: bigint, b: bigint): boolean {
  const d = a - b;
  return d < 2000n && d > -2000n;
}

const SECOND_NS = 1_000_000_000n;

/**
 * Whether mtime `onDisk`, read back from a file snapferry set to `wanted`, is what the filesystem keeps of it: the same
 * to the microsecond, or on a filesystem that keeps whole seconds (FAT, ext4 with 128-byte inodes, HFS+), `wanted`
 * cut to its second (or FAT's two). Compared exactly, every file of such a branch looked changed at every pull.
 */
export function sameStoredMtime(onDisk: bigint, wanted: bigint): boolean {
  if (sameMtime(onDisk, wanted)) return true;
  const cut = wanted - onDisk;
  return onDisk % SECOND_NS === 0n && cut > 0n && cut < 2n * SECOND_NS;
}

/** The index of the entry at `path` among `entries` (in comparePaths order, as a manifest keeps them), or -1. */
export function indexOfPath(entries: ReadonlyArray<{ path: string }>, path: string): number {
  let lo = 0;
  let hi = entries.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = comparePaths(entries[mid]!.path, path);
    if (c === 0) return mid;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/** Bytewise UTF-8 order, the order entries are kept in. */
export function comparePaths(a: string, b: string): number {
  // UTF-16 code units sort as UTF-8 bytes do, except surrogates against U+E000..U+FFFF: only then are bytes compared
  // (no buffers made for the common case; checkTree compares every neighbouring pair of a manifest).
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    if ((x >= 0xd800 && x < 0xe000) || (y >= 0xd800 && y < 0xe000)) return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
    return x < y ? -1 : 1;
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}

/** Whether one path component is acceptable on disk at a branch. */
function badComponent(c: string): string | undefined {
  if (c === '' || c === '.' || c === '..') return 'empty, "." or ".." component';
  if (c.includes('\0')) return 'NUL byte';
  if (c.includes('\\')) return 'backslash';
  // A UTF-16 code unit takes at most 3 bytes of UTF-8: only long names need counting.
  if (c.length * 3 > LIMITS.maxComponentBytes && Buffer.byteLength(c) > LIMITS.maxComponentBytes) return 'name too long';
  return undefined;
}

/**
 * Validates the shape of a tree: safe relative paths, strictly sorted (so no duplicates), no two paths equal but for
 * case, every parent present as a directory, every symlink target staying inside the tree. Throws UNSAFE_TREE.
 */
export function checkTree(m: Manifest): void {
  const dirs = new Set<string>(['']);
  const links = new Set<string>();
  const folded = new Set<string>();
  let prev: string | undefined;
  const unsafe = (e: Entry, why: string): never => fail(ErrorCodes.UNSAFE_TREE, `refused path ${JSON.stringify(e.path)}: ${why}`);
  for (const e of m.entries) {
    if (e.path.startsWith('/')) unsafe(e, 'absolute path');
    const slash = e.path.lastIndexOf('/');
    const parent = slash < 0 ? '' : e.path.slice(0, slash);
    // The parent is an entry checked before this one: only the last component is new. A parent that is not known
    // gets every component checked first, for the more telling message.
    const known = dirs.has(parent);
    for (const c of known ? [e.path.slice(slash + 1)] : e.path.split('/')) {
      const why = badComponent(c);
      if (why) unsafe(e, why);
    }
    if (prev !== undefined && comparePaths(prev, e.path) >= 0) unsafe(e, 'duplicate or out-of-order path');
    prev = e.path;
    const lower = e.path.toLowerCase();
    if (folded.has(lower)) unsafe(e, 'collides with another path that differs only in case');
    folded.add(lower);
    if (!known) unsafe(e, 'its parent is not a directory of the tree');
    if (e.kind === 'dir') dirs.add(e.path);
    if (e.kind === 'symlink') links.add(e.path);
  }
  // Symlink targets are checked once every path is known: a target must stay inside the tree lexically and must not
  // pass through another symlink on its way (a link to "l/.." where l -> "." would leave the tree on disk). The walk
  // follows a tree of the links' own paths, one step a component: linear in the target's length (joining the path so
  // far at each step was quadratic: a hostile site's 4 KiB target "a/a/.../a" cost 40 ms, a manifest of them hours).
  // Names are compared folded (foldName): where the filesystem folds case or normalization, "L/.." opens the link "l".
  if (links.size === 0) return;
  const linkTree = new LinkNode();
  for (const p of links) {
    let n = linkTree;
    for (const c of p.split('/')) n = n.child(foldName(c));
    n.isLink = true;
  }
  for (const e of m.entries) {
    if (e.kind !== 'symlink') continue;
    const t = e.target ?? '';
    if (t === '' || t.startsWith('/') || t.includes('\0')) unsafe(e, 'symlink target is absolute or empty');
    const slash = e.path.lastIndexOf('/');
    // Per folder of the way so far: its node in the links' tree, or undefined once off every link's path.
    const way: Array<LinkNode | undefined> = [linkTree];
    if (slash >= 0) for (const c of e.path.slice(0, slash).split('/')) way.push(way[way.length - 1]?.kids.get(foldName(c)));
    const comps = t.split('/');
    let last = comps.length - 1;
    while (last >= 0 && (comps[last] === '' || comps[last] === '.')) last--;
    for (let i = 0; i < comps.length; i++) {
      const c = comps[i]!;
      if (c === '..') {
        if (way.length === 1) unsafe(e, 'symlink points outside the tree');
        way.pop();
      } else if (c !== '.' && c !== '') {
        const n = way[way.length - 1]?.kids.get(foldName(c));
        way.push(n);
        if (i < last && n?.isLink) unsafe(e, 'symlink target passes through another symlink');
      }
    }
  }
}

/**
 * A name as a filesystem that folds case and Unicode normalization may take it (macOS APFS by default, ext4 with
 * casefold, SMB shares): "L" and "l", "e\u0301" and "\u00e9", "STRASSE" and "stra\u00dfe", "\u0391\u03a3" and "\u03b1\u03c3"
 * are one name there. Upper case first: it maps \u00df to SS and both sigmas to \u03a3 (ASCII names: no work beyond both case maps).
 */
function foldName(c: string): string {
  // eslint-disable-next-line no-control-regex
  return (/^[\x00-\x7f]*$/.test(c) ? c : c.normalize('NFC')).toUpperCase().toLowerCase().normalize('NFC');
}

/** A folder or link on the path of some symlink of a manifest (checkTree). */
class LinkNode {
  readonly kids = new Map<string, LinkNode>();
  isLink = false;
  child(name: string): LinkNode {
    let n = this.kids.get(name);
    if (!n) this.kids.set(name, (n = new LinkNode()));
    return n;
  }
}

/**
 * The mode a branch gives an entry: the site's permission bits and sticky bit, never setuid or setgid (a site must not
 * be able to plant set-id programs at a branch, which often runs as a service account or root).
 */
export function appliedMode(mode: number): number {
  return mode & 0o1777;
}

/** An empty manifest with default parameters. */
export function emptyManifest(params: ChunkParams = DEFAULT_CHUNK_PARAMS): Manifest {
  return { params, entries: [] };
}

/** Total bytes of the files of a manifest. */
export function totalBytes(m: Manifest): number {
  let n = 0;
  for (const e of m.entries) n += e.size;
  return n;
}

/** Whether two file entries have the same content (same chunk lists). */
export function sameContent(a: Entry, b: Entry): boolean {
  if (a.kind !== 'file' || b.kind !== 'file' || a.size !== b.size) return false;
  const al = a.lens!, bl = b.lens!, ai = a.ids!, bi = b.ids!;
  if (al.length !== bl.length) return false;
  for (let i = 0; i < al.length; i++) if (al[i] !== bl[i] || ai[i] !== bi[i]) return false;
  return true;
}

/**
 * Keeps the entries whose paths match any of the globs (plus the directories leading to them). Used by rules that
 * send or accept only some kinds of data (masters/**, transactions/**).
 */
export function filterManifest(m: Manifest, globs: string[]): Manifest {
  if (globs.length === 0) return m;
  const res = globs.map(globToRegExp);
  const keep = new Set(m.entries.filter((e) => res.some((re) => re.test(e.path))));
  const dirs = new Set<string>();
  for (const e of keep) {
    if (e.kind === 'dir') dirs.add(e.path);
    const parts = e.path.split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  }
  const entries = m.entries.filter((e) => (e.kind === 'dir' ? dirs.has(e.path) : keep.has(e)));
  return { params: m.params, entries };
}

/** `*` matches within a component, `**` across components, `?` one character. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        i++;
        if (glob[i + 1] === '/') {
          // "**/" matches zero or more whole folders, never part of a name.
          re += '(?:.*/)?';
          i++;
        } else re += '.*';
      } else re += '[^/]*';
    } else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}
