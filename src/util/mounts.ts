/** The mount points this process can see (Linux: /proc/self/mountinfo), for the commit's checks and the spares'. */
import fs from 'node:fs';
import path from 'node:path';

/** One line of /proc/self/mountinfo: what part of its filesystem is mounted (`root`), and where (`point`). */
interface Mount {
  root: string;
  point: string;
}

/**
 * Every mount in this process's mount namespace; empty where /proc cannot tell. Fields 4 and 5 of each line are the
 * mounted part's path within its filesystem and the mount point, with space, tab, newline and backslash written as
 * octal escapes (\040 and so on).
 */
function mounts(): Mount[] {
  let text: string;
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const unescape = (f: string) => f.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
  const out: Mount[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ', 5);
    if (fields[4]) out.push({ root: unescape(fields[3]!), point: unescape(fields[4]) });
  }
  return out;
}

/** Every mount point, as absolute paths. */
export function mountPoints(): string[] {
  return mounts().map((m) => m.point);
}

/**
 * The mount points of bind mounts of part of a filesystem (a folder or a file in it, not its root): where a file can
 * be read from elsewhere without being open anywhere. Only these are worth a stat (a stat of every mount point would
 * hang on a network filesystem whose server is gone).
 */
export function bindMountPoints(): string[] {
  return mounts()
    .filter((m) => m.root !== '/')
    .map((m) => m.point);
}

/**
 * The mount points at `dir` or inside it (`dir` resolved through links first, as the mount table holds real paths).
 * A commit renames DIR aside and later deletes what the old generation held: a mount at DIR refuses the rename, and
 * one inside it would have another filesystem's files deleted as the old generation's.
 */
export function mountsAtOrUnder(dir: string): string[] {
  let real: string;
  try {
    real = fs.realpathSync(dir);
  } catch {
    return [];
  }
  const prefix = real.endsWith(path.sep) ? real : real + path.sep;
  return mountPoints().filter((m) => m === real || m.startsWith(prefix));
}
