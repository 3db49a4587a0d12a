/** Whole-file copies made the cheapest way the filesystem allows. */
import fs from 'node:fs';
import { SnapferryError, ErrorCodes } from './errors.js';
import { allZero } from './zeros.js';

/** The unit of direct I/O: a page, which is also a multiple of every disk's logical block. */
export const BLOCK = 4096;
/** Bytes moved per read and direct write. */
const WINDOW = 4 << 20;

/**
 * A buffer for direct I/O of `bytes` (a multiple of 64 KiB), which must start on a block boundary in memory: a Node
 * Buffer does not (malloc puts its header first), a WebAssembly memory does (it is mapped whole pages).
 */
export function pageAligned(bytes: number): Buffer {
  return Buffer.from(new WebAssembly.Memory({ initial: bytes / 65536 }).buffer);
}

/** Copy buffers kept for reuse: one per copy running. */
const alignedFree: Buffer[] = [];
function takeAligned(): Buffer {
  return alignedFree.pop() ?? pageAligned(WINDOW);
}

/**
 * Copies `src` to a new file `dst` that chunks will then be written into at `rewritten` (sorted, disjoint [start, end)
 * pairs, flat). Where the filesystem can, the copy bypasses the page cache (O_DIRECT) for every page that no chunk
 * will touch, and writes only the pages that chunks will touch through it. Why: where a page of memory the guest has
 * not used lately costs the host a fault on first write (a ballooned VM), copying a delta's 945 MB of changed files
 * into new cache pages took 1.7-2.2 s; written directly they never take cache pages. The pages chunks touch do go
 * through the cache, so that writing a chunk never has to read its edge pages back from the disk (which made an
 * all-direct copy slower than a plain one). A reflink is made instead where the filesystem has them (no bytes to copy
 * at all), and copySparse where it has no direct I/O.
 *
 * Only the first `limit` bytes are copied (the new version's size): a file that shrank from 100 MB to 10 MB took the
 * whole 100 MB, beyond what the pull had checked was free, and filled the disk at every attempt. A reflink copies no
 * bytes and is cut afterwards (the caller truncates).
 */
export async function copyAround(src: string, dst: string, rewritten: ArrayLike<number>, writeBack: boolean, limit = Infinity): Promise<void> {
  await fs.promises.rm(dst, { force: true });
  let cloned = false;
  try {
    await fs.promises.copyFile(src, dst, fs.constants.COPYFILE_FICLONE_FORCE | fs.constants.COPYFILE_EXCL);
    cloned = true;
  } catch {
    await fs.promises.rm(dst, { force: true });
  }
  if (cloned) return await cacheSpans(src, dst, rewritten, limit);
  // The source first: a missing one must leave no file behind.
  const from = await fs.promises.open(src, 'r');
  const open: fs.promises.FileHandle[] = [from];
  const buf = takeAligned();
  try {
    // With `writeBack` the source is read directly too: such pulls write their large files directly (a seed's long
    // runs, earlier copies), so the page cache seldom holds them, and reading them through it would fill new cache
    // pages (the cost above). Without, a seed wrote through the cache, which likely holds them still.
    const reader = writeBack ? await fs.promises.open(src, fs.constants.O_RDONLY | fs.constants.O_DIRECT) : from;
    if (reader !== from) open.push(reader);
    const direct = await fs.promises.open(dst, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_DIRECT, 0o600);
    open.push(direct);
    const viaCache = await fs.promises.open(dst, fs.constants.O_WRONLY);
    open.push(viaCache);
    const size = Math.min((await from.stat()).size, limit);
    const spans = cachedSpans(rewritten, size);
    const tail = Math.floor(size / BLOCK) * BLOCK;
    for (let pos = 0; pos < size; pos += WINDOW) {
      // Whole blocks asked for (direct reads must; WINDOW is whole blocks); the last read stops at the end of the file.
      const want = Math.min(WINDOW, size - pos);
      const n = Math.min(want, await readBlocks(reader, buf, Math.ceil(want / BLOCK) * BLOCK, pos));
      // Never a copy with a hole where the source ended early (the pull checks the source's stats after the copy too).
      if (n < want) throw new SnapferryError(ErrorCodes.STATE, `${src} shrank while it was copied`, { retryable: true });
      // Runs of zeros (holes of a sparse file, preallocated pages) are left holes of the new file: a sparse database
      // was copied dense, its whole apparent size asked of the branch's disk at every first delta. The rest goes
      // direct in as few writes as that allows (one for a window without such runs: many small writes between the
      // rewritten spans cost more than all of it), then the spans that chunks will be written into are written again
      // through the cache, whole pages, so that they are in it without a read (the direct write dropped whatever the
      // cache held there).
      if (allZero(buf.subarray(0, n))) continue;
      const directEnd = Math.min(pos + n, tail);
      for (const [a, b] of nonZeroExtents(buf, directEnd - pos)) await writeFull(direct, buf, a, b - a, pos + a);
      for (let i = firstEndingAfter(spans, pos); i < spans.length && spans[i]! < pos + n; i += 2) {
        const s = Math.max(spans[i]!, pos);
        const e = Math.min(spans[i + 1]!, pos + n);
        await writeFull(viaCache, buf, s - pos, e - s, s);
      }
    }
    // Its size, whatever windows of zeros at its end were left out (nothing else writes it yet).
    await viaCache.truncate(size);
  } catch (err) {
    // EINVAL: no direct I/O on this filesystem (at open, or at the first write): the plain copy.
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    await Promise.all(open.splice(0).map((fh) => fh.close()));
    return await copySparse(src, dst, limit, buf);
  } finally {
    await Promise.all(open.map((fh) => fh.close()));
    alignedFree.push(buf);
  }
}

/**
 * After a reflink: the pages chunks will be written into, written again through the page cache from the source (the
 * same bytes). A clone shares the source's blocks and holds none of its cached pages, so each chunk written into it
 * would first read its edge pages from the disk, one by one, on a worker waiting for them: a first delta on XFS spent
 * ~1 s of its transfer so (its block patches went at ~80 MB/s). Written whole here, they are in the cache (and no
 * longer shared: the chunks' writes would unshare them anyway).
 */
async function cacheSpans(src: string, dst: string, rewritten: ArrayLike<number>, limit: number): Promise<void> {
  const from = await fs.promises.open(src, 'r');
  const buf = takeAligned();
  try {
    const to = await fs.promises.open(dst, fs.constants.O_WRONLY);
    try {
      const size = Math.min((await from.stat()).size, limit);
      const spans = cachedSpans(rewritten, size);
      for (let i = 0; i < spans.length; i += 2) {
        // Spans past the source's end hold nothing to keep (the chunks fill them, or the caller's truncate does).
        const s = spans[i]!;
        const e = Math.min(spans[i + 1]!, size);
        for (let pos = s; pos < e; ) {
          const want = Math.min(e - pos, WINDOW);
          const { bytesRead } = await from.read(buf, 0, want, pos);
          if (bytesRead === 0) break;
          await writeFull(to, buf, 0, bytesRead, pos);
          pos += bytesRead;
        }
      }
    } finally {
      await to.close();
    }
  } finally {
    alignedFree.push(buf);
    await from.close();
  }
}

/** What copyAround leaves a hole: a block of this many zeros, at this alignment in the file (a multiple of BLOCK). */
const ZERO_BLOCK = 64 << 10;

/**
 * The [start, end) extents of buf's first `length` bytes (whole BLOCKs, as direct writes must be) that are not made of
 * ZERO_BLOCKs of zeros: one extent for data without such blocks.
 */
export function nonZeroExtents(buf: Uint8Array, length: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let at = 0; at < length; at += ZERO_BLOCK) {
    const end = Math.min(at + ZERO_BLOCK, length);
    if (end - at === ZERO_BLOCK && allZero(buf.subarray(at, end))) continue;
    const last = out[out.length - 1];
    if (last && last[1] === at) last[1] = end;
    else out.push([at, end]);
  }
  return out;
}

/**
 * Copies `src` (its first `limit` bytes at most) to a new file `dst` through the page cache, where there is no direct
 * I/O: 64 KiB blocks of zeros left holes, as copyAround leaves them (the kernel's copy fills a sparse file's holes on
 * some filesystems, after the pull's space check had counted them as free).
 */
export async function copySparse(src: string, dst: string, limit = Infinity, buf: Buffer = Buffer.allocUnsafe(WINDOW)): Promise<void> {
  await fs.promises.rm(dst, { force: true });
  const from = await fs.promises.open(src, 'r');
  try {
    const to = await fs.promises.open(dst, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    try {
      const size = Math.min(limit, (await from.stat()).size);
      // Zeros left out anywhere read back as zeros (the file is new); whole windows read keep the blocks at 64 KiB offsets.
      for (let pos = 0; pos < size; ) {
        const want = Math.min(buf.length, size - pos);
        const { bytesRead } = await from.read(buf, 0, want, pos);
        if (bytesRead === 0) throw new SnapferryError(ErrorCodes.STATE, `${src} shrank while it was copied`, { retryable: true });
        for (const [a, b] of nonZeroExtents(buf, bytesRead)) await writeFull(to, buf, a, b - a, pos + a);
        pos += bytesRead;
      }
      await to.truncate(size);
    } finally {
      await to.close();
    }
  } finally {
    await from.close();
  }
}

/** Index of the first span (flat pairs) that ends after `pos`. */
function firstEndingAfter(spans: number[], pos: number): number {
  let lo = 0;
  let hi = spans.length / 2;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (spans[2 * mid + 1]! <= pos) lo = mid + 1;
    else hi = mid;
  }
  return 2 * lo;
}

/**
 * The byte spans of a file of `size` bytes to copy through the page cache: every block a rewritten range touches, and
 * the last block when it is partial (a direct write is whole blocks). Sorted, disjoint, flat [start, end) pairs.
 */
export function cachedSpans(rewritten: ArrayLike<number>, size: number): number[] {
  const spans: number[] = [];
  const add = (s: number, e: number) => {
    if (spans.length > 0 && s <= spans[spans.length - 1]!) spans[spans.length - 1] = Math.max(spans[spans.length - 1]!, e);
    else spans.push(s, e);
  };
  for (let k = 0; k < rewritten.length; k += 2) {
    add(Math.floor(rewritten[k]! / BLOCK) * BLOCK, Math.ceil(rewritten[k + 1]! / BLOCK) * BLOCK);
  }
  const tail = Math.floor(size / BLOCK) * BLOCK;
  if (tail < size) add(tail, tail + BLOCK);
  return spans;
}

/**
 * Reads up to `length` bytes (whole blocks) at `position`, through a direct descriptor or a cached one. A read that
 * ends inside a block has reached the end of the file (and reading on from there would be unaligned for the first).
 */
async function readBlocks(fh: fs.promises.FileHandle, buf: Buffer, length: number, position: number): Promise<number> {
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, position + got);
    got += bytesRead;
    if (bytesRead === 0 || got % BLOCK !== 0) break;
  }
  return got;
}

async function writeFull(fh: fs.promises.FileHandle, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  let put = 0;
  while (put < length) {
    const { bytesWritten } = await fh.write(buf, offset + put, length - put, position + put);
    put += bytesWritten;
  }
}
