/** Opening files that must be what they say they are. */
import fs from 'node:fs';

/**
 * Opens `p` for reading if it is a regular file; -1 if it is anything else (a folder or FIFO put in a file's place).
 * O_NOFOLLOW: a link put in a file's place is not followed out of the tree; O_NONBLOCK: opening a FIFO does not wait for
 * a writer. Throws what open throws (ENOENT, ELOOP for a link, EACCES).
 *
 * `exact`: `p` is a path without symbolic links (a site's company paths, from its folder's real path), and the file
 * opened must be the one at that very path: where a folder above it was replaced by a link since it was listed, the
 * open went through the link, maybe out of the tree (O_NOFOLLOW guards the last name only), and the file counts as
 * not there (-1). Told by the path the kernel gives the descriptor (/proc/self/fd); where there is no /proc, unchecked.
 */
export function openRegular(p: string, exact = false): number {
  const fd = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  let ok = false;
  try {
    ok = fs.fstatSync(fd).isFile() && (!exact || openedAt(fd, p));
  } finally {
    if (!ok) fs.closeSync(fd);
  }
  return ok ? fd : -1;
}

/** Whether descriptor `fd` was opened at path `p` (true where the kernel does not say). */
function openedAt(fd: number, p: string): boolean {
  let at: string;
  try {
    at = fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return true;
  }
  return at === p;
}

/**
 * Whether this process may open `file` for reading: its mode bits, or root's override of them. A copy keeps the
 * company's modes, so a branch without root may hold files it cannot read back (mode 000, 0200).
 */
export function mayRead(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.R_OK);
    return true;
  } catch {
    return false;
  }
}
