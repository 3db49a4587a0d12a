/**
 * The site's chunk store: every chunk of a company compressed once, when it is indexed, as its own zstd frame, so that
 * a pull (or ten at once) only reads frames and seals them (casync/desync keep their chunks the same way). A run of
 * frames is a valid pack for the puller as it is: zstd decompresses concatenated frames in one call.
 *
 * On disk, a folder of segment files (`*.seg`, frames appended by the worker thread that compressed them) each with an
 * index (`*.idx`, 24-byte records: id, offset, length, xxh32 of the frame, the chunk's raw length) appended by this
 * class once the frames are written. A record past the end of its segment (a crash between the two) is ignored; a
 * frame whose xxh32 does not match is never sent (the caller falls back to reading the company folder). The store is
 * an accelerator only: a chunk it lacks is read and compressed on demand as before.
 */
import fs from 'node:fs';
import path from 'node:path';
import { IdIndex } from '../manifest/idindex.js';
import type { Hasher } from '../chunk/hash.js';
import { makeDirs } from '../util/mkdirs.js';
import { isAlive, removeTree, diskSpace, diskReserve, writeFileDurable } from './state.js';

const TEMP_PREFIX = 'snapferry-store-';
/**
 * A temporary store folder whose owner cannot be checked from here is left alone until unmarked this long: one that
 * says nothing of its owner (made by an older snapferry), or whose owner runs in another PID namespace (a container
 * sharing /tmp: its pid names another process here, or none).
 */
const UNCHECKED_GRACE_MS = 24 * 3600_000;
/** How often a running site marks its temporary store folder (its owner file's mtime) for such sweepers. */
const MARK_EVERY_MS = 3600_000;

/** This process's PID namespace ('pid:[4026531836]'), or undefined where /proc does not say. */
function pidNamespace(): string | undefined {
  try {
    return fs.readlinkSync('/proc/self/ns/pid');
  } catch {
    return undefined;
  }
}

/**
 * Whether a temporary store folder's owner no longer runs (or, not checkable, it was not marked for the grace period).
 * `ownNs`: this process's PID namespace.
 */
function staleStore(dir: string, ownNs: string | undefined): boolean {
  const ownerFile = path.join(dir, 'owner');
  let words: string[];
  try {
    words = fs.readFileSync(ownerFile, 'utf8').trim().split(/\s+/);
  } catch {
    return Date.now() - fs.statSync(dir).mtimeMs > UNCHECKED_GRACE_MS;
  }
  const owner = Number(words[0]);
  const ns = words[1];
  // A pid from another namespace names another process here (or none); a file that names no pid, none at all.
  if ((ns !== undefined && ns !== ownNs) || !(Number.isInteger(owner) && owner > 0)) {
    return Date.now() - fs.statSync(ownerFile).mtimeMs > UNCHECKED_GRACE_MS;
  }
  return !isAlive(owner);
}

/**
 * A temporary folder for the chunk stores of a site run without --cache-dir, marked with the site's pid and PID
 * namespace, and marked again every hour for as long as the site runs (call `stop()` when it ends). A site that stops
 * removes its folder; one that was killed cannot, so each new one first removes the folders whose owner no longer runs
 * (a store takes about a third of its company: killed sites must not fill the disk). Returns the folder and how many
 * stale ones were removed.
 */
export function makeTempStoreFolder(tmp: string): { dir: string; removed: number; stop: () => void } {
  const ns = pidNamespace();
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
      if (!staleStore(dir, ns)) continue;
      removeTree(dir);
      removed++;
    } catch {
      /* another user's, or gone meanwhile */
    }
  }
  const dir = fs.mkdtempSync(path.join(tmp, TEMP_PREFIX));
  const ownerFile = path.join(dir, 'owner');
  // Written whole under another name first (writeFileDurable): a sweeping site must never find it empty.
  writeFileDurable(ownerFile, `${process.pid}${ns ? ` ${ns}` : ''}\n`);
  const mark = setInterval(() => {
    const now = new Date();
    fs.promises.utimes(ownerFile, now, now).catch(() => undefined);
  }, MARK_EVERY_MS).unref();
  return { dir, removed, stop: () => clearInterval(mark) };
}

const RECORD = 24;
/** compact() rewrites the store once frames no generation uses weigh as much as those it uses, and at least this. */
const COMPACT_MIN_DEAD = 4 << 20;
/** Largest segment compact() writes (offsets are 32-bit). */
const COMPACT_SEGMENT_BYTES = 1 << 30;
/** Reads coalesced by compact(): runs of neighbouring frames up to this size. */
const COMPACT_READ_BYTES = 4 << 20;
/** Read handles a store keeps open at most (segments read from longer ago are opened again when next read). */
const MAX_READ_HANDLES = 32;
/** How long a deleted segment's open handle is kept for reads already under way. */
const RETIRE_MS = 10_000;

/**
 * Bytes the store writers of this process (fills on the worker threads, compactions) may still write, by filesystem
 * (st_dev): those of every company's store on one disk count against its reserve together (each counting only its own
 * took a shared --cache-dir past the reserve, up to ENOSPC).
 */
const writingByDisk = new Map<number, number>();

/** The filesystem of `dir` (st_dev), or -1 where it cannot be told (then all such stores count as one disk). */
function deviceOf(dir: string): number {
  try {
    return fs.statSync(dir).dev;
  } catch {
    return -1;
  }
}

/** Bytes store writers of this process may still write on the disk of `dir`. */
export function pendingWrites(dir: string): number {
  return writingByDisk.get(deviceOf(dir)) ?? 0;
}

/** Counts `bytes` about to be written on the disk of `dir` until the returned release is called (once). */
export function claimWrites(dir: string, bytes: number): () => void {
  const disk = deviceOf(dir);
  writingByDisk.set(disk, (writingByDisk.get(disk) ?? 0) + bytes);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    const left = (writingByDisk.get(disk) ?? 0) - bytes;
    if (left > 0) writingByDisk.set(disk, left);
    else writingByDisk.delete(disk);
  };
}

/** What compact() did. */
export interface CompactResult {
  compacted: boolean;
  bytesBefore: number;
  bytesAfter: number;
  chunksBefore: number;
  chunksAfter: number;
  /**
   * Set when the live frames could not be copied without taking the disk's reserve (bytes): the store dropped every
   * frame instead (`compacted` true, nothing left), its disk back at once, to be filled again with the live chunks.
   */
  reserveKept?: number;
}

/**
 * Writes index record i: the chunk's id, its frame's offset and length in the segment, the frame's xxh32, and the
 * chunk's raw length (ids are xxh64, which anyone who writes files at the site can make collide: a frame is served
 * for a chunk of its id and its length only). Stores written before the length was recorded hold 0 there.
 */
function putRecord(rec: Buffer, i: number, id: bigint, offset: number, clen: number, check: number, len: number): void {
  const r = i * RECORD;
  rec.writeBigUInt64LE(id, r);
  rec.writeUInt32LE(offset, r + 8);
  rec.writeUInt32LE(clen, r + 12);
  rec.writeUInt32LE(check, r + 16);
  rec.writeUInt32LE(len, r + 20);
}

/** The index file of segment `seg` (`NAME.seg` -> `NAME.idx`). */
function indexOf(seg: string): string {
  return seg.slice(0, -4) + '.idx';
}

/**
 * Appends whole index records to `file`, durably when asked. A write cut short (disk full: the part that fitted stays)
 * is cut back off, or every record appended after it would be read misaligned after a restart.
 */
async function appendRecords(file: string, records: Buffer, durable: boolean): Promise<void> {
  const fh = await fs.promises.open(file, 'a', 0o600);
  try {
    const { size } = await fh.stat();
    try {
      await fh.writeFile(records);
      if (durable) await fh.sync();
    } catch (err) {
      await fh.truncate(size).catch(() => undefined);
      throw err;
    }
  } finally {
    await fh.close();
  }
}

/** Flushes a folder's entries to disk without blocking the thread; a filesystem that refuses (EINVAL) is let be. */
async function fsyncDirAsync(dir: string): Promise<void> {
  const fh = await fs.promises.open(dir, 'r');
  try {
    await fh.sync();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
  } finally {
    await fh.close();
  }
}

/** Bytes of a file, 0 when it cannot be read. */
function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

/** Deletes segment `seg` of the store in dir, and its index. */
function removeSegment(dir: string, seg: string): void {
  fs.rmSync(path.join(dir, seg), { force: true });
  fs.rmSync(path.join(dir, indexOf(seg)), { force: true });
}

/** The in-memory index, one slot per stored chunk, column by column. */
interface SlotArrays {
  ids: BigUint64Array;
  /** The chunk's raw length. */
  len: Uint32Array;
  seg: Uint32Array;
  off: Uint32Array;
  clen: Uint32Array;
  check: Uint32Array;
}

function slotArrays(cap: number): SlotArrays {
  return { ids: new BigUint64Array(cap), len: new Uint32Array(cap), seg: new Uint32Array(cap), off: new Uint32Array(cap), clen: new Uint32Array(cap), check: new Uint32Array(cap) };
}

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
  private len = new Uint32Array(1024);
  private seg = new Uint32Array(1024);
  private off = new Uint32Array(1024);
  private clen = new Uint32Array(1024);
  private check = new Uint32Array(1024);
  private count = 0;
  private index = new IdIndex(this.ids, 1024);
  /** Segment names by number ('' for a number retired and free again). */
  private readonly segNames: string[] = [];
  private readonly segNo = new Map<string, number>();
  /** Numbers of retired segments, given to the next new ones: the numbers in use stay as few as the segments. */
  private readonly freeSegs: number[] = [];
  /** Makes the names of compaction's segments unique within a run. */
  private compactions = 0;
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
    makeDirs(dir, 0o700);
    const store = new ChunkStore(dir, hasher);
    const names = fs.readdirSync(dir).sort();
    const present = new Set(names);
    for (const name of names) {
      // Halves of a pair a crash left: a segment without its index (frames of a compaction cut short before it wrote
      // its index, copies of frames kept elsewhere; or a worker's frames the site never recorded) holds nothing that
      // can be found; an index without its segment (a deletion cut between the two files) points at nothing.
      const orphan = name.endsWith('.seg') ? !present.has(indexOf(name)) : name.endsWith('.idx') && !present.has(name.slice(0, -4) + '.seg');
      if (orphan) fs.rmSync(path.join(dir, name), { force: true });
    }
    // Room for every record at once (an upper bound: some are duplicates or were never written whole).
    let records = 0;
    for (const name of names) if (name.endsWith('.idx') && present.has(name.slice(0, -4) + '.seg')) records += fileSize(path.join(dir, name)) / RECORD;
    store.reserve(Math.floor(records));
    for (const name of names) {
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
      const lens = new Uint32Array(n);
      const offs = new Uint32Array(n);
      const clens = new Uint32Array(n);
      const checks = new Uint32Array(n);
      let k = 0;
      for (let i = 0; i < n; i++) {
        const r = i * RECORD;
        const o = records.readUInt32LE(r + 8);
        const c = records.readUInt32LE(r + 12);
        if (o + c > segSize) continue; // written to the index, but the frames never reached the disk
        // No length (an older store): never served, so its frames are stored again and the segment goes below.
        const len = records.readUInt32LE(r + 20);
        if (len === 0) continue;
        ids[k] = records.readBigUInt64LE(r);
        lens[k] = len;
        offs[k] = o;
        clens[k] = c;
        checks[k] = records.readUInt32LE(r + 16);
        k++;
      }
      // A segment that adds nothing (all its frames held by another: a compaction cut short after its copies were
      // indexed, before the old segments went) is deleted, or its bytes would stay on disk, unseen, forever.
      if (store.remember(segName, ids.subarray(0, k), lens, offs, clens, checks) === 0) store.retire(store.numberOf(segName));
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
   * Makes room for `n` more chunks at once. The index otherwise doubles as chunks arrive, and each doubling leaves the
   * old columns behind as holes the C heap keeps: a fill that knows how many it may add says so first.
   */
  reserve(n: number): void {
    if (this.count + n > this.ids.length) this.grow(this.count + n, true);
  }

  /**
   * Records frames a worker appended to segment `segName` (storeChunks), in memory and in the segment's index file.
   * Chunk i (id ids[i], lens[i] bytes raw) has its frame at offsets[i], clens[i] bytes, with xxh32 checks[i].
   */
  add(segName: string, ids: BigUint64Array, lens: Uint32Array, offsets: Uint32Array, clens: Uint32Array, checks: Uint32Array): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.remember(segName, ids, lens, offsets, clens, checks);
    const rec = Buffer.allocUnsafe(ids.length * RECORD);
    for (let i = 0; i < ids.length; i++) putRecord(rec, i, ids[i]!, offsets[i]!, clens[i]!, checks[i]!, lens[i]!);
    const file = path.join(this.dir, indexOf(segName));
    // Appends in order, one at a time; a failure (disk full) only loses the records, never serves a wrong frame.
    this.idxWrites = this.idxWrites.then(() => appendRecords(file, rec, false)).catch(() => undefined);
    return this.idxWrites;
  }

  /** Adds frames to the in-memory index; returns how many were new. */
  private remember(segName: string, ids: BigUint64Array, lens: Uint32Array, offsets: Uint32Array, clens: Uint32Array, checks: Uint32Array): number {
    const before = this.count;
    const s = this.numberOf(segName);
    if (this.count + ids.length > this.ids.length) this.grow(this.count + ids.length);
    for (let i = 0; i < ids.length; i++) {
      const k = this.count;
      this.ids[k] = ids[i]!;
      // Stored already (two threads compressed the same chunk; or a chunk of the same id and another length, a crafted
      // collision: the first one stays, and packs holding the other are made on demand).
      if (this.index.add(k) !== -1) continue;
      this.len[k] = lens[i]!;
      this.seg[k] = s;
      this.off[k] = offsets[i]!;
      this.clen[k] = clens[i]!;
      this.check[k] = checks[i]!;
      this.bytes += clens[i]!;
      this.count++;
    }
    return this.count - before;
  }

  /**
   * Grows the columns to hold `need` chunks: to the next doubling, or when `exact` to that many and at least a quarter
   * more than now (a reservation per generation would otherwise copy and re-index the whole store each time).
   */
  private grow(need: number, exact = false): void {
    let cap = this.ids.length;
    if (exact) cap = Math.max(need, Math.ceil(cap * 1.25));
    while (cap < need) cap *= 2;
    const a = slotArrays(cap);
    a.ids.set(this.ids.subarray(0, this.count));
    a.len.set(this.len.subarray(0, this.count));
    a.seg.set(this.seg.subarray(0, this.count));
    a.off.set(this.off.subarray(0, this.count));
    a.clen.set(this.clen.subarray(0, this.count));
    a.check.set(this.check.subarray(0, this.count));
    this.useSlots(a, this.count);
  }

  /** Switches to new slot arrays holding `count` chunks, and indexes them. */
  private useSlots(a: SlotArrays, count: number): void {
    Object.assign(this, a, { count });
    this.index = new IdIndex(a.ids, a.ids.length);
    for (let k = 0; k < count; k++) this.index.add(k);
  }

  /**
   * The stored frames of chunks `ranges` ([start, end) pairs over an id array given as `idWords`, their raw lengths
   * `lens`), concatenated in order: a pack. Undefined when any chunk is missing (or stored only with another length)
   * or its frame fails its check, or the store is closed.
   */
  async readFrames(words: Uint32Array, lens: Uint32Array, ranges: ReadonlyArray<readonly [number, number]>): Promise<Buffer | undefined> {
    if (this.closed) return undefined;
    const slots: Slot[] = [];
    let total = 0;
    for (const [s, e] of ranges) {
      for (let g = s; g < e; g++) {
        const k = this.index.findIn(words, g);
        if (k < 0 || this.len[k] !== lens[g]) return undefined;
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
      if (h) {
        // Most recently used last: the first is the one to close when too many are open.
        this.handles.delete(seg);
        this.handles.set(seg, h);
      } else {
        h = fs.promises.open(path.join(this.dir, this.segNames[seg]!), 'r');
        this.handles.set(seg, h);
        this.closeLeastUsed();
        // Only its own entry: the number may belong to a new segment by the time a failed open (its file retired
        // meanwhile) is known, and that segment's handle must stay where close() finds it.
        h.catch(() => {
          if (this.handles.get(seg) === h) this.handles.delete(seg);
        });
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

  /**
   * Keeps only the frames of the chunks a generation uses (ids `words`, `total` of them; see idWords), once the others
   * weigh as much as they do: without it every generation's new chunks stay forever. The live frames are copied as
   * they are (checked, not recompressed) into new segments, the index switches to them in one step, and the old
   * segments are deleted. Safe at any point: a crash leaves old and new segments both, loaded as one store (each id
   * once) and compacted again later. The caller runs no fill meanwhile (a worker may still hold an old segment open:
   * it starts a new one once it sees its file deleted). Reads under way keep their old segments until they finish.
   */
  async compact(words: Uint32Array, total: number): Promise<CompactResult> {
    const n = this.count;
    const result: CompactResult = { compacted: false, bytesBefore: this.bytes, bytesAfter: this.bytes, chunksBefore: n, chunksAfter: n };
    if (this.closed) return result;
    const live = new Uint8Array(n);
    let liveBytes = 0;
    for (let g = 0; g < total; g++) {
      const k = this.index.findIn(words, g);
      if (k >= 0 && !live[k]) {
        live[k] = 1;
        liveBytes += this.clen[k]!;
      }
    }
    const dead = this.bytes - liveBytes;
    if (dead < liveBytes || dead < COMPACT_MIN_DEAD) return result;
    // The live frames are copied before anything is deleted: only when the copy leaves the disk its reserve, as the
    // fill does (else it would write to ENOSPC, taking the space the company's own programs need, at every generation).
    const space = diskSpace(this.dir);
    if (space && space.free - pendingWrites(this.dir) - liveBytes < diskReserve(space.total)) {
      // No room to copy first. Skipping left such a store stuck for good: its fills stop at the reserve, so dead frames
      // (at least half of it) kept their disk for ever. All of it goes instead; the caller fills it again.
      for (let s = 0; s < this.segNames.length; s++) if (this.segNames[s]) this.retire(s);
      this.useSlots(slotArrays(1024), 0);
      this.bytes = 0;
      return { ...result, compacted: true, bytesAfter: 0, chunksAfter: 0, reserveKept: diskReserve(space.total) };
    }
    // The copy counts against the reserve until it is written, for fills and compactions of other stores on this disk.
    const release = claimWrites(this.dir, liveBytes);
    try {
      return await this.rewriteLive(live, n, result);
    } finally {
      release();
    }
  }

  /** compact()'s copy of the `live` frames among the first `n` slots into new segments, and the switch to them. */
  private async rewriteLive(live: Uint8Array, n: number, result: CompactResult): Promise<CompactResult> {
    // Live frames in segment and offset order, so that neighbours are read with one call.
    const order = new Uint32Array(n).map((_, k) => k).filter((k) => live[k] === 1);
    order.sort((x, y) => this.seg[x]! - this.seg[y]! || this.off[x]! - this.off[y]!);
    // Where each moved slot's frame now is (typed arrays: a store of a 4 GiB company has ~230,000 chunks).
    const movedSeg = new Int32Array(n).fill(-1);
    const movedOff = new Uint32Array(n);
    let movedCount = 0;
    const stamp = `${Date.now().toString(36)}-${process.pid}-compact`;
    let out: { name: string; fh: fs.promises.FileHandle; size: number; seg: number; records: Buffer[] } | undefined;
    const abandon = async () => {
      await out?.fh.close().catch(() => undefined);
      // No slot points into the new segments yet (the switch never happened).
      for (let s = 0; s < this.segNames.length; s++) if (this.segNames[s]!.startsWith(stamp)) this.retire(s);
      return result;
    };
    // Durably, frames first and then their index (a crash in between leaves records past the segment's end, which
    // open() skips): the old segments are deleted once the copies are in, and a power cut must not take both.
    const finish = async () => {
      if (!out) return;
      await out.fh.sync();
      await out.fh.close();
      await appendRecords(path.join(this.dir, indexOf(out.name)), Buffer.concat(out.records), true);
      out = undefined;
    };
    try {
      for (let i = 0; i < order.length; ) {
        const first = order[i]!;
        let end = i + 1;
        let len = this.clen[first]!;
        while (end < order.length && len < COMPACT_READ_BYTES && this.seg[order[end]!] === this.seg[first] && this.off[order[end]!] === this.off[first]! + len) len += this.clen[order[end++]!]!;
        const buf = Buffer.allocUnsafe(len);
        const ok = await this.readAt(this.seg[first]!, buf, this.off[first]!);
        if (this.closed) return abandon();
        if (!out || out.size + len > COMPACT_SEGMENT_BYTES) {
          await finish();
          const name = `${stamp}-${this.compactions++}.seg`;
          const fh = await fs.promises.open(path.join(this.dir, name), 'wx', 0o600);
          out = { name, fh, size: 0, seg: this.numberOf(name), records: [] };
        }
        let o = 0;
        for (let j = i; j < end; j++) {
          const k = order[j]!;
          const c = this.clen[k]!;
          const frame = buf.subarray(o, o + c);
          o += c;
          // A frame damaged on disk is dropped here (its chunk is compressed again on demand, or by the next fill).
          if (!ok || this.hasher.h32(frame) !== this.check[k]) continue;
          await out.fh.write(frame, 0, c, out.size);
          const rec = Buffer.allocUnsafe(RECORD);
          putRecord(rec, 0, this.ids[k]!, out.size, c, this.check[k]!, this.len[k]!);
          out.records.push(rec);
          movedSeg[k] = out.seg;
          movedOff[k] = out.size;
          movedCount++;
          out.size += c;
        }
        i = end;
      }
      await finish();
      await fsyncDirAsync(this.dir); // the new segments' names (not blocking the site's sessions meanwhile)
    } catch {
      // No room or no permission for the new segments: the store stays as it was (the new files are removed).
      return abandon();
    }
    if (this.closed) return abandon();
    // The switch, in one synchronous step: the moved slots, then whatever was added meanwhile, as it is.
    const oldSegs = new Set<number>();
    for (let k = 0; k < n; k++) oldSegs.add(this.seg[k]!);
    const kept = movedCount + (this.count - n);
    let cap = 1024;
    while (cap < kept) cap *= 2;
    const a = slotArrays(cap);
    let bytes = 0;
    let i = 0;
    for (let k = 0; k < this.count; k++) {
      const moved = k < n && movedSeg[k]! >= 0;
      if (k < n && !moved) continue;
      a.ids[i] = this.ids[k]!;
      a.len[i] = this.len[k]!;
      a.seg[i] = moved ? movedSeg[k]! : this.seg[k]!;
      a.off[i] = moved ? movedOff[k]! : this.off[k]!;
      a.clen[i] = this.clen[k]!;
      a.check[i] = this.check[k]!;
      bytes += a.clen[i]!;
      i++;
    }
    for (let k = n; k < this.count; k++) oldSegs.delete(this.seg[k]!);
    this.useSlots(a, kept);
    this.bytes = bytes;
    for (const s of oldSegs) this.retire(s);
    return { ...result, compacted: true, bytesAfter: bytes, chunksAfter: kept };
  }

  /** The number of segment `name`, given it on first sight (a retired one's number where one is free). */
  private numberOf(name: string): number {
    let s = this.segNo.get(name);
    if (s === undefined) {
      s = this.freeSegs.pop();
      if (s === undefined) s = this.segNames.push(name) - 1;
      else this.segNames[s] = name;
      this.segNo.set(name, s);
    }
    return s;
  }

  /**
   * Deletes segment s and its index, and frees its number (no slot points to it any more). Its open handle is closed
   * once reads under way had time to finish; reads find their segment's handle or name before they first wait, so a
   * number given to a new segment meanwhile is never read as the old one.
   */
  private retire(s: number): void {
    const name = this.segNames[s]!;
    removeSegment(this.dir, name);
    const h = this.handles.get(s);
    this.handles.delete(s);
    if (h) setTimeout(() => void h.then((fh) => fh.close()).catch(() => undefined), RETIRE_MS).unref();
    this.segNo.delete(name);
    this.segNames[s] = '';
    this.freeSegs.push(s);
  }

  /**
   * Closes the least recently used read handle once more than MAX_READ_HANDLES are open (a store of many segments,
   * after many restarts, would otherwise hold a descriptor per segment until its next compaction). A read under way
   * on it finishes first (FileHandle.close waits for it); the next read opens it again.
   */
  private closeLeastUsed(): void {
    if (this.handles.size <= MAX_READ_HANDLES) return;
    const [seg, h] = this.handles.entries().next().value as [number, Promise<fs.promises.FileHandle>];
    this.handles.delete(seg);
    void h.then((fh) => fh.close()).catch(() => undefined);
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
