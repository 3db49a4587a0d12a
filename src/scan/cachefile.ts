/**
 * The serving site's scan cache on disk (serve --cache-dir): what each file's chunks were at a given size, mtime,
 * ctime and inode, plus the generation counter, so that a restarted site re-reads only files that changed and keeps
 * numbering generations where it left off. A file that does not decode, or was made for another folder or other chunk
 * parameters, is ignored (the site then simply reads everything once).
 */
import fs from 'node:fs';
import { createHash } from 'node:crypto';
import { Writer, Reader, ChunkArrays } from '../manifest/manifest.js';
import { idWords } from '../manifest/idindex.js';
import { type ChunkParams, sameChunkParams, validateChunkParams } from '../chunk/chunker.js';
import { writeFileDurableAsync } from '../store/state.js';
import { bootId } from '../store/cachelife.js';
import { nextCapacity, widen } from '../util/columns.js';

/** One cached file. */
export interface CachedFile {
  size: number;
  mtimeNs: bigint;
  ctimeNs: bigint;
  ino: bigint;
  lens: Uint32Array;
  ids: BigUint64Array;
}

/**
 * The cached files in columns: a row number per path and typed arrays of sizes and times, no object or BigInt kept per
 * file. With an object per file (and its ctime and inode as BigInts) 100,000 small files cost the site ~19 MB; the
 * rows ~8. A file's chunk arrays are the bytes its manifest entry holds (shared, not copied). Rows of deleted or
 * replaced paths stay until the next scan builds a fresh cache (a scan sets each path once).
 */
export class ScanCache {
  private readonly rows = new Map<string, number>();
  /** Each row's path: the very string the row is keyed by (see at). */
  private paths: string[] = [];
  private sizes = new Float64Array(0);
  private mtimes = new BigInt64Array(0);
  private ctimes = new BigInt64Array(0);
  private inos = new BigUint64Array(0);
  // The chunk arrays as buffer, byte offset and count (views are made when read: see PackedEntry).
  private lensOf: ArrayBufferLike[] = [];
  private idsOf: ArrayBufferLike[] = [];
  private lensAt = new Float64Array(0);
  private idsAt = new Float64Array(0);
  private counts = new Uint32Array(0);

  /** Number of paths cached. */
  get size(): number {
    return this.rows.size;
  }

  /** Caches (or replaces) a file's chunk lists with the stats they were made from. */
  set(path: string, f: CachedFile): void {
    // Always a new row (one Map operation, not two): a replaced path's old row is left behind, like a deleted one's.
    const row = this.paths.length;
    if (row === this.sizes.length) this.grow();
    this.rows.set(path, row);
    this.paths.push(path);
    this.lensOf[row] = f.lens.buffer;
    this.idsOf[row] = f.ids.buffer;
    this.lensAt[row] = f.lens.byteOffset;
    this.idsAt[row] = f.ids.byteOffset;
    this.counts[row] = f.lens.length;
    this.sizes[row] = f.size;
    this.mtimes[row] = f.mtimeNs;
    this.ctimes[row] = f.ctimeNs;
    this.inos[row] = f.ino;
  }

  /** Forgets a file. */
  delete(path: string): void {
    this.rows.delete(path);
  }

  /** Every cached path with its file. */
  *entries(): IterableIterator<[string, CachedFile]> {
    for (const row of this.rows.values()) yield [this.paths[row]!, this.at(row)];
  }

  /** Every cached path with its row (for matches(): no views made, as a stat sweep of every file needs none). */
  rowsOf(): IterableIterator<[string, number]> {
    return this.rows.entries();
  }

  /** A path's row, or undefined when it is not cached. */
  rowOf(path: string): number | undefined {
    return this.rows.get(path);
  }

  /** Whether a file's stats are still those its row's chunk lists were made from. */
  matches(row: number, st: { size: bigint; mtimeNs: bigint; ctimeNs: bigint; ino: bigint }): boolean {
    return this.sizes[row] === Number(st.size) && this.mtimes[row] === st.mtimeNs && this.ctimes[row] === st.ctimeNs && this.inos[row] === st.ino;
  }

  /**
   * A row's stats and chunk lists (a fresh object), with the path string the cache holds: a scan that keeps it for its
   * entry leaves one copy of each path in memory, not one per scan.
   */
  at(row: number): CachedFile & { path: string } {
    const n = this.counts[row]!;
    const lens = new Uint32Array(this.lensOf[row]!, this.lensAt[row]!, n);
    const ids = new BigUint64Array(this.idsOf[row]!, this.idsAt[row]!, n);
    return { path: this.paths[row]!, size: this.sizes[row]!, mtimeNs: this.mtimes[row]!, ctimeNs: this.ctimes[row]!, ino: this.inos[row]!, lens, ids };
  }

  private grow(): void {
    const n = nextCapacity(this.sizes.length);
    this.sizes = widen(this.sizes, n);
    this.mtimes = widen(this.mtimes, n);
    this.ctimes = widen(this.ctimes, n);
    this.inos = widen(this.inos, n);
    this.lensAt = widen(this.lensAt, n);
    this.idsAt = widen(this.idsAt, n);
    this.counts = widen(this.counts, n);
  }
}

/** What the cache file holds. */
export interface ScanCacheData {
  root: string;
  params: ChunkParams;
  generation: number;
  rootHash: string;
  files: ScanCache;
}

/**
 * SFC2: SFC1 with a SHA-256 of everything before it at the end. A file damaged on disk may still decode (a chunk length
 * one off): trusted, it gave a file a chunk list that does not add up to its size, which every branch refuses as
 * hostile data, and the site never read the file again (its stats still matched).
 */
const MAGIC = Buffer.from('SFC3');
/** The cache's form before it held the boot id. */
const LEGACY_MAGIC = Buffer.from('SFC2');
const DIGEST_BYTES = 32;

/** Writes the cache atomically. */
export function saveScanCache(file: string, d: ScanCacheData): Promise<void> {
  // Written through a bounded buffer: an image of the whole file (one id per chunk) would be as large as the cache.
  // All of it at once (the cache may change once this returns), flushed off the event loop.
  return writeFileDurableAsync(file, (sink) => {
    const digest = createHash('sha256');
    const write = (bytes: Uint8Array) => {
      digest.update(bytes);
      sink(bytes);
    };
    const w = new Writer(SAVE_BUFFER, write);
    w.bytes(MAGIC);
    w.str(d.root);
    w.str(bootId() ?? '');
    w.varint(d.params.minSize);
    w.varint(d.params.avgSize);
    w.varint(d.params.maxSize);
    w.varint(d.generation);
    w.str(d.rootHash);
    w.varint(d.files.size);
    for (const [p, f] of d.files.entries()) {
      w.str(p);
      w.varint(f.size);
      w.i64(f.mtimeNs);
      w.i64(f.ctimeNs);
      w.u64(f.ino);
      w.varint(f.lens.length);
      const words = idWords(f.ids);
      for (let i = 0; i < f.lens.length; i++) {
        w.varint(f.lens[i]!);
        w.u64At(words, i);
      }
    }
    w.finish();
    sink(digest.digest());
  });
}

/** Bytes saveScanCache buffers between writes. */
const SAVE_BUFFER = 256 << 10;

/**
 * Reads the cache for this folder, or undefined. With `params`, only a cache saved with those; without, one saved
 * with any valid parameters (a site that chooses them by the company's size takes the level it was using).
 */
export function loadScanCache(file: string, root: string, params?: ChunkParams): ScanCacheData | undefined {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch {
    return undefined;
  }
  try {
    if (buf.length < MAGIC.length + DIGEST_BYTES) return undefined;
    const body = buf.subarray(0, buf.length - DIGEST_BYTES);
    if (!createHash('sha256').update(body).digest().equals(buf.subarray(buf.length - DIGEST_BYTES))) return undefined;
    const r = new Reader(body);
    const magic = Buffer.from(r.bytes(4));
    // A cache of the version before (no boot id) is read for its chunk size and numbering, trusting no file: dropped
    // whole, an upgraded site chose the default chunk size again, and every chunk of a large company was new.
    const legacy = magic.equals(LEGACY_MAGIC);
    if (!legacy && !magic.equals(MAGIC)) return undefined;
    const savedRoot = r.str(4096);
    const savedBoot = legacy ? '' : r.str(128);
    const p = { minSize: r.varint(), avgSize: r.varint(), maxSize: r.varint() };
    if (savedRoot !== root || !(params ? sameChunkParams(p, params) : validateChunkParams(p))) return undefined;
    const generation = r.varint();
    const rootHash = r.str(128);
    // Saved before a reboot (a power cut, perhaps): no file is trusted by its stats. An application's page written
    // and fdatasync'd just before a power cut is on the disk while its new mtime and ctime may not be (they wait for
    // the filesystem's next journal commit): the file then holds other bytes under the very stats the cache saved,
    // and its old chunks were served for good. Every file is read once again; numbering goes on.
    const boot = bootId();
    if (!boot || savedBoot !== boot) return { root, params: p, generation, rootHash, files: new ScanCache() };
    const n = r.varint();
    const files = new ScanCache();
    const arrays = new ChunkArrays();
    for (let k = 0; k < n; k++) {
      const path = r.str(4096);
      const size = r.varint();
      const mtimeNs = r.i64();
      const ctimeNs = r.i64();
      const ino = r.u64();
      const c = r.varint(r.remaining);
      const { lens, ids } = arrays.take(c);
      const words = idWords(ids);
      for (let i = 0; i < c; i++) {
        lens[i] = r.varint();
        r.u64Into(words, i);
      }
      files.set(path, { size, mtimeNs, ctimeNs, ino, lens, ids });
    }
    if (r.remaining !== 0) return undefined;
    return { root, params: p, generation, rootHash, files };
  } catch {
    return undefined;
  }
}

/** The generation counter kept beside a scan cache file (`NAME.scan` -> `NAME.generation`). */
export function counterFileOf(cacheFile: string): string {
  return cacheFile.replace(/\.scan$/, '') + '.generation';
}

/** The counter's generation and the root hash it numbered, or undefined if missing or not in its form. */
export function readGenerationCounter(file: string): { generation: number; rootHash: string } | undefined {
  try {
    const m = /^(\d{1,15}) ([0-9a-f]{16,128})\n?$/.exec(fs.readFileSync(file, 'utf8'));
    return m ? { generation: Number(m[1]), rootHash: m[2]! } : undefined;
  } catch {
    return undefined;
  }
}

/** Writes the counter; a failure (a full disk) is let go: the next generation writes it again. */
export async function writeGenerationCounter(file: string, generation: number, rootHash: string): Promise<void> {
  try {
    await writeFileDurableAsync(file, `${generation} ${rootHash}\n`);
  } catch {
    /* see above */
  }
}
