/**
 * Reads files and hashes their chunks for `verify --deep`: many reads queued on libuv's thread pool (4 threads, so 4 at
 * once on the disk), the hashing on this thread. Why not the worker pool: a disk answers several reads at once faster
 * than one after another (a cold 1 GiB company here, 1 MiB reads: one queued at a time 1.17 s, eight 0.70 s; `cat`
 * 0.8-1.2 s), hashing (xxh64, ~9 GB/s) leaves this thread time to spare, and no worker has to boot (~0.1 s) before the
 * first byte is checked. Whole cold `verify --deep` runs, medians of 3 alternated: 8 queued 1.10 s, 16 1.00 s, 32 0.91 s
 * but 0.83-1.11 s; cat 0.92 s; a pool of 8 threads instead of 4 made no clear difference (16 queued: 0.94-1.02 s).
 */
import fs from 'node:fs';
import type { Hasher } from '../chunk/hash.js';
import { openRegular } from '../util/open.js';
import { SnapferryError, ErrorCodes } from '../util/errors.js';

/**
 * Errors of open that say the path holds nothing readable as the file: reported as damage (repair replaces the file,
 * which needs no reading of it), not as a failure to check. A missing file, a link or a device in its place, or a file
 * this user may not read any more.
 */
const UNREADABLE = new Set(['ENOENT', 'ENOTDIR', 'ELOOP', 'ENXIO', 'ENODEV', 'EACCES', 'EPERM']);

/** What one file's chunks hashed to. */
export interface FileHashes {
  /** One id per chunk; 0 for a chunk the file does not hold whole (shorter file, or not a regular file). */
  ids: BigUint64Array;
  /** Bytes actually read (less than the sum of the lengths when the file is shorter). */
  readable: number;
}

/** Tuning of a FileHasher. */
export interface FileHasherOptions {
  /** Reads queued at once (libuv's pool runs 4 of them at a time). */
  inFlight?: number;
  /** Bytes per read (whole chunks: a piece ends at a chunk boundary; a larger chunk is read alone). */
  pieceBytes?: number;
}

interface OpenFile {
  path: string;
  lens: ArrayLike<number>;
  ids: BigUint64Array;
  readable: number;
  /** undefined: not opened yet; -1: not a regular file (or gone): every id stays 0. */
  fd?: number;
  /** Pieces not finished yet; the descriptor closes at 0. */
  pending: number;
  /** A shorter file: no later piece can hold a whole chunk. */
  ended: boolean;
  failed?: unknown;
  resolve: (r: FileHashes) => void;
  reject: (e: unknown) => void;
}

interface Piece {
  file: OpenFile;
  /** First chunk and one past the last. */
  first: number;
  end: number;
  offset: number;
  bytes: number;
}

/** Hashes the chunks of queued files, a bounded number of reads in flight (memory: inFlight x pieceBytes). */
export class FileHasher {
  private readonly queue: Piece[] = [];
  private head = 0;
  private active = 0;
  private readonly buffers: Buffer[] = [];
  private roomWaiters: Array<() => void> = [];
  private readonly inFlight: number;
  private readonly pieceBytes: number;

  constructor(
    private readonly hasher: Hasher,
    opts: FileHasherOptions = {},
  ) {
    this.inFlight = Math.max(1, opts.inFlight ?? 16);
    this.pieceBytes = Math.max(1, opts.pieceBytes ?? 1 << 20);
  }

  /**
   * Queues a file cut into chunks of `lens` (in order, from offset 0); resolves when every chunk is hashed. Rejects
   * with SNAPFERRY_E_IO, naming the file, when it cannot be read (EIO) or opened for want of descriptors; a file that is
   * missing, unreadable to this user, or not a regular file any more (a link, a folder, a FIFO), resolves with every id 0.
   */
  hashFile(path: string, lens: ArrayLike<number>): Promise<FileHashes> {
    return new Promise<FileHashes>((resolve, reject) => {
      const file: OpenFile = { path, lens, ids: new BigUint64Array(lens.length), readable: 0, pending: 0, ended: false, resolve, reject };
      let offset = 0;
      for (let first = 0; first < lens.length; ) {
        let end = first;
        let bytes = 0;
        while (end < lens.length && (end === first || bytes + lens[end]! <= this.pieceBytes)) bytes += lens[end++]!;
        this.queue.push({ file, first, end, offset, bytes });
        file.pending++;
        offset += bytes;
        first = end;
      }
      if (file.pending === 0) resolve({ ids: file.ids, readable: 0 });
      else this.pump();
    });
  }

  /** Pieces queued and not started. */
  get queued(): number {
    return this.queue.length - this.head;
  }

  /**
   * Resolves once fewer than `limit` pieces wait: a caller that queues a whole company (100,000 files: ~1.2 KB each
   * while queued) waits here so that what is queued stays bounded.
   */
  room(limit: number): Promise<void> {
    return this.queued < limit ? Promise.resolve() : new Promise<void>((resolve) => this.roomWaiters.push(resolve));
  }

  private pump(): void {
    while (this.active < this.inFlight && this.head < this.queue.length) {
      const piece = this.queue[this.head]!;
      this.queue[this.head++] = undefined as never;
      this.active++;
      this.readPiece(piece).finally(() => {
        this.active--;
        this.pump();
      });
    }
    if (this.head === this.queue.length) {
      this.queue.length = 0;
      this.head = 0;
    } else if (this.head > 4096 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    // Waiters re-check their limit themselves (room() again), so all are woken: few of them, one per verify walk.
    if (this.roomWaiters.length) {
      const waiters = this.roomWaiters;
      this.roomWaiters = [];
      for (const wake of waiters) wake();
    }
  }

  /** Reads and hashes one piece; never rejects (a failure is kept for the file's promise). */
  private async readPiece(p: Piece): Promise<void> {
    const f = p.file;
    let buf: Buffer | undefined;
    try {
      buf = this.takeBuffer(p.bytes);
      if (f.fd === undefined) {
        try {
          f.fd = openRegular(f.path);
        } catch (err) {
          // Any other refusal (no descriptors left, EIO) means it could not be checked.
          if (!UNREADABLE.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
          f.fd = -1;
        }
      }
      if (f.fd >= 0 && !f.ended && f.failed === undefined) {
        const got = await readFully(f.fd, buf, p.bytes, p.offset);
        let o = 0;
        for (let k = p.first; k < p.end; k++) {
          const e = o + p.file.lens[k]!;
          if (e > got) break;
          f.ids[k] = this.hasher.h64(buf.subarray(o, e));
          o = e;
        }
        f.readable += got;
        if (got < p.bytes) f.ended = true;
      }
    } catch (err) {
      f.failed ??= new SnapferryError(ErrorCodes.IO, `reading ${f.path}: ${(err as Error).message}`, { cause: err });
    } finally {
      if (buf) this.buffers.push(buf);
      if (--f.pending === 0) this.finish(f);
    }
  }

  private finish(f: OpenFile): void {
    if (f.fd !== undefined && f.fd >= 0) {
      try {
        fs.closeSync(f.fd);
      } catch (err) {
        // A close that fails (a network filesystem's write-back) must not leave the file's promise unsettled.
        f.failed ??= new SnapferryError(ErrorCodes.IO, `closing ${f.path}: ${(err as Error).message}`, { cause: err });
      }
    }
    if (f.failed !== undefined) f.reject(f.failed);
    else f.resolve({ ids: f.ids, readable: f.readable });
  }

  /** A free buffer of at least `n` bytes (pieces of one large chunk may need more than pieceBytes). */
  private takeBuffer(n: number): Buffer {
    const b = this.buffers.pop();
    if (b && b.length >= n) return b;
    return Buffer.allocUnsafe(Math.max(n, this.pieceBytes));
  }
}

/** Reads up to `n` bytes at `position`; fewer only at the end of the file. */
async function readFully(fd: number, buf: Buffer, n: number, position: number): Promise<number> {
  let done = 0;
  while (done < n) {
    const got = await new Promise<number>((resolve, reject) => fs.read(fd, buf, done, n - done, position + done, (err, bytes) => (err ? reject(err) : resolve(bytes))));
    if (got === 0) break;
    done += got;
  }
  return done;
}
