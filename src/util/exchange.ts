/**
 * An atomic exchange of two paths: Linux's renameat2(RENAME_EXCHANGE), reached through koffi (a maintained FFI with
 * prebuilt binaries: Node's fs has no binding for it, and a native addon of our own would need a compiler on every
 * machine). With it, a commit swaps DIR and next/ in one step, so DIR is never absent, not even for an instant.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';

/** renameat2's flag: swap the two names (both must exist). */
const RENAME_EXCHANGE = 2;
/** The `dirfd` that makes renameat2 resolve relative paths against the working folder (paths here are absolute). */
const AT_FDCWD = -100;

type Renameat2 = (olddirfd: number, oldpath: string, newdirfd: number, newpath: string, flags: number) => number;

/** The bound function, null where it cannot be had (no koffi for this platform, no renameat2 in its C library). */
let bound: Renameat2 | null | undefined;

function renameat2(): typeof bound {
  if (bound !== undefined) return bound;
  bound = null;
  if (process.platform !== 'linux') return bound;
  try {
    const koffi = createRequire(import.meta.url)('koffi') as {
      load(name: string): { func(signature: string): Renameat2 };
    };
    process.once('exit', quietStdioFlush);
    for (const name of ['libc.so.6', 'libc.so']) {
      try {
        bound = koffi.load(name).func('int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags)');
        break;
      } catch {
        /* the next name (musl calls its C library libc.so), or none */
      }
    }
  } catch {
    /* koffi has no binary for this machine */
  }
  return bound;
}

/**
 * koffi's library flushes its own stdout and stderr writers when the process ends, with fsync(): where stdout is a
 * file (`pull --json > out.json`, a scheduled job's log), that waited for every byte the pull left dirty, 0.45 s after
 * a first delta here, even with --no-fsync. Everything Node wrote to a file is written by then (it writes files
 * synchronously), so such a descriptor is put on /dev/null instead, whose fsync fails with EINVAL, which koffi takes
 * quietly (closed, it printed "Failed to sync"). Closing a descriptor and opening a file gives the file that number,
 * the lowest free one. Run last: the listener is added when koffi is loaded, at the first commit, after any other.
 */
function quietStdioFlush(): void {
  for (const fd of [1, 2]) {
    try {
      if (!fs.fstatSync(fd).isFile()) continue;
      fs.closeSync(fd);
      const now = fs.openSync('/dev/null', 'w');
      if (now !== fd) fs.closeSync(now);
    } catch {
      /* nothing to flush there */
    }
  }
}

/**
 * Swaps what paths `a` and `b` name, in one step, and returns true; returns false, having changed nothing, where that
 * cannot be done (another OS, a filesystem without RENAME_EXCHANGE, no FFI for this machine, a path that is gone, no
 * permission): the caller then falls back to two renames, which report any real error as fs does.
 * SNAPFERRY_FAULT_NO_EXCHANGE=1 makes it always return false, for the fault suite's tests of that fallback.
 */
export function exchangePaths(a: string, b: string): boolean {
  if (process.env.SNAPFERRY_FAULT_NO_EXCHANGE === '1') return false;
  const fn = renameat2();
  if (!fn) return false;
  return fn(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) === 0;
}
