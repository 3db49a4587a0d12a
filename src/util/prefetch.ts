/** Reading ahead into the page cache what worker jobs will soon read or partly overwrite. */
import fs from 'node:fs';

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
export async function prefetch(ranges: Iterable<FileRange>, stop: () => boolean, concurrency = 16): Promise<void> {
  const fds = new Map<string, Promise<fs.promises.FileHandle | undefined>>();
  const it = ranges[Symbol.iterator]();
  const lane = async (): Promise<void> => {
    let buf = Buffer.allocUnsafe(64 << 10);
    for (let r = it.next(); !r.done && !stop(); r = it.next()) {
      const { path, offset, length } = r.value;
      let fh = fds.get(path);
      if (!fh) fds.set(path, (fh = fs.promises.open(path, 'r').catch(() => undefined)));
      const handle = await fh;
      if (!handle || length <= 0) continue;
      if (buf.length < length) buf = Buffer.allocUnsafe(length);
      await handle.read(buf, 0, length, offset).catch(() => undefined);
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, lane));
  } finally {
    for (const fh of fds.values()) await (await fh)?.close().catch(() => undefined);
  }
}
