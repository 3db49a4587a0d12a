/**
 * The spare generation: the files the last commit replaced, kept in the state folder (`spare/`, with the manifest and
 * inode record of the generation they hold: `spare.manifest`, `spare.stats`) instead of being deleted. The next delta
 * moves a changed file's spare into next/ and writes only the chunks that differ from it, where it would otherwise copy
 * the current version whole first: for large files changed by pages, a delta then writes what changed, not the file.
 * The commit stays what it was (next/ is swapped in whole), so readers of DIR still see one generation or the other.
 *
 * A spare is used only when it provably holds its generation's bytes (a regular file with one link, size, mtime, inode
 * and ctime as recorded when that generation was committed) and no process has it open or mapped: a reader that opened
 * DIR's file before the last commit still reads those very bytes and must not see them rewritten. Where that cannot be
 * known (no /proc), spares are not used. Everything here is a cache: whatever does not check out is simply not used.
 */
import fs from 'node:fs';
import path from 'node:path';
import { decodeManifest, encodeManifest, Entry, entryPath, Manifest, rootHashOf, sameContent, sameMtime } from '../manifest/manifest.js';
import { StatePaths, Applied, removeTree, readApplied, exists, diskReserve, diskSpace, fsyncDir, writeFileDurable, asCommitted } from './state.js';
import { inodeStamp, utimesSeconds, utimesArg } from '../util/stamp.js';
import { makeDirs } from '../util/mkdirs.js';
import { mayRead } from '../util/open.js';
import { bindMountPoints } from '../util/mounts.js';

/** A spare that may be rewritten into the next generation: where it is and what it holds. */
export interface SpareFile {
  abs: string;
  entry: Entry;
}

/** The spare generation of one DIR, checked file by file as files are asked for. */
export class Spare {
  private readonly byPath = new Map<string, number>();
  private inUse?: Set<string>;
  private readonly entries: Entry[];

  private constructor(
    private readonly paths: StatePaths,
    private readonly manifest: Manifest,
    private readonly stats: string[],
  ) {
    this.entries = manifest.entries;
    this.entries.forEach((e, i) => {
      if (e.kind === 'file' && stats[i]) this.byPath.set(e.path, i);
    });
  }

  /**
   * Where the record has a file at `relPath` and the spare folder nothing (the last commit did not replace it: its
   * record is the whole replaced generation's, the unchanged files' links removed): the place a prepared copy of it may
   * take. undefined when the record holds no file there, or something is there already.
   */
  freeSlot(relPath: string): number | undefined {
    if (!this.files) {
      this.files = new Map();
      this.entries.forEach((e, i) => {
        if (e.kind === 'file') this.files!.set(e.path, i);
      });
    }
    const i = this.files.get(relPath);
    if (i === undefined) return undefined;
    try {
      fs.lstatSync(entryPath(this.paths.spare, relPath));
      return undefined;
    } catch {
      return i;
    }
  }
  private files?: Map<string, number>;

  /** The record with the files `added` (by freeSlot's place) held too: the manifest's bytes and the stats file's. */
  recordWith(added: Array<{ slot: number; entry: Entry; stat: string }>): { manifest: Buffer; stats: string } {
    const entries = this.entries.slice();
    const stats = this.stats.slice();
    for (const a of added) {
      entries[a.slot] = a.entry;
      stats[a.slot] = a.stat;
    }
    const manifest = encodeManifest({ params: this.manifest.params, entries });
    return { manifest, stats: JSON.stringify({ rootHash: rootHashOf(manifest), stats }) };
  }

  /**
   * The record of the spare generation, if it is whole (its stats match its manifest). The record outlives the files:
   * a pull that resumes into a file built on a spare reads what that file held here.
   */
  static load(paths: StatePaths): Spare | undefined {
    try {
      const encoded = fs.readFileSync(paths.spareManifest);
      const s = JSON.parse(fs.readFileSync(paths.spareStats, 'utf8')) as { rootHash?: string; stats?: string[] };
      if (s.rootHash !== rootHashOf(encoded) || !Array.isArray(s.stats)) return undefined;
      const m = decodeManifest(encoded);
      if (s.stats.length !== m.entries.length) return undefined;
      return new Spare(paths, m, s.stats);
    } catch {
      return undefined;
    }
  }

  /** The chunk parameters of the spare generation's record. */
  get params(): Manifest['params'] {
    return this.manifest.params;
  }

  /** What the spare generation held at `relPath`, if it was a file. */
  entry(relPath: string): Entry | undefined {
    const i = this.byPath.get(relPath);
    return i === undefined ? undefined : this.entries[i];
  }

  /** The spare of `relPath` if it can be rewritten: exactly as recorded, not linked into DIR, open nowhere. */
  usable(relPath: string): SpareFile | undefined {
    const i = this.byPath.get(relPath);
    if (i === undefined) return undefined;
    const entry = this.entries[i]!;
    const abs = entryPath(this.paths.spare, relPath);
    let st: fs.BigIntStats;
    try {
      st = fs.lstatSync(abs, { bigint: true });
    } catch {
      return undefined;
    }
    // One link: a file that did not change in the last commit is the same inode as DIR's and must never be written.
    if (st.nlink !== 1n || !asCommitted(st, entry.size, entry.mtimeNs, this.stats[i]!)) return undefined;
    this.inUse ??= inodesInUse() ?? new Set(['*']);
    if (this.inUse.has('*') || this.inUse.has(openKey(st)) || this.inUse.has(mappedKey(st.ino))) return undefined;
    return { abs, entry };
  }
}

/**
 * Keys (openKey, mappedKey) of every file some process we can see has open or mapped, from /proc; undefined where /proc cannot
 * tell (another system, or no /proc). Processes of other users are visible only to root: without root, a spare that
 * another user's program holds open can go unseen (documented in the README's limits).
 */
export function inodesInUse(): Set<string> | undefined {
  let pids: string[];
  try {
    pids = fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n));
    if (!fs.existsSync(`/proc/${process.pid}/fd`)) return undefined;
  } catch {
    return undefined;
  }
  const out = new Set<string>();
  // A file bind-mounted elsewhere (mount --bind SPARE PATH) is read through that path without being open anywhere:
  // stat of a mount point gives what is mounted there.
  for (const m of bindMountPoints()) {
    try {
      out.add(openKey(fs.statSync(m, { bigint: true })));
    } catch {
      /* unmounted meanwhile, or not ours to stat */
    }
  }
  const self = String(process.pid);
  for (const pid of pids) {
    if (pid === self) continue;
    let fds: string[] = [];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      /* gone, or another user's */
    }
    for (const fd of fds) {
      try {
        out.add(openKey(fs.statSync(`/proc/${pid}/fd/${fd}`, { bigint: true })));
      } catch {
        /* closed meanwhile */
      }
    }
    let maps = '';
    try {
      maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
    } catch {
      /* gone, or another user's */
    }
    // "start-end perms offset dev inode path": inode 0 is anonymous memory.
    for (const line of maps.split('\n')) {
      const ino = line.split(/\s+/, 6)[4];
      if (ino && ino !== '0') out.add(mappedKey(ino));
    }
  }
  return out;
}

/**
 * An open file's key: device and inode, both from stat (the same call that gives a spare's). By inode alone, a pipe's or
 * socket's inode number (pipefs, sockfs) can equal a spare's and keep it from use: the likely cause of one of four
 * spares going unused once in the full test suite, its many processes and sockets beside it (not reproduced alone).
 */
function openKey(st: fs.BigIntStats): string {
  return `${st.dev}:${st.ino}`;
}

/**
 * A mapped file's key: its inode alone. /proc/PID/maps gives the device as the superblock's, which on btrfs subvolumes
 * and overlayfs differs from what stat gives: matching by inode alone keeps erring on the side of "in use".
 */
function mappedKey(ino: bigint | string): string {
  return `m:${ino}`;
}

/**
 * Deletes what is left of the spare files (the record stays until the commit replaces it), in the background: their
 * blocks are freed while the transfer runs. Resolves when done; never rejects.
 */
export async function dropSpareFilesAsync(paths: StatePaths): Promise<void> {
  try {
    removeTree(paths.spareDrop);
    fs.renameSync(paths.spare, paths.spareDrop);
  } catch {
    return;
  }
  await fs.promises.rm(paths.spareDrop, { recursive: true, force: true }).catch(() => {
    try {
      removeTree(paths.spareDrop);
    } catch {
      // Not ours to remove (a file in it made immutable, a folder another user owns): left for recover() to set aside.
    }
  });
}

/** Files smaller than this are not worth preparing: a delta copies them whole in no time. */
const PREPARE_MIN_FILE = 1 << 20;

/**
 * Called by a following branch's pull once it has planned (`linked`: the new generation's files it links unchanged):
 * the spares of those files hold their current bytes, just what the next delta wants, and the commit would drop them
 * with the rest of the spare generation. They are moved aside (`spare.keep/`, recorded with the generation they fit and
 * their inode stamps) for the next prepareSpare, which takes them back instead of copying the files again: without
 * this, every generation made the follower copy each large file it did not change. A cache: what does not check out
 * later is not used. A keep for another generation goes first.
 */
export function keepSpares(paths: StatePaths, spare: Spare | undefined, linked: Iterable<Entry>, rootHash: string): number {
  // An earlier attempt at this same generation (cut, then tried again) kept some already: they stay.
  const prior = keptFor(paths, rootHash);
  if (prior.size === 0) dropKept(paths);
  if (!spare) return prior.size;
  const files: Record<string, KeptFile> = Object.fromEntries(prior);
  let kept = prior.size;
  for (const e of linked) {
    if (e.size < PREPARE_MIN_FILE) continue;
    const sf = spare.usable(e.path);
    if (!sf) continue;
    const to = entryPath(paths.spareKeep, e.path);
    makeDirs(path.dirname(to), 0o700);
    fs.renameSync(sf.abs, to);
    const stamp = inodeStamp(fs.lstatSync(to, { bigint: true }));
    // Kept whatever version it holds: one a generation behind (the file changed in the generation this one follows)
    // is as good a base for the next delta as a copy, which prepareSpare made instead (the whole file again, for a
    // one-page change: 16 MB written for a 100-byte generation). It is recorded with its own entry, unless it is the
    // generation's bytes and mtime (then e's).
    const exact = sameContent(sf.entry, e) && sameMtime(sf.entry.mtimeNs, e.mtimeNs);
    files[e.path] = exact ? stamp : { stamp, entry: encodeManifest({ params: spare.params, entries: [sf.entry] }).toString('base64') };
    kept++;
  }
  if (kept > prior.size) fs.writeFileSync(paths.spareKeepJson, JSON.stringify({ rootHash, files }), { mode: 0o600 });
  return kept;
}

/** Removes what keepSpares kept (used or not): prepareSpare once done, and every pull that does not keep spares. */
export function dropKept(paths: StatePaths): void {
  fs.rmSync(paths.spareKeepJson, { force: true });
  removeTree(paths.spareKeep);
}

/**
 * A kept spare in spare.keep.json: its inode stamp alone when it holds the generation's version of its path, else with
 * the entry of the version it holds (a one-entry manifest, base64).
 */
type KeptFile = string | { stamp: string; entry: string };

/** The files keepSpares kept for the generation `rootHash` (by path), empty when it kept none for it. */
function keptFor(paths: StatePaths, rootHash: string): Map<string, KeptFile> {
  try {
    const k = JSON.parse(fs.readFileSync(paths.spareKeepJson, 'utf8')) as { rootHash?: string; files?: Record<string, unknown> };
    if (k.rootHash !== rootHash || typeof k.files !== 'object' || k.files === null) return new Map();
    const isKept = (v: unknown): v is KeptFile =>
      typeof v === 'string' || (typeof v === 'object' && v !== null && typeof (v as { stamp?: unknown }).stamp === 'string' && typeof (v as { entry?: unknown }).entry === 'string');
    return new Map(Object.entries(k.files).filter((kv): kv is [string, KeptFile] => isKept(kv[1])));
  } catch {
    return new Map();
  }
}

/**
 * Takes the kept spare of `e` into `dst` if it is there as kept (nothing touched it since); returns the entry of the
 * version it holds (e itself, or the older one it was kept with), undefined when it is not taken.
 */
function takeKept(paths: StatePaths, kept: Map<string, KeptFile>, e: Entry, dst: string): Entry | undefined {
  const k = kept.get(e.path);
  if (k === undefined) return undefined;
  const abs = entryPath(paths.spareKeep, e.path);
  try {
    const holds = typeof k === 'string' ? e : decodeManifest(Buffer.from(k.entry, 'base64')).entries[0];
    if (!holds || holds.kind !== 'file' || holds.path !== e.path) return undefined;
    const st = fs.lstatSync(abs, { bigint: true });
    if (!st.isFile() || st.nlink !== 1n || inodeStamp(st) !== (typeof k === 'string' ? k : k.stamp) || Number(st.size) !== holds.size) return undefined;
    fs.renameSync(abs, dst);
    return holds;
  } catch {
    return undefined;
  }
}

/**
 * Makes a spare generation out of the one DIR holds, while a following branch waits for the next (follow.ts): a copy
 * of each large file, recorded as the spare of DIR's generation. The first delta after a seed then rewrites those
 * copies where the site changed them, as every later delta does with the files the last commit replaced, instead of
 * copying the changed files whole while the branch waits. Where a spare exists (the files the last commit replaced),
 * it is topped up with copies of the large files it lacks: a generation that did not touch a database left it without
 * a spare, and the next one that does would copy it whole. Only files whose inode and ctime are still those recorded
 * when they were committed, before and after the copy (a file written meanwhile is not copied); only while a tenth of
 * the disk (at most 1 GiB) stays free. Each copy is flushed before it is recorded. Stops between files when `signal`
 * aborts: a first preparation removes what it made, a top-up records the files it finished. Returns how many files it
 * prepared. The caller holds DIR's lock.
 */
export async function prepareSpare(paths: StatePaths, signal: AbortSignal): Promise<number> {
  // What was kept goes whatever happens here: taken into the spare, or of no more use.
  try {
    // Not beside an unfinished pull (next/, or prev/ set aside): the files it built on spares are known by the spare
    // record as it stands, which topping up rewrites.
    if (exists(paths.next) || exists(paths.prev)) return 0;
    // A record without a folder is a spare with no file yet (the last commit replaced none: it only added or linked).
    const spare = exists(paths.spareManifest) ? Spare.load(paths) : undefined;
    // A spare folder without a whole record, or a record that does not check out, is the next commit's to replace.
    if (!spare && (exists(paths.spareManifest) || exists(paths.spare))) return 0;
    const applied = readApplied(paths);
    if (!applied) return 0;
    return await prepareFiles(paths, signal, spare, applied, keptFor(paths, applied.record.rootHash));
  } finally {
    dropKept(paths);
  }
}

/** prepareSpare's work, once it knows there is work to do. */
async function prepareFiles(paths: StatePaths, signal: AbortSignal, spare: Spare | undefined, applied: Applied, kept: Map<string, KeptFile>): Promise<number> {
  const added: Array<{ slot: number; entry: Entry; stat: string }> = [];
  const prep = paths.sparePrep;
  removeTree(prep);
  fs.mkdirSync(prep, { mode: 0o700 });
  const entries = applied.manifest.entries;
  const stats = entries.map(() => '');
  // All the free space but the reserve the disk keeps for the company (none where statfs cannot tell).
  const space = diskSpace(paths.state);
  let budget = space ? space.free - diskReserve(space.total) : 0;
  let prepared = 0;
  try {
    for (let i = 0; i < entries.length && !signal.aborted; i++) {
      const e = entries[i]!;
      if (e.kind !== 'file' || e.size < PREPARE_MIN_FILE || !applied.stats[i]) continue;
      const slot = spare?.freeSlot(e.path);
      if (spare && slot === undefined) continue;
      const dst = entryPath(prep, e.path);
      if (kept.has(e.path)) {
        makeDirs(path.dirname(dst), 0o700);
        const holds = takeKept(paths, kept, e, dst);
        // Its bytes are those of the version it was kept with (the pull that linked this file checked them), on disk
        // already. A first preparation's record is DIR's generation: only a spare of that very version fits there.
        if (holds && spare) {
          added.push({ slot: slot!, entry: holds, stat: '' });
          prepared++;
          continue;
        }
        if (holds === e) {
          stats[i] = inodeStamp(fs.lstatSync(dst, { bigint: true }));
          prepared++;
          continue;
        }
        if (holds) fs.rmSync(dst, { force: true });
      }
      if (e.size > budget) continue;
      const src = entryPath(paths.dir, e.path);
      const unchanged = () => {
        try {
          return asCommitted(fs.lstatSync(src, { bigint: true }), e.size, e.mtimeNs, applied.stats[i]!);
        } catch {
          return false;
        }
      };
      if (!unchanged()) continue;
      // One the branch may not read (a company mode kept as it is) has no spare; it once ended the preparation (EACCES).
      if ((e.mode & 0o400) === 0 && !mayRead(src)) continue;
      makeDirs(path.dirname(dst), 0o700);
      await fs.promises.copyFile(src, dst, fs.constants.COPYFILE_FICLONE);
      const t = utimesArg(utimesSeconds(e.mtimeNs));
      fs.utimesSync(dst, t, t);
      // On disk before it is recorded: a copy a power cut emptied would otherwise still match its record.
      // Read-only is enough to flush it (Linux), and the copy of a read-only file is read-only (r+ failed: EACCES).
      const fh = await fs.promises.open(dst, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      if (!unchanged()) {
        fs.rmSync(dst, { force: true });
        continue;
      }
      if (spare) added.push({ slot: slot!, entry: e, stat: '' });
      else stats[i] = inodeStamp(fs.lstatSync(dst, { bigint: true }));
      budget -= e.size;
      prepared++;
    }
    if (spare && prepared > 0) {
      // Into the spare folder, then the record: a file there that the record does not name is never used. Stamped
      // where they land (a rename changes a file's ctime). Stopped or not: each file here is whole, and moving them
      // takes milliseconds (a follower stops this whenever a generation comes, and the kept ones would be lost).
      for (const a of added) {
        const to = entryPath(paths.spare, a.entry.path);
        makeDirs(path.dirname(to), 0o700);
        fs.renameSync(entryPath(prep, a.entry.path), to);
        a.stat = inodeStamp(fs.lstatSync(to, { bigint: true }));
      }
      removeTree(prep);
      const record = spare.recordWith(added);
      writeFileDurable(paths.spareManifest, record.manifest);
      writeFileDurable(paths.spareStats, record.stats);
      return prepared;
    }
  } catch (err) {
    removeTree(prep);
    throw err;
  }
  if (signal.aborted || prepared === 0) {
    removeTree(prep);
    return 0;
  }
  // The folder, then its record: a spare folder without a record is never used (and the next commit replaces it).
  fs.renameSync(prep, paths.spare);
  fsyncDir(paths.state);
  writeFileDurable(paths.spareManifest, fs.readFileSync(paths.appliedManifest));
  writeFileDurable(paths.spareStats, JSON.stringify({ rootHash: applied.record.rootHash, stats }));
  return prepared;
}

