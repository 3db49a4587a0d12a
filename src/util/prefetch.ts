/** Reading ahead into the page cache what worker jobs will soon read or partly overwrite. */
import fs from 'node:fs';
import { OpenFiles } from './openfiles.js';

/** A byte range of a file. */
export interface FileRange {
  path: string;
  offset: number;
  length: number;
}

/**
 * Reads `ranges` (in the order given) through the page cache and drops the bytes, `concurrency` reads at a time, until
 * the ranges end or `stop()` says so. Why: worker jobs read scattered old chunks (patch signatures) and write chunks
 * whose edge pages the kernel must read first; from a cold cache each such read blocks a worker on the disk one at a
 * time, while the disk serves many at once. Best effort: a range that cannot be read is skipped (the job that needs
 * it reports its own error). Resolves when every read has ended; never rejects.
 */
export async function prefetch(ranges: Iterable<FileRange>, stop: () => boolean, concurrency = 16, opts: { probe?: number } = {}): Promise<void> {
  // close() waits for reads under way; a lane that still reads through one closed for another skips that range.
  const fds = new OpenFiles<string, Promise<fs.promises.FileHandle | undefined>>(MAX_OPEN, (fh) => void fh.then((h) => h?.close()).catch(() => undefined));
  let it: Iterator<FileRange> = ranges[Symbol.iterator]();
  if (opts.probe) {
    const probed: FileRange[] = [];
    if (cachedAlready(it, opts.probe, probed)) return;
    // Read ahead whole, the probed ranges too (the probe read their start only).
    it = chain(probed, it);
  }
  const lane = async (): Promise<void> => {
    let buf = Buffer.allocUnsafe(64 << 10);
    for (let r = it.next(); !r.done && !stop(); r = it.next()) {
      const { path, offset, length } = r.value;
      const handle = await fds.get(path, () => fs.promises.open(path, 'r').catch(() => undefined));
      if (!handle || length <= 0) continue;
      if (buf.length < length) buf = Buffer.allocUnsafe(length);
      await handle.read(buf, 0, length, offset).catch(() => undefined);
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, lane));
  } finally {
    for (const fh of fds.takeAll()) await (await fh)?.close().catch(() => undefined);
  }
}

/** Files prefetch keeps open at once (see OpenFiles): a delta of thousands of small files held one for each (EMFILE). */
const MAX_OPEN = 64;

/** A read of this long or longer (of at most PROBE_BYTES) came from the disk, not from the page cache. */
const CACHED_READ_NS = 50_000n;
const PROBE_BYTES = 16 << 10;

/**
 * Reads the start of the next `n` ranges synchronously, timing each: true when every one came back as fast as the page
 * cache answers (~5-15 us for 16 KiB here; a disk takes 100 us or more). Reading ahead what the cache holds already
 * only costs this thread: ~30 us of JavaScript a read, 0.2 s of a 1.7 s delta on a warm cache (6,000 reads), where a
 * cold one gains more than that. A range that cannot be read counts as not cached (the read-ahead then goes on).
 */
function cachedAlready(it: Iterator<FileRange>, n: number, probed: FileRange[]): boolean {
  const buf = Buffer.allocUnsafe(PROBE_BYTES);
  let all = true;
  for (let i = 0; i < n && all; i++) {
    const r = it.next();
    if (r.done) break;
    probed.push(r.value);
    const { path, offset, length } = r.value;
    let fd: number | undefined;
    try {
      fd = fs.openSync(path, 'r');
      const t0 = process.hrtime.bigint();
      fs.readSync(fd, buf, 0, Math.min(length, PROBE_BYTES), offset);
      if (process.hrtime.bigint() - t0 >= CACHED_READ_NS) all = false;
    } catch {
      all = false;
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  }
  return all;
}

/** The ranges of `first`, then the rest of `rest`. */
function* chain(first: FileRange[], rest: Iterator<FileRange>): Generator<FileRange> {
  yield* first;
  for (let r = rest.next(); !r.done; r = rest.next()) yield r.value;
}
