/**
 * What a page of file data costs this machine to write, read off before the runs and printed with the machine's line.
 *
 * Why: on some virtual machines (seen on a Firecracker guest whose balloon reports free memory back to the host) a page
 * the guest has not touched lately costs a fault in the host when it is first written: 1 GiB written into a new file
 * took 1.4-1.9 s of system time there against 0.13 s when the pages had just been freed by deleting another file.
 * The tools then differ by how much fresh memory they touch, not only by the work they do: rsync replaces a changed
 * file by a rename as soon as it is written, so the old file's pages are freed and reused by the next one, while a
 * snapferry delta keeps the old generation whole until it commits. Printing both figures lets a reader tell such a
 * machine from one where writing a page is cheap (the ratios of the first delta and the seed differ between them).
 */
import fs from 'node:fs';
import path from 'node:path';

/** Seconds per GiB for a new file's writes, first as they come, then again right after that file was deleted. */
export interface PageCacheProbe {
  firstSecondsPerGiB: number;
  rewriteSecondsPerGiB: number;
}

/** Writes `mib` MiB to a new file in `dir` twice (deleting it between), timing each; leaves nothing behind. */
export function probePageCache(dir: string, mib = 256): PageCacheProbe {
  const block = Buffer.alloc(4 << 20, 0x5a);
  const file = path.join(dir, `pagecache-probe-${process.pid}`);
  const once = (): number => {
    const t0 = process.hrtime.bigint();
    const fd = fs.openSync(file, 'wx');
    try {
      for (let written = 0; written < mib << 20; written += block.length) fs.writeSync(fd, block);
    } finally {
      fs.closeSync(fd);
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    fs.rmSync(file, { force: true });
    return (seconds * 1024) / mib;
  };
  try {
    const first = once();
    return { firstSecondsPerGiB: first, rewriteSecondsPerGiB: once() };
  } finally {
    fs.rmSync(file, { force: true });
  }
}

/** The probe as one line of the report's header. */
export function describePageCache(p: PageCacheProbe): string {
  return `writing a new file ${p.firstSecondsPerGiB.toFixed(2)} s/GiB, again right after deleting it ${p.rewriteSecondsPerGiB.toFixed(2)} s/GiB (see bench/pagecache.ts)`;
}
