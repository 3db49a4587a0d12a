/**
 * Names the life of the page cache that holds a folder's unflushed writes: the kernel's boot id and the id of the
 * mount the folder is on. What a process wrote and did not flush survives its kill -9 (the kernel holds it) for as
 * long as both stay the same; a reboot (a power cut, a crash) changes the first, an unmount (a USB disk pulled and put
 * back) the second, unless the kernel hands the new mount the old id (it reuses free ones): so the puller trusts its
 * unflushed journal (next.unsynced) only under the life it was written in, and even then reads its chunks back first.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';

/** Undoes mountinfo's octal escapes (space, tab, newline, backslash in mount points). */
function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** glibc's major() and minor() of a device number. */
function majorMinor(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/**
 * The mount id of the mount holding `dir` in /proc/self/mountinfo: the longest mount point above it, preferring
 * mounts of its own device (one device can be mounted in several places). Undefined when it cannot be told.
 */
export function mountIdOf(dir: string, mountinfo: string): string | undefined {
  let real: string;
  let dev: string;
  try {
    real = fs.realpathSync(dir);
    dev = majorMinor(fs.statSync(real, { bigint: true }).dev);
  } catch {
    return undefined;
  }
  let best: { id: string; len: number; sameDev: boolean } | undefined;
  for (const line of mountinfo.split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const point = unescapeMountPath(f[4]!);
    const under = point === '/' || real === point || real.startsWith(point.endsWith('/') ? point : point + path.sep);
    if (!under) continue;
    const sameDev = f[2] === dev;
    // A later line for the same point is a mount on top of the earlier one: it is the one in use.
    if (!best || (sameDev && !best.sameDev) || (sameDev === best.sameDev && point.length >= best.len)) best = { id: f[0]!, len: point.length, sameDev };
  }
  return best?.id;
}

/** The kernel's boot id (changed by every reboot), or undefined where it cannot be read (not Linux, no /proc). */
export function bootId(): string | undefined {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * A 28-byte name of the page cache life `dir`'s unflushed writes belong to (see the module's comment); undefined where
 * it cannot be told (not Linux, no /proc), and then nothing unflushed may be trusted after a restart.
 */
export function cacheLifeOf(dir: string): Buffer | undefined {
  const boot = bootId();
  let mountinfo: string;
  try {
    mountinfo = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return undefined;
  }
  const mount = mountIdOf(dir, mountinfo);
  if (!boot || mount === undefined) return undefined;
  return createHash('sha256').update(`${boot} ${mount}`).digest().subarray(0, 28);
}
