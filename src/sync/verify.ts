/**
 * Verify a DIR against the generation snapfery last applied to it. Fast mode compares metadata; deep mode reads every
 * byte once (many reads in flight, see FileHasher) and checks every chunk id, reporting damaged byte ranges.
 * The result also tells repair which local chunks are still good.
 */
import fs from 'node:fs';
import path from 'node:path';
import { StatePaths, readApplied, recover, recordAuthentic, DirLock, Applied } from '../store/state.js';
import { loadHasher } from '../chunk/hash.js';
import { FileHasher } from './filehash.js';
import { mayRead } from '../util/open.js';
import { Entry, comparePaths, appliedMode, entryPath, sameStoredMtime } from '../manifest/manifest.js';
import { SnapferryError, ErrorCodes, fsProblem } from '../util/errors.js';

/** Pieces (files, or up to 1 MiB of one) a deep walk may queue ahead of the reads. */
const MAX_QUEUED_PIECES = 1024;

/** One problem found. */
export interface Damage {
  path: string;
  problem: 'missing' | 'extra' | 'kind-changed' | 'truncated' | 'grown' | 'content-changed' | 'mode-changed' | 'mtime-changed' | 'link-changed';
  /** Damaged byte ranges [start, end) of a file (deep mode). */
  ranges?: Array<[number, number]>;
  expectedSize?: number;
  actualSize?: number;
  expectedMode?: string;
  actualMode?: string;
  /** What is there and what should be (kind-changed): 'file', 'folder', 'symbolic link', 'FIFO', 'socket', 'device'. */
  actualKind?: string;
  expectedKind?: string;
}

/** A stat's kind in an operator's words. */
function kindOf(st: fs.BigIntStats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'folder';
  if (st.isSymbolicLink()) return 'symbolic link';
  if (st.isFIFO()) return 'FIFO';
  if (st.isSocket()) return 'socket';
  return 'device';
}

const ENTRY_KIND_WORDS = { file: 'file', dir: 'folder', symlink: 'symbolic link' } as const;

/**
 * An entry this process may not examine: under a folder it may not search, or (deep mode) a file it may not read whose
 * mode is the generation's own (a company file of mode 000 is copied as such). Not damage: repair could not do better,
 * and replacing the entry would leave it as unreadable as before (repair went round for ever).
 */
export interface Unchecked {
  path: string;
  /** Why, in an operator's words ("permission denied"). */
  reason: string;
}

/** What verify found. */
export interface VerifyResult {
  /** No damage found and every entry checked. */
  intact: boolean;
  damaged: Damage[];
  /** Entries that could not be checked (sorted); their content is neither vouched for nor called damaged. */
  unchecked: Unchecked[];
  bytesRead: number;
  seconds: number;
  company?: string;
  generation?: number;
  rootHash?: string;
  /** true/false when checked with the secret; null when no secret was given. */
  recordAuthenticated: boolean | null;
}

/**
 * Which chunks of the applied generation's files were read and found good on disk (deep mode), by file entry index and
 * chunk number. Flat arrays over the manifest's chunks: a map of one small array per file weighed ~100 bytes a file
 * (10 MB for 100,000 files).
 */
export class GoodChunks {
  /** Per entry: its first chunk's place in `flags`. */
  private readonly first: Uint32Array;
  /** Per chunk: 1 when good. */
  private readonly flags: Uint8Array;
  /** Per entry: 1 when its chunks were read. */
  private readonly read: Uint8Array;

  constructor(entries: readonly Entry[]) {
    this.first = new Uint32Array(entries.length);
    let total = 0;
    for (let i = 0; i < entries.length; i++) {
      this.first[i] = total;
      total += entries[i]!.lens?.length ?? 0;
    }
    this.flags = new Uint8Array(total);
    this.read = new Uint8Array(entries.length);
  }

  /** Records the check of entry i's chunks (ok[k] = 1 when chunk k is good). */
  set(i: number, ok: ArrayLike<number>): void {
    this.flags.set(ok, this.first[i]!);
    this.read[i] = 1;
  }

  /** Whether chunk k of entry i was read and found good. */
  isGood(i: number, k: number): boolean {
    return this.flags[this.first[i]! + k] === 1;
  }

  /** Whether entry i was read and every chunk of it found good. */
  allGood(i: number): boolean {
    if (!this.read[i]) return false;
    const end = i + 1 < this.first.length ? this.first[i + 1]! : this.flags.length;
    for (let g = this.first[i]!; g < end; g++) if (!this.flags[g]) return false;
    return true;
  }

  /** The entries that were read. */
  *files(): Generator<number> {
    for (let i = 0; i < this.read.length; i++) if (this.read[i]) yield i;
  }
}

/** Options of verify. */
export interface VerifyOptions {
  deep?: boolean;
  secret?: Buffer;
  /** The caller already holds DIR's lock (repair). */
  locked?: boolean;
  /** How long to wait for another command holding DIR's lock (a follower's pull) before refusing; 0 by default. */
  lockWaitMs?: number;
}

/** Checks one DIR. Throws STATE when there is nothing trustworthy to check against. */
export async function verifyDir(dir: string, opts: VerifyOptions = {}): Promise<VerifyResult & { good: GoodChunks; applied: Applied }> {
  const started = performance.now();
  const paths = new StatePaths(dir);
  const lock = new DirLock(paths);
  if (!fs.existsSync(paths.state)) throw new SnapferryError(ErrorCodes.NOT_A_COPY, `${paths.dir} holds no generation applied by snapferry (no ${paths.state})`);
  if (!opts.locked) await lock.acquire(opts.lockWaitMs ?? 0);
  try {
    recover(paths);
    const applied = readApplied(paths);
    if (!applied) {
      // No copy yet, only a seed's unfinished next/: nothing was lost, the seed is to be resumed. (Repair, which holds
      // the lock, takes the missing record as its cue to establish it: it finishes the seed.)
      if (!opts.locked && !fs.existsSync(paths.dir) && fs.existsSync(paths.nextJson)) {
        throw new SnapferryError(ErrorCodes.NOT_A_COPY, `${paths.dir} holds no generation yet: its seed was interrupted; run pull again to resume it`);
      }
      throw new SnapferryError(ErrorCodes.STATE, `the record of what ${paths.dir} holds is missing; run repair to re-establish it from a peer`);
    }
    let recordAuthenticated: boolean | null = null;
    if (opts.secret) {
      recordAuthenticated = recordAuthentic(applied.record, opts.secret);
      if (!recordAuthenticated) throw new SnapferryError(ErrorCodes.STATE, `the record of what ${paths.dir} holds is not authentic (tampered, or made with another secret); run repair`);
    }
    const damaged: Damage[] = [];
    const unchecked: Unchecked[] = [];
    const good = new GoodChunks(applied.manifest.entries);
    let bytesRead = 0;
    const hasher = opts.deep ? new FileHasher(await loadHasher()) : undefined;
    /** Files being checked (settled ones leave: the walk holds back once far ahead, so this stays small). */
    const deepJobs = new Set<Promise<void>>();
    let deepQueued = 0;
    /** The first read that failed (the walk goes on: a rejection left waiting would end the process). */
    let readFailure: { err: unknown } | undefined;
    const entries = applied.manifest.entries;
    /** Folders that are missing or not folders any more (entries come after their folder). */
    const notFolders = new Set<string>();
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      const abs = entryPath(paths.dir, e.path);
      const slash = e.path.lastIndexOf('/');
      // Under a folder that is gone or was replaced (by a link to a copy elsewhere, say) nothing of the tree is left,
      // however good what the path leads to: lstat would follow the link, and deep mode read outside DIR.
      if (slash > 0 && notFolders.has(e.path.slice(0, slash))) {
        damaged.push({ path: e.path, problem: 'missing' });
        if (e.kind === 'dir') notFolders.add(e.path);
        continue;
      }
      let st: fs.BigIntStats;
      try {
        st = fs.lstatSync(abs, { bigint: true });
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // Only these say the path holds nothing: EACCES (a folder above of mode 000, as the company has it) says
        // nothing about the entry, and calling it missing sent repair fetching it again and again.
        if (code !== 'ENOENT' && code !== 'ENOTDIR') {
          unchecked.push({ path: e.path, reason: fsProblem(err) });
          continue;
        }
        damaged.push({ path: e.path, problem: 'missing' });
        if (e.kind === 'dir') notFolders.add(e.path);
        continue;
      }
      const kindOk = e.kind === 'dir' ? st.isDirectory() : e.kind === 'symlink' ? st.isSymbolicLink() : st.isFile();
      if (!kindOk) {
        damaged.push({ path: e.path, problem: 'kind-changed', actualKind: kindOf(st), expectedKind: ENTRY_KIND_WORDS[e.kind] });
        if (e.kind === 'dir') notFolders.add(e.path);
        continue;
      }
      // Folders' and links' mtimes are the copy's too (a pull sets them): a file made and removed again in a folder
      // leaves only its mtime changed, which repair puts back only if it is reported.
      if (e.kind === 'symlink') {
        if (fs.readlinkSync(abs) !== e.target) damaged.push({ path: e.path, problem: 'link-changed' });
        else if (!sameStoredMtime(st.mtimeNs, e.mtimeNs)) damaged.push({ path: e.path, problem: 'mtime-changed' });
        continue;
      }
      const mode = Number(st.mode & 0o7777n);
      if (mode !== appliedMode(e.mode)) {
        damaged.push({ path: e.path, problem: 'mode-changed', expectedMode: appliedMode(e.mode).toString(8), actualMode: mode.toString(8) });
      }
      if (e.kind === 'dir') {
        if (!sameStoredMtime(st.mtimeNs, e.mtimeNs)) damaged.push({ path: e.path, problem: 'mtime-changed' });
        continue;
      }
      const size = Number(st.size);
      /** The file's size problem, if any: deep mode adds its damaged ranges to it. */
      let sizeProblem: Damage | undefined;
      if (size !== e.size) {
        sizeProblem = { path: e.path, problem: size < e.size ? 'truncated' : 'grown', expectedSize: e.size, actualSize: size };
        damaged.push(sizeProblem);
      } else if (!sameStoredMtime(st.mtimeNs, e.mtimeNs)) {
        // In deep mode too: the copy promises the mtime, and repair mends only what verify reports.
        damaged.push({ path: e.path, problem: 'mtime-changed' });
      }
      if (hasher && e.size > 0 && !readableAsRecorded(abs, mode, e)) {
        unchecked.push({ path: e.path, reason: `permission denied (mode ${mode.toString(8).padStart(3, '0')}, as the generation has it)` });
      } else if (hasher && e.size > 0) {
        const job: Promise<void> = checkFile(hasher, abs, e, i, sizeProblem, damaged, good)
          .then(
            (n) => void (bytesRead += n),
            (err: unknown) => void (readFailure ??= { err }),
          )
          .finally(() => deepJobs.delete(job));
        deepJobs.add(job);
        // The reads just queued start at once; letting their answers in now and then keeps the disk busy while
        // this walk goes on (on a cold disk each lstat waits for it too). Far ahead of the reads, the walk waits.
        if (++deepQueued % 16 === 0) await new Promise<void>((resolve) => setImmediate(resolve));
        while (hasher.queued >= MAX_QUEUED_PIECES) await hasher.room(MAX_QUEUED_PIECES);
      }
    }
    await Promise.all([...deepJobs]);
    if (readFailure) throw readFailure.err;
    for (const extra of extras(paths.dir, entries)) damaged.push({ path: extra, problem: 'extra' });
    damaged.sort((a, b) => comparePaths(a.path, b.path));
    unchecked.sort((a, b) => comparePaths(a.path, b.path));
    return {
      intact: damaged.length === 0 && unchecked.length === 0,
      damaged,
      unchecked,
      bytesRead,
      seconds: Math.round(performance.now() - started) / 1000,
      company: applied.record.company,
      generation: applied.record.generation,
      rootHash: applied.record.rootHash,
      recordAuthenticated,
      good,
      applied,
    };
  } finally {
    if (!opts.locked) lock.release();
  }
}

/**
 * False when this process may not read a file whose mode is the one the generation gives it and denies its owner
 * reading (the company's file is so): such a file is as it should be as far as anyone here can tell. A file readable by
 * its mode is not asked (one access call per file saved), nor one whose mode was changed (reported already; repair
 * puts the mode back).
 */
function readableAsRecorded(abs: string, mode: number, e: Entry): boolean {
  return (mode & 0o400) !== 0 || mode !== appliedMode(e.mode) || mayRead(abs);
}

/** Deep-checks one file; records good chunks and damaged ranges. Returns bytes read. */
async function checkFile(hasher: FileHasher, abs: string, e: Entry, idx: number, sizeProblem: Damage | undefined, damaged: Damage[], good: GoodChunks): Promise<number> {
  const lens = e.lens!;
  const ok = new Uint8Array(lens.length);
  const { ids, readable } = await hasher.hashFile(abs, lens);
  const want = e.ids!; // read once: a PackedEntry makes a view at each read
  for (let k = 0; k < ids.length; k++) if (ids[k] === want[k]) ok[k] = 1;
  good.set(idx, ok);
  const ranges: Array<[number, number]> = [];
  let o = 0;
  for (let k = 0; k < lens.length; k++) {
    if (!ok[k]) {
      const last = ranges[ranges.length - 1];
      if (last && last[1] === o) last[1] = o + lens[k]!;
      else ranges.push([o, o + lens[k]!]);
    }
    o += lens[k]!;
  }
  // Looked up before, in a list of every damaged path: quadratic (a 40,000-file copy whose every mtime changed took
  // 6.5 s to verify deeply against 1.1 s intact).
  if (ranges.length > 0) {
    if (sizeProblem) sizeProblem.ranges = ranges;
    else damaged.push({ path: e.path, problem: 'content-changed', ranges });
  }
  return readable;
}

/** Paths in DIR that the generation does not have. */
function extras(root: string, entries: Entry[]): string[] {
  const known = new Set(entries.map((e) => e.path));
  const dirs = new Set(entries.filter((e) => e.kind === 'dir').map((e) => e.path));
  const out: string[] = [];
  const walk = (rel: string) => {
    let found: fs.Dirent[];
    try {
      found = fs.readdirSync(rel ? path.join(root, rel) : root, { withFileTypes: true });
    } catch {
      return;
    }
    for (const d of found) {
      const r = rel ? `${rel}/${d.name}` : d.name;
      if (!known.has(r)) out.push(r);
      // Only a folder is walked: a link in a folder's place (reported as such) would list what lies outside DIR.
      else if (dirs.has(r) && d.isDirectory()) walk(r);
    }
  };
  walk('');
  return out;
}
