/**
 * The CPU-bound jobs that run on the worker pool: chunking and hashing segments, reading and compressing packs of
 * chunks, and opening, verifying and writing them at the puller. Each job is a plain function of its message so that
 * it runs the same inside a worker thread and in tests.
 */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { threadId } from 'node:worker_threads';
import { chunkLengths, ChunkParams } from '../chunk/chunker.js';
import { Hasher, idHex } from '../chunk/hash.js';
import { Compressor, Decompressor, compressBound, scratchSize } from './zstd.js';
import { fail, ErrorCodes } from '../util/errors.js';
import { inodeStamp, utimesArg } from '../util/stamp.js';
import { joinChunkLists } from './segments.js';
import { openRegular } from '../util/open.js';
import { BLOCK, pageAligned } from '../util/copy.js';
import { OpenFiles } from '../util/openfiles.js';
import { allZero } from '../util/zeros.js';

/** A level meaning: send as they are (where CPU, not the link, is the bottleneck). */
export const NO_COMPRESSION = -1000;

/** Chunk a segment of a file. */
export interface ChunkSegmentJob {
  kind: 'chunkSegment';
  path: string;
  offset: number;
  length: number;
  params: ChunkParams;
}
export interface ChunkSegmentResult {
  lens: Uint32Array;
  ids: BigUint64Array;
}

/** Chunk whole small files (each at most one segment). */
export interface ChunkFilesJob {
  kind: 'chunkFiles';
  paths: string[];
  sizes: Float64Array;
  params: ChunkParams;
}
/**
 * The chunks of every file of the batch, one after the other in two arrays (not two per file: see ChunkArrays), and
 * each file's chunk count, -1 for a file that could not be read as its size says.
 */
export interface ChunkFilesResult {
  lens: Uint32Array;
  ids: BigUint64Array;
  counts: Int32Array;
}

/** Read chunks (each at path/offset/len with an expected id), concatenate and compress them. */
export interface ReadPackJob {
  kind: 'readPack';
  paths: string[];
  /** Per chunk: index into paths. */
  pathIdx: Uint32Array;
  offsets: Float64Array;
  lens: Uint32Array;
  ids: BigUint64Array;
  level: number;
}
export type ReadPackResult = { payload: Buffer; compressed: boolean; rawLen: number } | { stale: string };

/**
 * Read chunks as readPack does, compress each one alone (one zstd frame per chunk, so that any run of stored chunks is
 * a valid pack) and append the frames to this thread's segment file in segDir (the site's chunk store).
 */
export interface StoreChunksJob extends Omit<ReadPackJob, 'kind'> {
  kind: 'storeChunks';
  segDir: string;
}
/**
 * Closes this thread's open segment if the store deleted it (a compaction): the descriptor would otherwise hold the
 * deleted file's disk, up to SEGMENT_LIMIT a thread, until the thread's next storeChunks job (the company's next change).
 */
export interface ReleaseSegmentJob {
  kind: 'releaseSegment';
}

/**
 * Where each chunk's frame went: segment file name (in segDir), offset, length and xxh32 of the frame. A chunk whose
 * file changed since the scan was not stored: its length is 0 (no zstd frame is empty), and so is every chunk's, with
 * no segment named, when none was stored.
 */
export type StoreChunksResult = { segment: string; offsets: Uint32Array; clens: Uint32Array; checks: Uint32Array };

/** Segment files grow to this size, then the thread starts a new one. */
export const SEGMENT_LIMIT = 256 << 20;

/** Decompress a pack, verify each chunk against its id and write it to every target. */
export interface WritePackJob {
  kind: 'writePack';
  payload: Uint8Array;
  /** Where the pack starts in payload (the decrypted frame is passed whole, header included, to avoid a copy). */
  payloadOffset?: number;
  compressed: boolean;
  rawLen: number;
  lens: Uint32Array;
  ids: BigUint64Array;
  /** Target files (created on first write: creation then runs on the workers, in parallel with the transfer). */
  paths: string[];
  /** Targets as flat triples: chunk index within the pack, index into paths, offset. */
  tItem: Uint32Array;
  tPath: Uint32Array;
  tOffset: Float64Array;
  /**
   * Per path: the final mode of a file this job completes (its last chunks are all here), -1 for the others; and its
   * mtime. A completed file is finished through its open descriptor (no finishFiles job, no lookups by path).
   */
  finishModes?: Int32Array;
  finishMtimes?: Float64Array;
  /** Per path: where runs of zeros may be left holes (Holes). A new file's long runs are also written directly (writeRun). */
  holes?: Holes;
  /**
   * The pull flushes before its commit: new files' long runs (Holes.from 0) go around the page cache. Not for one that
   * does not (`--no-fsync`): there the page cache is the fast way whenever it has pages to spare, and the data need not
   * reach the disk soon.
   */
  direct?: boolean;
}
export interface WritePackResult {
  written: number;
  /** Per path: "ino:ctimeNs" of a file finished here, '' for the others. */
  finished?: string[];
}

/**
 * Where a file in next/ may keep runs of zeros (64 KiB or more) as holes, not written, as the site's sparse files and
 * preallocated zero pages are (a 6 GiB file holding 42 MB took 6 GiB of the branch's disk). Per path: `from`, the offset
 * from which the file holds nothing yet (0 for a new file; a base copy's copied length; an interrupted attempt's file's
 * size), -1 where no such offset is known (zeros are written: the file may hold other bytes anywhere); and `size`, its
 * final size (the run that ends the file writes its last byte, which gives the file its length).
 */
export interface Holes {
  from: Float64Array;
  size: Float64Array;
}

/** Whether a run of `data` at `offset` of path `pi` is left a hole (nothing written, or only the file's last byte). */
function leaveHole(holes: Holes | undefined, pi: number, offset: number, data: Uint8Array): boolean {
  const from = holes?.from[pi] ?? -1;
  return from >= 0 && offset >= from && data.length >= HOLE_MIN && allZero(data);
}

/** Copy verified local byte ranges into place (reuse of chunks the puller already holds). */
export interface CopyRangesJob {
  kind: 'copyRanges';
  srcPaths: string[];
  srcIdx: Uint32Array;
  srcOffsets: Float64Array;
  lens: Uint32Array;
  /** Expected ids: a source that changed since it was recorded is detected and reported, never copied. */
  ids: BigUint64Array;
  dstPaths: string[];
  dstIdx: Uint32Array;
  dstOffsets: Float64Array;
  /** Per destination path (dstPaths): where zeros may be left holes (see WritePackJob.holes). */
  holes?: Holes;
}
export interface CopyRangesResult {
  /** Indices of ranges whose source no longer held the expected bytes (to be fetched instead). */
  failed: number[];
}

/** xxh32 signatures of fixed, file-aligned blocks of byte ranges (the puller's old bytes), one array per range. */
export interface BlockSigsJob {
  kind: 'blockSigs';
  ranges: Array<{ path: string; offset: number; length: number }>;
  blockSize: number;
}

/** One run of a patch: consecutive chunks of one file (offset of the first, each chunk's length and id). */
export interface PatchRun {
  path: string;
  offset: number;
  lens: Uint32Array;
  ids: BigUint64Array;
}

/** Server side of the patch level: compare runs' blocks with the puller's signatures. */
export interface MakePatchJob {
  kind: 'makePatch';
  runs: Array<PatchRun & { sigs: Uint32Array }>;
  blockSize: number;
  level: number;
  /**
   * The runs' chunks as the site's chunk store holds them (their frames, concatenated in run order), instead of read
   * from the files: the state of a file held back, whose bytes may be gone from it (see CompanyServer.sendPatch).
   */
  stored?: Uint8Array;
}
export type MakePatchResult = { bitmaps: Uint8Array[]; payload: Buffer; compressed: boolean; rawLen: number } | { stale: string };

/**
 * Puller side of the patch level: the old bytes of each run (same path, same offsets) + the differing blocks -> the
 * runs' chunks, each verified against its id and written to its targets.
 */
export interface ApplyPatchJob {
  kind: 'applyPatch';
  runs: Array<PatchRun & { bitmap: Uint8Array }>;
  blockSize: number;
  payload: Uint8Array;
  compressed: boolean;
  rawLen: number;
  paths: string[];
  /** Targets as triples: chunk index across all runs (in order), index into paths, offset. */
  tItem: Uint32Array;
  tPath: Uint32Array;
  tOffset: Float64Array;
}
export interface ApplyPatchResult {
  /** Chunks (indices across all runs) that did not verify (a signature collision or a changed base): to be fetched whole. */
  failed: number[];
  written: number;
}

/** Give finished files their final mode and mtime; answer their inode and ctime (for the applied record). */
export interface FinishFilesJob {
  kind: 'finishFiles';
  paths: string[];
  modes: Uint32Array;
  /** Seconds since the epoch, microsecond precision. */
  mtimes: Float64Array;
}
export interface FinishFilesResult {
  stats: string[];
}

export type Job = FinishFilesJob | ChunkFilesJob | ChunkSegmentJob | ReadPackJob | StoreChunksJob | ReleaseSegmentJob | WritePackJob | CopyRangesJob | BlockSigsJob | MakePatchJob | ApplyPatchJob;

/** Per-thread state the jobs reuse. */
export interface JobContext {
  hasher: Hasher;
  compressor: Compressor;
  decompressor: Decompressor;
  /** A read buffer reused by every job of the thread (never handed out of the job). */
  readBuffer?: Buffer;
  /** This thread's open chunk-store segment in each store folder (storeChunks). */
  segments?: Map<string, { dir: string; name: string; fd: number; size: number }>;
  /** Compressed output of storeChunks, reused. */
  storeBuffer?: Buffer;
  /** Page-aligned staging for direct writes (writeRun), reused. */
  alignedBuffer?: Buffer;
  /** Set once a direct open or write failed with EINVAL: this filesystem has no direct I/O. */
  noDirect?: boolean;
  /** A site's threads: the files they read are named by paths without links, checked at each open (openRegular). */
  exactPaths?: boolean;
}

/** The thread's read buffer, at least n bytes: reading into it instead of fresh buffers keeps memory flat. */
function readBuffer(ctx: JobContext, n: number): Buffer {
  if (!ctx.readBuffer || ctx.readBuffer.length < n) ctx.readBuffer = Buffer.allocUnsafe(scratchSize(n));
  return ctx.readBuffer.subarray(0, n);
}

/** Total length of a list of chunks. */
function sumOf(lens: Uint32Array): number {
  let n = 0;
  for (let i = 0; i < lens.length; i++) n += lens[i]!;
  return n;
}

function readExactly(fd: number, buf: Uint8Array, position: number): number {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

function writeAll(fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, position + done);
}

/** Files a job writes into, opened (and created, owner-only until commit sets the mode) once per job. */
/**
 * Files a job keeps open at once (see OpenFiles): a few jobs run at once on each worker thread, in a process whose
 * soft limit may be 1024.
 */
const OPEN_FILES_PER_JOB = 32;

/** OpenFiles of descriptors, for one job. */
const jobFiles = <K>() => new OpenFiles<K, number>(OPEN_FILES_PER_JOB, fs.closeSync);

class TargetFiles {
  private fds = jobFiles<string>();
  private directFds = jobFiles<string>();
  get(path: string): number {
    return this.fds.get(path, () => {
      try {
        return fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_CREAT, 0o600);
      } catch (err) {
        // A file finished (made read-only) by an earlier, interrupted attempt: it is ours to write again.
        if ((err as NodeJS.ErrnoException).code !== 'EACCES') throw err;
        fs.chmodSync(path, 0o600);
        return fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_CREAT, 0o600);
      }
    });
  }
  /** A second descriptor of `path` (which get() opened) that bypasses the page cache; throws EINVAL where it cannot. */
  direct(path: string): number {
    return this.directFds.get(path, () => {
      this.get(path);
      return fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
    });
  }
  close(): void {
    this.fds.close();
    this.directFds.close();
  }
}

/** Runs shorter than this are written through the page cache: a direct write waits for the disk. */
const DIRECT_MIN = 64 << 10;
/** Size of the page-aligned staging buffer of direct writes. */
const DIRECT_STAGE = 1 << 20;

/**
 * Writes `data` at `pos` of `path`. A long run marked `direct` (a file without a base, in a pull that flushes before
 * its commit) goes to the disk directly (O_DIRECT) for the pages it covers whole, and through the page cache for its
 * partial first and last pages, which other runs share (a direct write of a shared page would overwrite their bytes).
 * Why: such a pull's data must reach the disk before its commit anyway, and where a page of memory the guest has not
 * used lately costs the host a fault on first write (a ballooned VM), a seed's 1 GiB written through the cache cost
 * 1.4-3.2 s of system CPU here; direct writes take no cache pages. A filesystem without direct I/O (EINVAL) gets
 * every write through the cache from then on.
 */
function writeRun(ctx: JobContext, files: TargetFiles, path: string, data: Uint8Array, pos: number, direct: boolean): void {
  if (!direct || ctx.noDirect || data.length < DIRECT_MIN) return writeAll(files.get(path), data, pos);
  const first = Math.ceil(pos / BLOCK) * BLOCK;
  const end = Math.floor((pos + data.length) / BLOCK) * BLOCK;
  try {
    const fd = files.direct(path);
    const stage = (ctx.alignedBuffer ??= pageAligned(DIRECT_STAGE));
    for (let s = first; s < end; s += DIRECT_STAGE) {
      const n = Math.min(DIRECT_STAGE, end - s);
      stage.set(data.subarray(s - pos, s - pos + n));
      writeAll(fd, stage.subarray(0, n), s);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    ctx.noDirect = true;
    return writeAll(files.get(path), data, pos);
  }
  const fd = files.get(path);
  if (first > pos) writeAll(fd, data.subarray(0, first - pos), pos);
  if (pos + data.length > end) writeAll(fd, data.subarray(end - pos), end);
}

function chunkSegment(ctx: JobContext, j: ChunkSegmentJob): ChunkSegmentResult {
  const buf = readBuffer(ctx, j.length);
  const fd = openRegular(j.path, ctx.exactPaths);
  // A folder or FIFO put in the file's place since it was listed: a change, as the scanner handles changes.
  if (fd < 0) fail(ErrorCodes.UNSTABLE_FILE, `${j.path} is no longer a regular file`);
  try {
    const n = readExactly(fd, buf, j.offset);
    if (n !== j.length) fail(ErrorCodes.UNSTABLE_FILE, `${j.path} shrank while it was read`);
  } finally {
    fs.closeSync(fd);
  }
  const lensArr = chunkLengths(buf, j.params);
  const lens = Uint32Array.from(lensArr);
  const ids = new BigUint64Array(lens.length);
  let o = 0;
  for (let i = 0; i < lens.length; i++) {
    ids[i] = ctx.hasher.h64(buf.subarray(o, o + lens[i]!));
    o += lens[i]!;
  }
  return { lens, ids };
}

function chunkFiles(ctx: JobContext, j: ChunkFilesJob): ChunkFilesResult {
  const counts = new Int32Array(j.paths.length);
  const files = j.paths.map((path, i) => {
    try {
      const r = chunkSegment(ctx, { kind: 'chunkSegment', path, offset: 0, length: j.sizes[i]!, params: j.params });
      counts[i] = r.lens.length;
      return r;
    } catch {
      counts[i] = -1;
      return null; // gone or shrunk: the scanner re-reads it on its own
    }
  });
  return { ...joinChunkLists(files), counts };
}

/** Errors opening a listed file that mean it changed since the scan (gone, or a link, folder or socket in its place). */
const CHANGED_SINCE_SCAN = new Set(['ENOENT', 'ENOTDIR', 'ELOOP', 'ENXIO']);

/**
 * Reads the chunks of a readPack or storeChunks job into the thread's read buffer, each checked against its id.
 * A file changed since the scan ends the job with `{ stale }`, unless `skipped` is given (one byte per chunk): its
 * chunks that cannot be had are then marked 1 there, their place in the buffer left as it was, and the rest are read.
 */
function readChunks(ctx: JobContext, j: Omit<ReadPackJob, 'kind'>, skipped?: Uint8Array): Buffer | { stale: string } {
  const rawLen = sumOf(j.lens);
  const raw = readBuffer(ctx, rawLen);
  const fds = jobFiles<number>();
  try {
    let o = 0;
    for (let i = 0; i < j.lens.length; ) {
      const pi = j.pathIdx[i]!;
      // Chunks that follow each other in one file are read with one call (a pack is mostly such runs).
      let end = i + 1;
      let runLen = j.lens[i]!;
      while (end < j.lens.length && j.pathIdx[end] === pi && j.offsets[end] === j.offsets[i]! + runLen) runLen += j.lens[end++]!;
      const run = raw.subarray(o, o + runLen);
      let whole = false;
      try {
        const fd = fds.get(pi, () => {
          const opened = openRegular(j.paths[pi]!, ctx.exactPaths);
          // Gone, or no longer a regular file (a folder, FIFO or link put in its place): changed since the scan.
          if (opened < 0) throw new Stale();
          return opened;
        });
        whole = readExactly(fd, run, j.offsets[i]!) === runLen;
      } catch (err) {
        // Gone, or a link put in its place: changed since the scan. Anything else (out of descriptors, an I/O
        // error) is the site's own failure, not a change: reported as STALE it sent branches after phantom changes.
        if (!(err instanceof Stale) && !CHANGED_SINCE_SCAN.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      }
      if (!whole && !skipped) return { stale: j.paths[pi]! };
      // The company is live: a chunk whose bytes no longer match the scan means the file changed since. Never send it.
      let c = 0;
      for (let k = i; k < end; k++) {
        if (!whole || ctx.hasher.h64(run.subarray(c, c + j.lens[k]!)) !== j.ids[k]) {
          if (!skipped) return { stale: j.paths[pi]! };
          skipped[k] = 1;
        }
        c += j.lens[k]!;
      }
      o += runLen;
      i = end;
    }
  } finally {
    fds.close();
  }
  return raw;
}

/** A file found changed since the scan while opening it (see readChunks). */
class Stale extends Error {}

function readPack(ctx: JobContext, j: ReadPackJob): ReadPackResult {
  const raw = readChunks(ctx, j);
  if (!Buffer.isBuffer(raw)) return raw;
  const rawLen = raw.length;
  const packed = j.level !== NO_COMPRESSION ? ctx.compressor.compress(raw, j.level) : undefined;
  // The read buffer stays here; what leaves the job is a copy (compressed output is already one).
  return packed ? { payload: packed, compressed: true, rawLen } : { payload: Buffer.from(raw), compressed: false, rawLen };
}

/**
 * The thread's segment in store folder `dir` with room left, opened (created, owner-only) when there is none or it is
 * full. One per folder: a thread storing two companies' chunks in turn (a site serving both, one --cache-dir) would
 * otherwise start a new segment at every switch, a file and a reader's descriptor more per generation.
 */
function segmentOf(ctx: JobContext, dir: string): { dir: string; name: string; fd: number; size: number } {
  const segments = (ctx.segments ??= new Map());
  const cur = segments.get(dir);
  // A segment the store compacted away (deleted) is not appended to: its frames would be lost with it.
  if (cur && cur.size < SEGMENT_LIMIT && fs.fstatSync(cur.fd).nlink > 0) return cur;
  if (cur) fs.closeSync(cur.fd);
  segments.delete(dir);
  // Unique across threads, processes and restarts: a segment is only ever appended to by the thread that made it.
  const name = `${Date.now().toString(36)}-${process.pid}-${threadId}-${crypto.randomBytes(4).toString('hex')}.seg`;
  const fd = fs.openSync(path.join(dir, name), fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  const seg = { dir, name, fd, size: 0 };
  segments.set(dir, seg);
  return seg;
}

/** The releaseSegment job: true when a deleted segment's descriptor was closed. */
function releaseSegment(ctx: JobContext): boolean {
  let released = false;
  for (const [dir, cur] of ctx.segments ?? []) {
    if (fs.fstatSync(cur.fd).nlink > 0) continue;
    fs.closeSync(cur.fd);
    ctx.segments!.delete(dir);
    released = true;
  }
  return released;
}

function storeChunks(ctx: JobContext, j: StoreChunksJob): StoreChunksResult {
  const n = j.lens.length;
  // One file changed since the scan leaves its own chunks out, not the job's: a job spans many small files, and a
  // file that keeps changing would otherwise keep up to a job's worth of other files' chunks out of the store at every
  // generation (each then compressed again for every pull that asks for it).
  const skipped = new Uint8Array(n);
  const raw = readChunks(ctx, j, skipped) as Buffer;
  const offsets = new Uint32Array(n);
  const clens = new Uint32Array(n);
  const checks = new Uint32Array(n);
  let bound = 0;
  for (let i = 0; i < n; i++) if (!skipped[i]) bound += compressBound(j.lens[i]!);
  if (bound === 0) return { segment: '', offsets, clens, checks };
  if (!ctx.storeBuffer || ctx.storeBuffer.length < bound) ctx.storeBuffer = Buffer.allocUnsafe(scratchSize(bound));
  const out = ctx.storeBuffer;
  const seg = segmentOf(ctx, j.segDir);
  let r = 0;
  let o = 0;
  for (let i = 0; i < n; i++) {
    const len = j.lens[i]!;
    if (!skipped[i]) {
      const c = ctx.compressor.compressInto(out.subarray(o), raw.subarray(r, r + len), j.level);
      offsets[i] = seg.size + o;
      clens[i] = c;
      checks[i] = ctx.hasher.h32(out.subarray(o, o + c));
      o += c;
    }
    r += len;
  }
  try {
    writeAll(seg.fd, out.subarray(0, o), seg.size);
  } catch (err) {
    // Disk full mid-write: give back what this write took (the frames before it are indexed and stay).
    try {
      fs.ftruncateSync(seg.fd, seg.size);
    } catch {
      /* nothing more to do */
    }
    throw err;
  }
  seg.size += o;
  return { segment: seg.name, offsets, clens, checks };
}

function writePack(ctx: JobContext, j: WritePackJob): WritePackResult {
  const expected = sumOf(j.lens);
  if (expected !== j.rawLen) fail(ErrorCodes.BAD_CHUNK, 'pack size does not match the chunks asked for');
  const payload = j.payload.subarray(j.payloadOffset ?? 0);
  const raw = j.compressed ? ctx.decompressor.decompressScratch(payload, j.rawLen) : payload;
  if (raw.length !== expected) fail(ErrorCodes.BAD_CHUNK, 'pack size does not match the chunks asked for');
  const starts = new Float64Array(j.lens.length);
  let o = 0;
  for (let i = 0; i < j.lens.length; i++) {
    starts[i] = o;
    const got = ctx.hasher.h64(raw.subarray(o, o + j.lens[i]!));
    if (got !== j.ids[i]) fail(ErrorCodes.BAD_CHUNK, `chunk ${idHex(j.ids[i]!)} failed verification (got ${idHex(got)})`);
    o += j.lens[i]!;
  }
  // Targets come in pack order; runs that are contiguous both in the pack and in one file become one write.
  let written = 0;
  let t = 0;
  const n = j.tItem.length;
  const files = new TargetFiles();
  try {
    while (t < n) {
      const pi = j.tPath[t]!;
      const fileStart = j.tOffset[t]!;
      const rawStart = starts[j.tItem[t]!]!;
      let len = j.lens[j.tItem[t]!]!;
      let u = t + 1;
      while (u < n && j.tPath[u] === pi && j.tOffset[u] === fileStart + len && starts[j.tItem[u]!] === rawStart + len) {
        len += j.lens[j.tItem[u]!]!;
        u++;
      }
      const run = raw.subarray(rawStart, rawStart + len);
      if (leaveHole(j.holes, pi, fileStart, run)) writeHole(files, j.paths[pi]!, run, fileStart, j.holes!.size[pi]!);
      else writeRun(ctx, files, j.paths[pi]!, run, fileStart, j.direct === true && j.holes?.from[pi] === 0);
      written += len;
      t = u;
    }
    return { written, finished: j.finishModes ? finishOpen(files, j.paths, j.finishModes, j.finishMtimes!) : undefined };
  } finally {
    files.close();
  }
}

/** Runs of zeros at least this long are left holes where a file holds nothing yet (Holes). */
const HOLE_MIN = 64 << 10;

/**
 * A run of zeros left a hole: nothing written, but for the file's last byte where the run ends it, which makes the file
 * its full length (a write never shrinks a file, as a truncate racing with another thread's copy into it could).
 * Writing the last byte of every run took a block per 64 KiB of zeros (1/16 of them).
 */
function writeHole(files: TargetFiles, p: string, zeros: Uint8Array, offset: number, size: number): void {
  if (offset + zeros.length === size) writeAll(files.get(p), zeros.subarray(zeros.length - 1), offset + zeros.length - 1);
}

/** Final mode and mtime of the completed files among `paths`, through their open descriptors; their inode:ctime. */
function finishOpen(files: TargetFiles, paths: string[], modes: Int32Array, mtimes: Float64Array): string[] {
  return paths.map((p, i) => {
    if (modes[i]! < 0) return '';
    const fd = files.get(p);
    fs.fchmodSync(fd, modes[i]!);
    fs.futimesSync(fd, utimesArg(mtimes[i]!), utimesArg(mtimes[i]!));
    const st = fs.fstatSync(fd, { bigint: true });
    return inodeStamp(st);
  });
}

function copyRanges(ctx: JobContext, j: CopyRangesJob): CopyRangesResult {
  const failed: number[] = [];
  const fds = new Map<number, number>();
  const files = new TargetFiles();
  let buf = Buffer.allocUnsafe(1 << 16);
  try {
    for (let i = 0; i < j.lens.length; i++) {
      const len = j.lens[i]!;
      if (buf.length < len) buf = Buffer.allocUnsafe(len);
      const part = buf.subarray(0, len);
      const si = j.srcIdx[i]!;
      let fd = fds.get(si);
      if (fd === undefined) {
        try {
          // A FIFO or device put in a local source's place would block this thread on open: not a source then.
          fd = openRegular(j.srcPaths[si]!);
        } catch {
          fd = -1;
        }
        fds.set(si, fd);
      }
      if (fd < 0 || readExactly(fd, part, j.srcOffsets[i]!) !== len || ctx.hasher.h64(part) !== j.ids[i]) {
        failed.push(i);
        continue;
      }
      const di = j.dstIdx[i]!;
      if (leaveHole(j.holes, di, j.dstOffsets[i]!, part)) writeHole(files, j.dstPaths[di]!, part, j.dstOffsets[i]!, j.holes!.size[di]!);
      else writeAll(files.get(j.dstPaths[di]!), part, j.dstOffsets[i]!);
    }
  } finally {
    for (const fd of fds.values()) if (fd >= 0) fs.closeSync(fd);
    files.close();
  }
  return { failed };
}

/** Signatures of the blocks of [offset, offset+length) aligned to absolute multiples of blockSize. */
export function blockSigsOf(ctx: JobContext, bytes: Uint8Array, offset: number, blockSize: number): Uint32Array {
  const sigs = new Uint32Array(blockCount(offset, bytes.length, blockSize));
  // blockLayout's blocks, walked without building its arrays (a patch request has tens of thousands).
  for (let k = 0, pos = 0; k < sigs.length; k++) {
    const next = Math.min(bytes.length, blockStart(offset, k + 1, blockSize));
    sigs[k] = ctx.hasher.h32(bytes.subarray(pos, next));
    pos = next;
  }
  return sigs;
}

/** Number of blocks blockLayout gives a range. */
function blockCount(offset: number, length: number, blockSize: number): number {
  return length === 0 ? 0 : Math.floor((offset + length - 1) / blockSize) - Math.floor(offset / blockSize) + 1;
}

/** Start (relative to offset) of block k of a range at offset: 0, then each absolute multiple of blockSize. */
function blockStart(offset: number, k: number, blockSize: number): number {
  return k === 0 ? 0 : (Math.floor(offset / blockSize) + k) * blockSize - offset;
}

/** Block boundaries (relative to offset) of a range, aligned to absolute file offsets: pages rewritten in place line up. */
export function blockLayout(offset: number, length: number, blockSize: number): { starts: number[]; ends: number[] } {
  const n = blockCount(offset, length, blockSize);
  const starts: number[] = [];
  const ends: number[] = [];
  for (let k = 0; k < n; k++) {
    starts.push(blockStart(offset, k, blockSize));
    ends.push(Math.min(length, blockStart(offset, k + 1, blockSize)));
  }
  return { starts, ends };
}

/**
 * Reads ranges of files into one buffer (the thread's read buffer: valid until the job returns), one descriptor per
 * file. Each range gets its bytes and the count actually read (short where the file ends early; -1 where it cannot
 * be opened or is not a regular file).
 */
function readRanges(ctx: JobContext, ranges: ReadonlyArray<{ path: string; offset: number; length: number }>): { bytes: Buffer[]; got: number[] } {
  let total = 0;
  for (const r of ranges) total += r.length;
  const buf = readBuffer(ctx, total);
  const fds = new Map<string, number>();
  const bytes: Buffer[] = [];
  const got: number[] = [];
  try {
    let at = 0;
    for (const r of ranges) {
      const b = buf.subarray(at, at + r.length);
      at += r.length;
      let fd = fds.get(r.path);
      if (fd === undefined) {
        try {
          // A folder, FIFO or link in the file's place reads as no file at all (never EISDIR, never a blocked open).
          fd = openRegular(r.path, ctx.exactPaths);
        } catch {
          fd = -1;
        }
        fds.set(r.path, fd);
      }
      bytes.push(b);
      got.push(fd < 0 ? -1 : readExactly(fd, b, r.offset));
    }
  } finally {
    for (const fd of fds.values()) if (fd >= 0) fs.closeSync(fd);
  }
  return { bytes, got };
}

function blockSigs(ctx: JobContext, j: BlockSigsJob): Uint32Array[] {
  const { bytes, got } = readRanges(ctx, j.ranges);
  return j.ranges.map((r, i) => {
    const b = bytes[i]!;
    const n = Math.max(0, got[i]!);
    // What the old file cannot fill counts as zeros, and a block starting there gets signature 0: it will be sent.
    if (n < b.length) b.fill(0, n);
    const sigs = blockSigsOf(ctx, b, r.offset, j.blockSize);
    // (Rare: the old file shrank since the plan.)
    if (n < b.length) for (let k = 0; k < sigs.length; k++) if (blockStart(r.offset, k, j.blockSize) >= n) sigs[k] = 0;
    return sigs;
  });
}

function makePatch(ctx: JobContext, j: MakePatchJob): MakePatchResult {
  const bitmaps: Uint8Array[] = [];
  const parts: Uint8Array[] = [];
  const ranges = j.runs.map((run) => ({ path: run.path, offset: run.offset, length: sumOf(run.lens) }));
  const read = j.stored ? storedRanges(ctx, j.stored, ranges) : readRanges(ctx, ranges);
  // Frames that do not hold the chunks: as a file that changed (each chunk's hash is checked below too).
  if (!read) return { stale: j.runs[0]!.path };
  for (let r = 0; r < j.runs.length; r++) {
    const run = j.runs[r]!;
    const bytes = read.bytes[r]!;
    const length = bytes.length;
    if (read.got[r] !== length) return { stale: run.path };
    for (let i = 0, o = 0; i < run.lens.length; o += run.lens[i]!, i++) {
      if (ctx.hasher.h64(bytes.subarray(o, o + run.lens[i]!)) !== run.ids[i]) return { stale: run.path };
    }
    const { starts, ends } = blockLayout(run.offset, length, j.blockSize);
    if (run.sigs.length !== starts.length) fail(ErrorCodes.PROTOCOL, 'patch request has the wrong number of block signatures');
    const bitmap = new Uint8Array(Math.ceil(starts.length / 8));
    for (let b = 0; b < starts.length; b++) {
      const block = bytes.subarray(starts[b]!, ends[b]!);
      if (ctx.hasher.h32(block) !== run.sigs[b]) {
        bitmap[b >> 3]! |= 1 << (b & 7);
        parts.push(block);
      }
    }
    bitmaps.push(bitmap);
  }
  const raw = Buffer.concat(parts);
  const packed = raw.length > 64 && j.level !== NO_COMPRESSION ? ctx.compressor.compress(raw, j.level) : undefined;
  return packed
    ? { bitmaps, payload: packed, compressed: true, rawLen: raw.length }
    : { bitmaps, payload: raw, compressed: false, rawLen: raw.length };
}

/**
 * What readRanges answers, from stored frames (decompressed whole: exactly the ranges' bytes, or a decompression
 * error) instead of the files: each range's bytes in turn. Undefined when the frames do not hold those bytes.
 */
function storedRanges(ctx: JobContext, frames: Uint8Array, ranges: ReadonlyArray<{ length: number }>): { bytes: Buffer[]; got: number[] } | undefined {
  let raw: Buffer;
  try {
    raw = ctx.decompressor.decompress(frames, ranges.reduce((n, r) => n + r.length, 0));
  } catch {
    return undefined;
  }
  const bytes: Buffer[] = [];
  let o = 0;
  for (const r of ranges) bytes.push(raw.subarray(o, (o += r.length)));
  return { bytes, got: ranges.map((r) => r.length) };
}

function applyPatch(ctx: JobContext, j: ApplyPatchJob): ApplyPatchResult {
  const payload = j.compressed ? ctx.decompressor.decompress(j.payload, j.rawLen) : Buffer.from(j.payload);
  if (payload.length !== j.rawLen) fail(ErrorCodes.BAD_CHUNK, 'patch size does not match');
  // Rebuild every run first (a malformed patch fails before anything is written), then write what verified.
  const chunks: Buffer[] = [];
  const failed: number[] = [];
  let p = 0;
  // Each run's old bytes, read where the run is rebuilt (what the old file cannot fill is zeros).
  const read = readRanges(ctx, j.runs.map((run) => ({ path: run.path, offset: run.offset, length: sumOf(run.lens) })));
  for (let r = 0; r < j.runs.length; r++) {
    const run = j.runs[r]!;
    const out = read.bytes[r]!;
    const length = out.length;
    out.fill(0, Math.max(0, read.got[r]!));
    const { starts, ends } = blockLayout(run.offset, length, j.blockSize);
    if (run.bitmap.length !== Math.ceil(starts.length / 8)) fail(ErrorCodes.BAD_CHUNK, 'patch bitmap has the wrong size');
    for (let b = 0; b < starts.length; b++) {
      if (run.bitmap[b >> 3]! & (1 << (b & 7))) {
        const n = ends[b]! - starts[b]!;
        if (p + n > payload.length) fail(ErrorCodes.BAD_CHUNK, 'patch is shorter than its bitmaps say');
        payload.copy(out, starts[b]!, p, p + n);
        p += n;
      }
    }
    for (let i = 0, o = 0; i < run.lens.length; o += run.lens[i]!, i++) {
      const chunk = out.subarray(o, o + run.lens[i]!);
      // A block-signature collision or an old file that changed under us gives a wrong chunk: caught here, fetched whole.
      if (ctx.hasher.h64(chunk) !== run.ids[i]) failed.push(chunks.length);
      chunks.push(chunk);
    }
  }
  if (p !== payload.length) fail(ErrorCodes.BAD_CHUNK, 'patch is longer than its bitmaps say');
  const bad = new Set(failed);
  const files = new TargetFiles();
  let written = 0;
  try {
    for (let t = 0; t < j.tItem.length; t++) {
      const i = j.tItem[t]!;
      if (bad.has(i)) continue;
      if (i >= chunks.length) fail(ErrorCodes.INTERNAL, 'patch target beyond its runs');
      writeAll(files.get(j.paths[j.tPath[t]!]!), chunks[i]!, j.tOffset[t]!);
      written += chunks[i]!.length;
    }
  } finally {
    files.close();
  }
  return { failed, written };
}

function finishFiles(j: FinishFilesJob): FinishFilesResult {
  const stats: string[] = [];
  for (let i = 0; i < j.paths.length; i++) {
    const p = j.paths[i]!;
    // A file that got no chunk (empty) exists already; chunks created all others.
    fs.chmodSync(p, j.modes[i]!);
    fs.utimesSync(p, utimesArg(j.mtimes[i]!), utimesArg(j.mtimes[i]!));
    const st = fs.lstatSync(p, { bigint: true });
    stats.push(inodeStamp(st));
  }
  return { stats };
}

/** Runs one job. */
export function runJob(ctx: JobContext, job: Job): unknown {
  switch (job.kind) {
    case 'finishFiles':
      return finishFiles(job);
    case 'chunkFiles':
      return chunkFiles(ctx, job);
    case 'chunkSegment':
      return chunkSegment(ctx, job);
    case 'readPack':
      return readPack(ctx, job);
    case 'storeChunks':
      return storeChunks(ctx, job);
    case 'releaseSegment':
      return releaseSegment(ctx);
    case 'writePack':
      return writePack(ctx, job);
    case 'copyRanges':
      return copyRanges(ctx, job);
    case 'blockSigs':
      return blockSigs(ctx, job);
    case 'makePatch':
      return makePatch(ctx, job);
    case 'applyPatch':
      return applyPatch(ctx, job);
  }
}
