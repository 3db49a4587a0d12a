/**
 * The site's chunk store: every chunk of a company compressed once, when it is indexed, as its own zstd frame, so that
 * a pull (or ten at once) only reads frames and seals them (casync/desync keep their chunks the same way). A run of
 * frames is a valid pack for the puller as it is: zstd decompresses concatenated frames in one call.
 *
 * On disk, a folder of segment files (`*.seg`, frames appended by the worker thread that compressed them) each with an
 * index (`*.idx`, 24-byte records: id, offset, length, xxh32 of the frame) appended by this class once the frames are
 * written. A record past the end of its segment (a crash between the two) is ignored; a frame whose xxh32 does not
 * match is never sent (the caller falls back to reading the company folder). The store is an accelerator only: a
 * chunk it lacks is read and compressed on demand as before.
 */
import fs from 'node:fs';
import path from 'node:path';
import { IdIndex } from '../manifest/idindex.js';
import type { Hasher } from '../chunk/hash.js';
import { isAlive, removeTree } from './state.js';

const TEMP_PREFIX = 'snapferry-store-';
/** A temporary store folder that says nothing of its owner is left alone for this long (made by an older snapferry). */
const UNOWNED_GRACE_MS = 24 * 3600_000;

/** Whether a temporary store folder's owner no longer runs (or, unowned, it is older than the grace period). */
function staleStore(dir: string): boolean {
  let owner: number;
  try {
    owner = Number.parseInt(fs.readFileSync(path.join(dir, 'owner'), 'utf8'), 10);
  } catch {
    return Date.now() - fs.statSync(dir).mtimeMs > UNOWNED_GRACE_MS;
  }
  return !(Number.isInteger(owner) && owner > 0 && isAlive(owner));
}

/**
 * A temporary folder for the chunk stores of a site run without --cache-dir, marked with the site's pid. A site that
 * stops removes its folder; one that was killed cannot, so each new one first removes the folders whose owner no longer
 * runs (a store takes about a third of its company: killed sites must not fill the disk). Returns the folder and how
 * many stale ones were removed.
 */
export function makeTempStoreFolder(tmp: string): { dir: string; removed: number } {
  let removed = 0;
  let names: string[] = [];
  try {
    names = fs.readdirSync(tmp).filter((n) => n.startsWith(TEMP_PREFIX));
  } catch {
    /* an unreadable temp folder: nothing to sweep */
  }
  for (const n of names) {
    const dir = path.join(tmp, n);
    try {
      if (!staleStore(dir)) continue;
      removeTree(dir);
      removed++;
    } catch {
      /* another user's, or gone meanwhile */
    }
  }
  const dir = fs.mkdtempSync(path.join(tmp, TEMP_PREFIX));
  fs.writeFileSync(path.join(dir, 'owner'), `${process.pid}\n`);
  return { dir, removed };
}

const RECORD = 24;

/** Where one stored chunk's frame is. */
interface Slot {
  seg: number;
  offset: number;
  clen: number;
  check: number;
}

/** A chunk store in one folder (see the module comment). Main thread only. */
export class ChunkStore {
  private ids = new BigUint64Array(1024);
  private seg = new Uint16Array(1024);
  private off = new Uint32Array(1024);
  private clen = new Uint32Array(1024);
  private check = new Uint32Array(1024);
  private count = 0;
  private index = new IdIndex(this.ids, 1024);
  private readonly segNames: string[] = [];
  private readonly segNo = new Map<string, number>();
  private readonly handles = new Map<number, Promise<fs.promises.FileHandle>>();
  private idxWrites: Promise<void> = Promise.resolve();
  private closed = false;
  /** Bytes of frames stored. */
  bytes = 0;

  private constructor(
    /** The store's folder. */
    readonly dir: string,
    private readonly hasher: Hasher,
  ) {}

  /** Opens (creating, owner-only) the store in dir and loads what earlier runs stored there. */
  static open(dir: string, hasher: Hasher): ChunkStore {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const store = new ChunkStore(dir, hasher);
    for (const name of fs.readdirSync(dir).sort()) {
      if (!name.endsWith('.idx')) continue;
      const segName = name.slice(0, -4) + '.seg';
      let segSize: number;
      let records: Buffer;
      try {
        segSize = fs.statSync(path.join(dir, segName)).size;
        records = fs.readFileSync(path.join(dir, name));
      } catch {
        continue; // an index without its segment holds nothing
      }
      const n = Math.floor(records.length / RECORD);
      const ids = new BigUint64Array(n);
      const offs = new Uint32Array(n);
      const clens = new Uint32Array(n);
      const checks = new Uint32Array(n);
      let k = 0;
      for (let i = 0; i < n; i++) {
        const r = i * RECORD;
        const o = records.readUInt32LE(r + 8);
        const c = records.readUInt32LE(r + 12);
        if (o + c > segSize) continue; // written to the index, but the frames never reached the disk
        ids[k] = records.readBigUInt64LE(r);
        offs[k] = o;
        clens[k] = c;
        checks[k] = records.readUInt32LE(r + 16);
        k++;
      }
      store.remember(segName, ids.subarray(0, k), offs, clens, checks);
    }
    return store;
  }

  /** Number of chunks stored. */
  get size(): number {
    return this.count;
  }

  /** Whether the store holds chunk k of an id array (given as `idWords`). */
  hasIn(words: Uint32Array, k: number): boolean {
    return this.index.findIn(words, k) >= 0;
  }

  /**
   * Records frames a worker appended to segment `segName` (storeChunks), in memory and in the segment's index file.
   * ids[i]'s frame is at offsets[i], clens[i] bytes, with xxh32 checks[i].
   */
  add(segName: string, ids: BigUint64Array, offsets: Uint32Array, clens: Uint32Array, checks: Uint32Array): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.remember(segName, ids, offsets, clens, checks);
    const rec = Buffer.allocUnsafe(ids.length * RECORD);
    for (let i = 0; i < ids.length; i++) {
      const r = i * RECORD;
      rec.writeBigUInt64LE(ids[i]!, r);
      rec.writeUInt32LE(offsets[i]!, r + 8);
      rec.writeUInt32LE(clens[i]!, r + 12);
      rec.writeUInt32LE(checks[i]!, r + 16);
      rec.writeUInt32LE(0, r + 20);
    }
    const file = path.join(this.dir, segName.slice(0, -4) + '.idx');
    // Appends in order, one at a time; a failure (disk full) only loses the record, never serves a wrong frame.
    this.idxWrites = this.idxWrites.then(() => fs.promises.appendFile(file, rec, { mode: 0o600 })).catch(() => undefined);
    return this.idxWrites;
  }

  private remember(segName: string, ids: BigUint64Array, offsets: Uint32Array, clens: Uint32Array, checks: Uint32Array): void {
    let s = this.segNo.get(segName);
    if (s === undefined) {
      s = this.segNames.push(segName) - 1;
      this.segNo.set(segName, s);
    }
    if (this.count + ids.length > this.ids.length) this.grow(this.count + ids.length);
    for (let i = 0; i < ids.length; i++) {
      const k = this.count;
      this.ids[k] = ids[i]!;
      if (this.index.add(k) !== -1) continue; // stored already (two threads compressed the same chunk)
      this.seg[k] = s;
      this.off[k] = offsets[i]!;
      this.clen[k] = clens[i]!;
      this.check[k] = checks[i]!;
      this.bytes += clens[i]!;
      this.count++;
    }
  }

  private grow(need: number): void {
    let cap = this.ids.length;
    while (cap < need) cap *= 2;
    const ids = new BigUint64Array(cap);
    ids.set(this.ids.subarray(0, this.count));
    const seg = new Uint16Array(cap);
    seg.set(this.seg.subarray(0, this.count));
    const off = new Uint32Array(cap);
    off.set(this.off.subarray(0, this.count));
    const clen = new Uint32Array(cap);
    clen.set(this.clen.subarray(0, this.count));
    const check = new Uint32Array(cap);
    check.set(this.check.subarray(0, this.count));
    Object.assign(this, { ids, seg, off, clen, check });
    this.index = new IdIndex(ids, cap);
    for (let k = 0; k < this.count; k++) this.index.add(k);
  }

  /**
   * The stored frames of chunks `ranges` ([start, end) pairs over an id array given as `idWords`), concatenated in
   * order: a pack. Undefined when any chunk is missing or its frame fails its check, or the store is closed.
   */
  async readFrames(words: Uint32Array, ranges: ReadonlyArray<readonly [number, number]>): Promise<Buffer | undefined> {
    if (this.closed) return undefined;
    const slots: Slot[] = [];
    let total = 0;
    for (const [s, e] of ranges) {
      for (let g = s; g < e; g++) {
        const k = this.index.findIn(words, g);
        if (k < 0) return undefined;
        slots.push({ seg: this.seg[k]!, offset: this.off[k]!, clen: this.clen[k]!, check: this.check[k]! });
        total += this.clen[k]!;
      }
    }
    const out = Buffer.allocUnsafe(total);
    const reads: Array<Promise<boolean>> = [];
    // Frames that follow each other in one segment (chunks compressed in file order) are read with one call.
    for (let i = 0, o = 0; i < slots.length; ) {
      const first = slots[i]!;
      let end = i + 1;
      let len = first.clen;
      while (end < slots.length && slots[end]!.seg === first.seg && slots[end]!.offset === first.offset + len) len += slots[end++]!.clen;
      reads.push(this.readAt(first.seg, out.subarray(o, o + len), first.offset));
      o += len;
      i = end;
    }
    if (!(await Promise.all(reads)).every(Boolean)) return undefined;
    // A frame damaged on disk is never sent (the puller would reject the pack and ask again, forever).
    for (let i = 0, o = 0; i < slots.length; i++) {
      const { clen, check } = slots[i]!;
      if (this.hasher.h32(out.subarray(o, o + clen)) !== check) return undefined;
      o += clen;
    }
    return out;
  }

  private async readAt(seg: number, into: Buffer, position: number): Promise<boolean> {
    try {
      let h = this.handles.get(seg);
      if (!h) {
        h = fs.promises.open(path.join(this.dir, this.segNames[seg]!), 'r');
        this.handles.set(seg, h);
        h.catch(() => this.handles.delete(seg));
      }
      const fh = await h;
      let done = 0;
      while (done < into.length) {
        const { bytesRead } = await fh.read(into, done, into.length - done, position + done);
        if (bytesRead === 0) return false;
        done += bytesRead;
      }
      return true;
    } catch {
      return false;
    }
  }

  /** Closes the segment files; later reads answer undefined. */
  async close(): Promise<void> {
    this.closed = true;
    await this.idxWrites;
    const hs = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(hs.map((h) => h.then((fh) => fh.close()).catch(() => undefined)));
  }
}
