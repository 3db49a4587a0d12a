/** Opening files that must be what they say they are. */
import fs from 'node:fs';

/**
 * Opens `p` for reading if it is a regular file; -1 if it is anything else (a folder or FIFO put in a file's place).
 * O_NOFOLLOW: a link put in a file's place is not followed out of the tree; O_NONBLOCK: opening a FIFO does not wait for
 * a writer. Throws what open throws (ENOENT, ELOOP for a link, EACCES).
 */
export function openRegular(p: string): number {
  const fd = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  let regular = false;
  try {
    regular = fs.fstatSync(fd).isFile();
  } finally {
    if (!regular) fs.closeSync(fd);
  }
  return regular ? fd : -1;
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
