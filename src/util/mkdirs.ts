/**
 * Making a folder with its missing parents, instead of `fs.mkdirSync(p, { recursive: true })`: Node's recursive mkdir
 * loops forever, at full CPU, when mkdir answers ENOENT under a parent that exists, and procfs does (`pull URL NAME
 * /proc/x`, `serve --cache-dir /proc/x` and `mkcompany /proc/x` spun until killed). Here each missing folder is made
 * once, top down.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fsProblem } from './errors.js';

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Makes folder `p` and its missing parents, each with `mode` (less the umask), like `mkdir -p`. Returns the first
 * folder it made, or undefined when `p` was a folder already (what the recursive `fs.mkdirSync` returns). Throws the
 * error of the first mkdir that fails, ENOENT included (a filesystem that refuses new folders), and EEXIST (ENOTDIR
 * below it) when something other than a folder stands in the way. A folder another process makes meanwhile is taken
 * as made.
 */
export function makeDirs(p: string, mode = 0o777): string | undefined {
  const target = path.resolve(p);
  // The usual case first, one system call: the parent exists.
  try {
    fs.mkdirSync(target, { mode });
    return target;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' && isDir(target)) return undefined;
    if (code !== 'ENOENT') throw err;
  }
  // The folders that do not exist, deepest first: at most one per component of the path.
  const missing: string[] = [];
  for (let cur = target; !isDir(cur); ) {
    missing.push(cur);
    const parent = path.dirname(cur);
    if (parent === cur) break;
    cur = parent;
  }
  let first: string | undefined;
  for (let i = missing.length - 1; i >= 0; i--) {
    const dir = missing[i]!;
    try {
      fs.mkdirSync(dir, { mode });
      first ??= dir;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !isDir(dir)) throw err;
    }
  }
  return first;
}

/**
 * What stopped makeDirs, in words for a message that names the folder: its ENOENT means the filesystem takes no new
 * folders there (every missing parent was made first), not that something is missing; its EEXIST, that a file or
 * other non-folder has the name.
 */
export function dirProblem(err: unknown): string {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT') return 'the filesystem there takes no new folders';
  if (code === 'EEXIST') return 'something that is not a folder has its name';
  return fsProblem(err);
}
