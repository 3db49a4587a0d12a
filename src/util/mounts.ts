/** The mount points this process can see (Linux: /proc/self/mountinfo), for the commit's checks and the spares'. */
import fs from 'node:fs';
import path from 'node:path';

/**
 * Every mount point in this process's mount namespace, as absolute paths; empty where /proc cannot tell. Field 5 of
 * each line is the mount point, with space, tab, newline and backslash written as octal escapes (\040 and so on).
 */
export function mountPoints(): string[] {
  let text: string;
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const field = line.split(' ', 5)[4];
    if (field) out.push(field.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8))));
  }
  return out;
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
