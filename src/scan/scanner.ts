/**
 * Scans a company folder into a manifest. Files whose size, mtime, ctime and inode did not change since the last scan
 * keep their cached chunk lists (nothing is re-read); others are chunked on the worker pool, segment by segment.
 * The company may be open in its application: a file that changes while it is read (stat before and after differ)
 * is read again; one that will not hold still delays the generation for a bounded time and is then reported by name.
 */
import fs from 'node:fs';
import { isUtf8 } from 'node:buffer';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { ChunkParams, ChunkPolicy, DEFAULT_CHUNK_PARAMS, chunkParamsFor, sameChunkParams } from '../chunk/chunker.js';
import { Entry, Manifest, PackedEntry, encodeManifest, entryPath, rootHashOf, comparePaths, checkTree, indexOfPath } from '../manifest/manifest.js';
import { WorkerPool } from '../work/pool.js';
import type { ChunkSegmentResult, ChunkFilesResult } from '../work/tasks.js';
import { chunkSegmentsOf, joinChunkLists } from '../work/segments.js';
import { fail, ErrorCodes, SnapferryError, toSnapferryError, shortenedPath } from '../util/errors.js';
import { CachedFile, ScanCache, loadScanCache, saveScanCache, counterFileOf, readGenerationCounter, writeGenerationCounter } from './cachefile.js';
import { nextCapacity, widen } from '../util/columns.js';


/** A scanned generation, ready to serve. */
export interface Generation {
  manifest: Manifest;
  encoded: Buffer;
  rootHash: string;
  generation: number;
  /** Absolute path of entry `ei` (made when asked: 100,000 kept strings cost a site ~9 MB). */
  absPath: (ei: number) => string;
  scannedAt: number;
  /**
   * Files that kept changing past the settle budget in the scan that made (or confirmed) this generation: each is in
   * it as the last generation had it (its last quiet state), or, new since then, not yet. Undefined when none was.
   */
  heldBack?: readonly string[];
}

/** Options of a scan. */
export interface ScanOptions {
  /** Total time a file that keeps changing may delay the generation before it is reported. */
  settleTimeoutMs?: number;
}

/**
 * What the scanner keeps of a stat: a BigIntStats object costs over a kilobyte, and a scan holds one per file
 * (100,000 files would be 100+ MiB).
 */
export interface StatB {
  kind: 'file' | 'dir' | 'symlink' | 'other';
  mode: number;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  ino: bigint;
}

function lstatCompact(p: string): StatB {
  const st = fs.lstatSync(p, { bigint: true });
  const kind = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
  return { kind, mode: Number(st.mode & 0o7777n), size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, ino: st.ino };
}

function sameStat(a: StatB, b: StatB): boolean {
  return a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs && a.ino === b.ino;
}

/**
 * A file written less than this long ago may be half-way through an application's multi-write update (a ledger page
 * and its index): it is read only once it has been quiet this long, and a read during which it was written is retried.
 */
export const QUIET_MS = 100;

/**
 * How long after its stamp a whole-second timestamp may still be the stamp of a new write: FAT keeps 2 s, ext4 with
 * 128-byte inodes and HFS+ 1 s. Until then a same-size rewrite leaves size, mtime, ctime and inode as they were, so
 * neither the check around a read nor the scan cache could see it: such a file is read only once its tick is over.
 */
const COARSE_TICK_MS = 2000;

/**
 * Whether a file's times may come from a filesystem that keeps whole seconds: its mtime has no sub-second part. (Not
 * its ctime too: FAT kept a creation time there, to 10 ms, before Linux 6.0.) An mtime set to a whole second on a finer
 * filesystem (an archive's, a copy's) is taken as coarse too; that costs a wait only while it is under 2.1 s old (or,
 * ahead of the clock, for 2.1 s from when it is first seen).
 */
function coarseTimes(st: StatB): boolean {
  return st.mtimeNs % 1_000_000_000n === 0n;
}

/**
 * How old, by this machine's clock, a stamp in whole seconds may look and still be dated from when it was first seen:
 * this clock may run ahead of the file server's (a company folder on a NAS), and then a stamp whose second is still
 * going on there looks seconds old here. An hour covers a clock set by hand; a file changed within it costs one wait
 * of a tick after it is first seen.
 */
const RECENT_MS = 3_600_000;

/**
 * When a scanner first saw each stamp that its own clock cannot date: one ahead of it (a file server's clock that runs
 * ahead, or this clock stepped back), or one in whole seconds that looks recent (RECENT_MS). Such a file's quiet time
 * counts from when this scanner first saw it as it is (at most that long after the change), on the monotonic clock
 * (performance.now()), which no step of the wall clock moves. Only such stamps are kept (the files changed lately),
 * by path; one not met again in a scan is forgotten at its end.
 */
export class StampSightings {
  private readonly seen = new Map<string, { stamp: string; at: number }>();
  private readonly met = new Set<string>();

  /** When (monotonic ms) `rel` was first seen with the stamp of `st` (`at`, if it is new or changed). */
  firstSeen(rel: string, st: StatB, at: number): number {
    const stamp = `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    let s = this.seen.get(rel);
    if (s?.stamp !== stamp) this.seen.set(rel, (s = { stamp, at }));
    this.met.add(rel);
    return s.at;
  }

  /** A scan is over: the paths it did not meet go. */
  endScan(): void {
    for (const rel of this.seen.keys()) if (!this.met.has(rel)) this.seen.delete(rel);
    this.met.clear();
  }

  /** Stamps kept (for tests). */
  get size(): number {
    return this.seen.size;
  }
}

/**
 * Milliseconds until a file has been quiet long enough to be read (0 when it has): QUIET_MS after its last change,
 * plus a whole tick on a filesystem that keeps whole seconds. The last change is the later of mtime and ctime: a copy
 * that puts an older mtime back (`cp -p`, tar) is told only by its ctime. A stamp this clock cannot date (see
 * StampSightings) counts from when it was first seen, or from its own time if that is later. `at`: the moment asked
 * about, in monotonic ms (a read's start, for whether that read can be trusted; now by default).
 */
export function quietInMs(st: StatB, rel: string, sightings: StampSightings, at = performance.now()): number {
  const changed = st.ctimeNs > st.mtimeNs ? st.ctimeNs : st.mtimeNs;
  const coarse = coarseTimes(st);
  let age = Date.now() - (performance.now() - at) - Number(changed / 1_000_000n);
  if (age < 0) age = at - sightings.firstSeen(rel, st, at);
  else if (coarse && age < RECENT_MS) age = Math.min(age, at - sightings.firstSeen(rel, st, at));
  const wait = QUIET_MS + (coarse ? COARSE_TICK_MS : 0);
  return age < wait ? wait - age : 0;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * How long a file held back stays known as one that will not hold still: a scan within this time gives it a short
 * budget (HELD_BUDGET_MS) instead of the whole settle budget, so a log written without pause costs each scan (a
 * follower's, every pull's) half a second, not the settle timeout each time.
 */
const HELD_MEMORY_MS = 5 * 60_000;
const HELD_BUDGET_MS = 500;

/** What a scan does with a file that kept changing past its settle budget (see CompanyScanner.holdBack). */
interface SettleRule {
  /** The budget of `rel`, in ms from when it is first seen changing in this scan. */
  budgetOf(rel: string): number;
  /**
   * Its entry as the last generation had it (`e` filled from it), undefined to leave it out; or throws UNSTABLE_FILE.
   * `budgetMs`: the budget it was given, for the message.
   */
  holdBack(rel: string, e: Entry, budgetMs: number): CachedFile | undefined;
}

/** Files up to this size are chunked in batches (a file this small is at most one segment). */
const SMALL_FILE = 1 << 20;

interface SmallFile {
  abs: string;
  rel: string;
  st: StatB;
  e: Entry;
}

/**
 * What a walk listed, in columns: a scan holds the whole listing while it reads the files, and an object with four
 * BigInts per file made that ~20 MB for 100,000 files at the scan's peak; the columns take ~40 bytes a file. A row's
 * StatB is made again when it is read (young garbage).
 */
class Listing {
  readonly rels: string[] = [];
  readonly targets = new Map<number, string>();
  /** Whether a folder the walk listed was gone (or no longer a folder) when it came to list its entries. */
  vanished = false;
  /** Each folder listed (relative path, '' the root) with a digest of the names it held then (see listingMoved). */
  readonly folders = new Map<string, string>();
  private kinds = new Uint8Array(0);
  private modes = new Uint16Array(0);
  private sizes = new Float64Array(0);
  private mtimes = new BigInt64Array(0);
  private ctimes = new BigInt64Array(0);
  private inos = new BigUint64Array(0);

  push(rel: string, st: StatB, target: string | undefined): void {
    const row = this.rels.length;
    if (row === this.kinds.length) this.grow();
    this.rels.push(rel);
    if (target !== undefined) this.targets.set(row, target);
    this.kinds[row] = KIND_CODES.indexOf(st.kind);
    this.modes[row] = st.mode;
    this.sizes[row] = Number(st.size);
    this.mtimes[row] = st.mtimeNs;
    this.ctimes[row] = st.ctimeNs;
    this.inos[row] = st.ino;
  }

  stat(row: number): StatB {
    return { kind: KIND_CODES[this.kinds[row]!]!, mode: this.modes[row]!, size: BigInt(this.sizes[row]!), mtimeNs: this.mtimes[row]!, ctimeNs: this.ctimes[row]!, ino: this.inos[row]! };
  }

  /** Bytes in the regular files listed. */
  fileBytes(): number {
    let n = 0;
    for (let row = 0; row < this.rels.length; row++) if (this.kinds[row] === FILE_CODE) n += this.sizes[row]!;
    return n;
  }

  /** Row numbers in manifest order. */
  sorted(): Uint32Array {
    const rels = this.rels;
    return Uint32Array.from(rels.keys()).sort((a, b) => comparePaths(rels[a]!, rels[b]!));
  }

  private grow(): void {
    const n = nextCapacity(this.kinds.length);
    this.kinds = widen(this.kinds, n);
    this.modes = widen(this.modes, n);
    this.sizes = widen(this.sizes, n);
    this.mtimes = widen(this.mtimes, n);
    this.ctimes = widen(this.ctimes, n);
    this.inos = widen(this.inos, n);
  }
}

const KIND_CODES: ReadonlyArray<StatB['kind']> = ['file', 'dir', 'symlink', 'other'];
const FILE_CODE = KIND_CODES.indexOf('file');

/** Whether two entries are the same in every field (a cache hit keeps the very chunk arrays: those compare by place). */
function sameEntry(x: Entry, y: Entry): boolean {
  if (x === y) return true;
  if (x.path !== y.path || x.kind !== y.kind || x.mode !== y.mode || x.mtimeNs !== y.mtimeNs || x.size !== y.size) return false;
  return x.target === y.target && PackedEntry.sameChunks(x, y);
}

/** Whether two scans listed the same entries. */
function sameEntries(a: Entry[], b: Entry[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!sameEntry(a[i]!, b[i]!)) return false;
  return true;
}

/** Keeps one company's scan cache and produces its generations. */
export class CompanyScanner {
  private cache = new ScanCache();
  private last?: Generation;
  private running?: Promise<Generation>;
  private generationNo = 0;
  /** Bytes read by the last scan (0 when everything came from the cache). */
  lastBytesRead = 0;

  /** Stamps this machine's clock cannot date, and when they were first seen (quietInMs). */
  private readonly sightings = new StampSightings();

  /** Files held back by a scan (they kept changing), and when (monotonic ms): see HELD_MEMORY_MS. */
  private readonly heldAt = new Map<string, number>();
  /**
   * Whether the cache loaded from the cache file is that of the generation the counter names (a cache file lost or
   * older than the counter is not): only then can a scan after a restart tell a new file from one a branch may hold.
   */
  private loadedCacheVouches = false;

  /** Chunk parameters of the last scan (or of the saved cache). */
  private params: ChunkParams;
  /** Chooses them at each scan from the company's size; undefined when the caller fixed them. */
  private readonly policy?: ChunkPolicy;

  /**
   * @param params chunk parameters for every scan, or a policy choosing them at each scan from the company's size
   *   (default chunkParamsFor: a large company has no more chunks than a 2 GiB one)
   * @param cacheFile where to keep the scan cache across restarts (serve --cache-dir); memory only when undefined
   */
  constructor(
    readonly root: string,
    private readonly pool: WorkerPool,
    params: ChunkParams | ChunkPolicy = chunkParamsFor,
    private readonly cacheFile?: string,
  ) {
    const fixed = typeof params === 'function' ? undefined : params;
    this.policy = typeof params === 'function' ? params : undefined;
    this.params = fixed ?? DEFAULT_CHUNK_PARAMS;
    if (cacheFile) {
      const saved = loadScanCache(cacheFile, root, fixed);
      if (saved) {
        this.cache = saved.files;
        this.generationNo = saved.generation;
        this.savedRoot = saved.rootHash;
        this.params = saved.params;
      }
      const counter = readGenerationCounter(counterFileOf(cacheFile));
      if (counter && counter.generation > this.generationNo) {
        this.generationNo = counter.generation;
        this.savedRoot = counter.rootHash;
      }
      this.loadedCacheVouches = saved !== undefined && saved.generation === this.generationNo;
    }
  }

  /** Root hash of the generation the cache file was saved with (keeps the generation number across restarts). */
  private savedRoot = '';
  /** Whether the company folder was a mount point at the first scan that found files in it (see doScan). */
  private rootMounted?: boolean;

  /** Files invalidated while a scan runs: that scan may have looked them up in the cache already (see doScan). */
  private invalidatedMidScan?: Set<string>;

  /** Called by invalidate: the watcher counts it as a change, so that it no longer vouches for the generation. */
  onInvalidate?: (rel: string) => void;

  /**
   * Forgets what is cached for one file (its bytes did not match what the cache said, as a STALE read finds after a
   * write through a shared memory map, which changes no stat): it is read again next scan.
   */
  invalidate(rel: string): void {
    this.cache.delete(rel);
    this.invalidatedMidScan?.add(rel);
    this.onInvalidate?.(rel);
  }

  /** The newest generation scanned, if any. */
  get current(): Generation | undefined {
    return this.last;
  }

  /**
   * Whether every file of the last scan still has the size, mtime, ctime and inode it had then: a scan without the
   * folder listing, the entries and the manifest (100,000 files: ~0.2 s against ~1 s). With a watcher that saw no event
   * it stands in for a scan: a write through a shared memory map raises no file event but changes the file's times.
   */
  async filesUnchanged(): Promise<boolean> {
    // A generation that holds a file back is not the folder as it is: nothing vouches for it (a file left out as new
    // has no row to sweep, and one written through a shared map raises no event: it would never be offered).
    if (this.heldAt.size > 0) return false;
    const cache = this.cache;
    let n = 0;
    for (const [rel, row] of cache.rowsOf()) {
      // Other sessions go on between slices (a sweep of 100,000 files takes a fifth of a second).
      if (++n % 2048 === 0) {
        await new Promise((r) => setImmediate(r));
        if (this.cache !== cache) return false;
      }
      let st: StatB;
      try {
        st = lstatCompact(entryPath(this.root, rel));
      } catch {
        return false;
      }
      if (!cache.matches(row, st)) return false;
    }
    return true;
  }

  /** Scans now; concurrent callers share one scan. */
  scan(opts: ScanOptions = {}): Promise<Generation> {
    this.running ??= this.doScan(opts)
      .catch(siteCannotRead)
      .finally(() => {
        this.running = undefined;
        this.invalidatedMidScan = undefined;
        this.sightings.endScan();
      });
    return this.running;
  }

  /** Resolves once no scan is under way (one that began earlier may have read the tree before a change of interest). */
  async idle(): Promise<void> {
    while (this.running) await this.running.catch(() => undefined);
  }

  private async doScan(opts: ScanOptions): Promise<Generation> {
    const settleTimeoutMs = opts.settleTimeoutMs ?? 30_000;
    const started = Date.now();
    let rootStat: fs.Stats;
    try {
      rootStat = fs.statSync(this.root);
    } catch (err) {
      return fail(ErrorCodes.IO, `company folder ${this.root} cannot be read: ${(err as Error).message}`);
    }
    if (!rootStat.isDirectory()) fail(ErrorCodes.IO, `company folder ${this.root} is not a directory`);
    const mounted = isMountPoint(this.root, rootStat);
    if (this.rootMounted && !mounted) {
      // The disk mounted at the company's path was unmounted (a NAS or USB disk gone): the mount point left bare is not
      // the company, and offered as a generation every branch would apply it and lose its files.
      fail(ErrorCodes.IO, `company folder ${this.root} is no longer on the filesystem it was on (its disk unmounted?); not offered until it is mounted again`);
    }
    const invalidated = (this.invalidatedMidScan = new Set<string>());
    let listed = await this.walk();
    // A folder removed or renamed while the walk ran is walked again (twice at most): the generation is then the tree
    // after the change, not one that lacks a moved folder's files (which every branch would delete, then fetch anew).
    // So is one where a folder listed early holds other names by the walk's end: a folder or file moved from a folder
    // not listed yet into one listed already was in neither listing.
    for (let i = 0; i < 2 && (listed.vanished || (await this.listingMoved(listed))); i++) listed = await this.walk();
    this.lastBytesRead = 0;
    // The parameters and the cache this scan chunks and looks files up with; this.params and this.cache change only
    // when it succeeds (a failed scan must leave the cache that vouches for the last generation as it was).
    let params = this.params;
    let cache = this.cache;
    if (this.policy && !listed.vanished) {
      // The level in use is kept within its bounds: only a first scan (no cache saved) chooses from the size alone.
      const chosen = this.policy(listed.fileBytes(), this.last || this.savedRoot ? this.params : undefined);
      if (!sameChunkParams(chosen, this.params)) {
        // Every file is chunked again with the new parameters: nothing cached under the old ones applies.
        params = chosen;
        cache = new ScanCache();
      }
    }
    let entries: Entry[] = [];
    const nextCache = new ScanCache();
    const held: string[] = [];
    const settle: SettleRule = {
      // The short budget only where holding back can succeed: where the file can only be refused, it has the whole
      // budget to settle in (a file written in bursts is then read in a pause, not refused after half a second).
      budgetOf: (rel) => {
        const at = this.heldAt.get(rel);
        const recent = at !== undefined && performance.now() - at < HELD_MEMORY_MS && this.holdingOf(rel, cache) !== 'refuse';
        return recent ? Math.min(settleTimeoutMs, HELD_BUDGET_MS) : settleTimeoutMs;
      },
      holdBack: (rel, e, budgetMs) => {
        const kept = this.holdBack(rel, e, cache, budgetMs);
        held.push(rel);
        this.heldAt.set(rel, performance.now());
        return kept;
      },
    };
    /** Files listed by the walk but gone (or no longer regular files) when read: not part of this generation. */
    const gone = new Set<Entry>();
    const jobs: Array<Promise<void>> = [];
    const inFlightLimit = this.pool.size * 3;
    let inFlight = 0;
    let wake: (() => void) | undefined;
    let firstError: unknown;
    let small: SmallFile[] = [];
    let smallBytes = 0;
    const flushSmall = async (): Promise<void> => {
      if (small.length === 0) return;
      const batch = small;
      small = [];
      smallBytes = 0;
      while (inFlight >= inFlightLimit) await new Promise<void>((r) => (wake = r));
      inFlight++;
      jobs.push(
        this.chunkSmallFiles(batch, params, settle, nextCache, gone)
          .catch((err) => void (firstError ??= err))
          .finally(() => {
            inFlight--;
            wake?.();
          }),
      );
    };
    // A rescan keeps the last generation's entry object wherever the entry is the same: with a new object per file the
    // site held two manifests' entries through every rescan (100,000 files: +15 MB at its peak, three scans at start).
    const before = this.last?.manifest.entries ?? [];
    let bi = 0;
    const keepOld = (e: Entry): Entry => {
      while (bi < before.length && comparePaths(before[bi]!.path, e.path) < 0) bi++;
      const old = before[bi];
      return old && sameEntry(old, e) ? old : e;
    };
    for (const row of listed.sorted()) {
      // A file that would not hold still has failed the scan: nothing more is read (each file waits for its own
      // settle budget, so going on would make a scan of many busy files fail only after many budgets).
      if (firstError) break;
      const rel = listed.rels[row]!;
      const st = listed.stat(row);
      const target = listed.targets.get(row);
      const abs = entryPath(this.root, rel);
      const e: Entry = new PackedEntry(rel, 'file', st.mode, st.mtimeNs);
      entries.push(e);
      if (st.kind === 'dir') {
        e.kind = 'dir';
        entries[entries.length - 1] = keepOld(e);
      } else if (st.kind === 'symlink') {
        e.kind = 'symlink';
        e.target = target;
        entries[entries.length - 1] = keepOld(e);
      } else {
        e.size = Number(st.size);
        const row = cache.rowOf(rel);
        const hit = row !== undefined && cache.matches(row, st) ? cache.at(row) : undefined;
        if (hit) {
          // The cache's copy of the path: the walk's own becomes garbage, so each rescan does not add a copy.
          e.path = hit.path;
          e.lens = hit.lens;
          e.ids = hit.ids;
          nextCache.set(hit.path, hit);
          entries[entries.length - 1] = keepOld(e);
          continue;
        }
        // Small files go to the workers in batches: one job per file would spend more on messages than on reading.
        if (e.size <= SMALL_FILE) {
          small.push({ abs, rel, st, e });
          smallBytes += e.size;
          if (small.length >= 256 || smallBytes >= 8 << 20) await flushSmall();
          continue;
        }
        while (inFlight >= inFlightLimit) await new Promise<void>((r) => (wake = r));
        inFlight++;
        jobs.push(
          this.chunkFile(abs, rel, st, e, params, settle)
            .then((c) => void (c ? nextCache.set(rel, c) : gone.add(e)))
            .catch((err) => void (firstError ??= err))
            .finally(() => {
              inFlight--;
              wake?.();
            }),
        );
      }
    }
    await flushSmall();
    await Promise.all(jobs);
    if (firstError) throw firstError;
    if (gone.size > 0) entries = entries.filter((e) => !gone.has(e));
    // An invalidate that came after this scan took the file from the old cache must outlive the swap below.
    for (const rel of invalidated) nextCache.delete(rel);
    this.cache = nextCache;
    this.params = params;
    // A file held back before and not now (read whole and quiet, unchanged, or gone) is no longer a busy one.
    const heldNow = new Set(held);
    for (const rel of this.heldAt.keys()) if (!heldNow.has(rel)) this.heldAt.delete(rel);
    const heldBack = held.length > 0 ? held.sort(comparePaths) : undefined;
    // Nothing read and every entry as before: the same generation, without checking, encoding and hashing it again
    // (an unchanged company's pull costs the site one walk of the tree).
    if (this.lastBytesRead === 0 && this.last && sameEntries(this.last.manifest.entries, entries)) {
      this.last = { ...this.last, scannedAt: started, heldBack };
      return this.last;
    }
    const manifest: Manifest = { params, entries };
    try {
      checkTree(manifest);
    } catch (err) {
      if (err instanceof SnapferryError) fail(ErrorCodes.UNSAFE_TREE, `company ${this.root}: ${err.message}`);
      throw err;
    }
    const encoded = encodeManifest(manifest);
    const rootHash = rootHashOf(encoded);
    const previous = this.last?.rootHash ?? this.savedRoot;
    if (previous !== rootHash) {
      this.generationNo++;
      // Its own small file, written before the scan cache (which a full disk or a damaged file may lose): numbers go
      // on from it, never back to 1, nor the same number to two trees.
      // Flushed off the event loop (both writes): the site serves its branches meanwhile.
      if (this.cacheFile) await writeGenerationCounter(counterFileOf(this.cacheFile), this.generationNo, rootHash);
    }
    if (this.cacheFile && (previous !== rootHash || this.lastBytesRead > 0)) {
      try {
        await saveScanCache(this.cacheFile, { root: this.root, params, generation: this.generationNo, rootHash, files: this.cache });
        this.savedRoot = rootHash;
      } catch {
        /* a cache that cannot be written only costs a re-read after a restart */
      }
    }
    this.last = { manifest, encoded, rootHash, generation: this.generationNo, absPath: absPathsOf(this.root, entries), scannedAt: started, heldBack };
    // Not from an empty first scan: a site started before its disk was mounted has the mount point's device until then.
    if (this.rootMounted === undefined && entries.length > 0) this.rootMounted = mounted;
    return this.last;
  }

  /** Lists the tree in manifest order, refusing special files, symlinks that leave the tree and names not in UTF-8. */
  private async walk(): Promise<Listing> {
    const out = new Listing();
    const visit = async (relDir: string): Promise<void> => {
      const absDir = relDir ? entryPath(this.root, relDir) : this.root;
      let listedNames: string[];
      try {
        listedNames = await fs.promises.readdir(absDir);
      } catch (err) {
        // A folder removed, renamed or replaced by a file since its parent was listed: empty as far as this walk saw
        // (and the scan walks again).
        const code = (err as NodeJS.ErrnoException).code;
        if (relDir && (code === 'ENOENT' || code === 'ENOTDIR')) {
          out.vanished = true;
          return;
        }
        throw err;
      }
      const names = listedNames.sort((a, b) => comparePaths(a, b));
      out.folders.set(relDir, namesDigest(names));
      if (names.some((n) => n.includes('\ufffd'))) await refuseNonUtf8(absDir, relDir);
      const subdirs: string[] = [];
      for (const name of names) {
        // Joined, not concatenated: a concatenation is a tree of two string nodes over the folder's path and the name
        // (~60 bytes a file more, for as long as the manifest lives).
        const rel = relDir ? [relDir, name].join('/') : name;
        const abs = `${absDir}/${name}`;
        let st: StatB;
        let target: string | undefined;
        let rawTarget: Buffer | undefined;
        try {
          st = lstatCompact(abs);
          if (st.kind === 'symlink') rawTarget = fs.readlinkSync(abs, { encoding: 'buffer' });
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          // Deleted while we listed (or its folder replaced by a file, or a link by something else before readlink):
          // not part of this generation. Nothing else is: a folder the site may list but not enter (EACCES) or a path
          // past the system's limit was once left out of the copy without a word.
          if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EINVAL') continue;
          if (code === 'ENAMETOOLONG') {
            fail(ErrorCodes.UNSAFE_TREE, `refused ${shortenedPath(rel)}: its path is longer than the site's system can open (${Buffer.byteLength(abs)} bytes from /; make the tree shallower or its names shorter)`);
          }
          throw err; // EACCES: the site cannot read its company (siteCannotRead names the path)
        }
        // Read as a string, a target that is not UTF-8 would be carried with U+FFFD in its bytes' place: refused as
        // such names are.
        if (rawTarget) {
          if (!isUtf8(rawTarget)) fail(ErrorCodes.UNSAFE_TREE, `refused ${rel}: its symbolic link's target is not valid UTF-8 (snapferry carries UTF-8 names only; make the link anew)`);
          target = rawTarget.toString('utf8');
        }
        // The manifest holds times as signed 64-bit nanoseconds: a stamp past 2262-04-11 (ext4 allows up to 2446)
        // would wrap to 1677 and be carried wrong.
        if (st.mtimeNs > MAX_TIME_NS || st.mtimeNs < -MAX_TIME_NS) {
          fail(ErrorCodes.UNSAFE_TREE, `refused ${rel}: its modification time is beyond what snapferry carries (1677 to 2262); set it with touch`);
        }
        if (st.kind === 'dir') {
          if (isCopyStateFolder(name, abs)) {
            fail(ErrorCodes.UNSAFE_TREE, `refused ${rel}: the state folder of a snapferry copy (${name.slice(1, -STATE_SUFFIX.length)}) lies inside the company; a branch's copy must lie outside the folder it pulls from, or each generation holds the last (move the copy and its state folder elsewhere)`);
          }
          subdirs.push(rel);
        } else if (st.kind === 'file') {
          // A sighting: a stamp this machine's clock cannot date waits from here (StampSightings), not from its first read.
          quietInMs(st, rel, this.sightings);
        } else if (target !== undefined) {
          const resolved = path.resolve(path.dirname(abs), target);
          // Absolute, even into the company: at a branch it would lead to the site's path, not into the copy.
          if (path.isAbsolute(target)) {
            fail(ErrorCodes.UNSAFE_TREE, `refused ${rel}: symlink with an absolute target (${target}); a copy elsewhere would not lead where it leads: make it relative`);
          }
          if (!(resolved === this.root || resolved.startsWith(this.root + path.sep))) {
            fail(ErrorCodes.UNSAFE_TREE, `refused ${rel}: symlink points outside the company folder (${target})`);
          }
        } else {
          fail(ErrorCodes.UNSAFE_TREE, `refused ${rel}: special file (device, socket or FIFO) in the company folder`);
        }
        out.push(rel, st, target);
      }
      for (const rel of subdirs) await visit(rel);
    };
    await visit('');
    return out;
  }

  /**
   * Whether any folder the walk listed now holds other names than it did then (or is gone): names only, one listing a
   * folder (no stat of its files), in the walk's order.
   */
  private async listingMoved(listed: Listing): Promise<boolean> {
    for (const [relDir, digest] of listed.folders) {
      let names: string[];
      try {
        names = await fs.promises.readdir(relDir ? entryPath(this.root, relDir) : this.root);
      } catch {
        return true;
      }
      if (namesDigest(names.sort((a, b) => comparePaths(a, b))) !== digest) return true;
    }
    return false;
  }

  /**
   * A file kept changing past its settle budget. A generation must not wait for it (a log appended without pause would
   * hold back every other change of the company), nor hold a torn copy of it: it keeps the state the last generation
   * had, the last one read whole and quiet (`e` takes that state's size, time, mode and chunks; the cache keeps that
   * state's stats, so the next scan reads it again), or, new since then, is left out as if not made yet. Refused
   * (UNSTABLE_FILE, the generation delayed) where that state is not known for sure (holdingOf). Each file's own bytes
   * are whole; across files a scan never was one instant (it reads file after file), and a held-back file is one more
   * of its files read at another moment.
   */
  private holdBack(rel: string, e: Entry, cache: ScanCache, budgetMs: number): CachedFile | undefined {
    const holding = this.holdingOf(rel, cache);
    if (holding === 'refuse') {
      const budget = budgetMs >= 1000 ? `${Math.round(budgetMs / 1000)} s` : `${budgetMs} ms`;
      return fail(ErrorCodes.UNSTABLE_FILE, `${rel} kept changing for ${budget} while it was read; generation delayed, try again when it is idle`);
    }
    if (holding === 'omit') return undefined;
    const kept = cache.at(cache.rowOf(rel)!);
    e.size = kept.size;
    e.mtimeNs = kept.mtimeNs;
    const before = this.last ? lastEntryOf(this.last, rel) : undefined;
    if (before?.kind === 'file') e.mode = before.mode;
    e.lens = kept.lens;
    e.ids = kept.ids;
    return kept;
  }

  /**
   * What holding back `rel` would do in a scan with `cache`: keep its last state, where the cache vouches for the last
   * generation (the one this site made, or the one its cache file was saved with and its counter names) and has its
   * row; leave it out, where this site made the last generation and it had no file there; else refuse. Refused, so:
   * the chunk size changed (`cache` is a new one); its row was dropped (a read found its chunks gone: the server's STALE
   * answer); a cache file older than the counter, or emptied by a reboot; and any file without a row in the first scan
   * after a start, which cannot tell a new file from one whose row a read dropped, or one a site started without
   * `--cache-dir` never saw (a branch may hold it: left out, the branch would delete it).
   */
  private holdingOf(rel: string, cache: ScanCache): 'keep' | 'omit' | 'refuse' {
    if (cache !== this.cache || (!this.last && !this.loadedCacheVouches)) return 'refuse';
    if (cache.rowOf(rel) !== undefined) return 'keep';
    if (!this.last || lastEntryOf(this.last, rel)?.kind === 'file') return 'refuse';
    return 'omit';
  }

  /** Written too recently to be read, or to trust a read of that began at `at` (see quietInMs). */
  private justWritten(st: StatB, rel: string, at?: number): boolean {
    return quietInMs(st, rel, this.sightings, at) > 0;
  }

  /**
   * Chunks a batch of small files in one job. Each file's stat is checked again afterwards; one that changed while it
   * was read goes through chunkFile (re-read until it holds still, within the settle budget), one gone goes in `gone`.
   */
  private async chunkSmallFiles(batch: SmallFile[], params: ChunkParams, settle: SettleRule, into: ScanCache, gone: Set<Entry>): Promise<void> {
    const readAt = performance.now();
    const r = await this.pool.run<ChunkFilesResult>({
      kind: 'chunkFiles',
      paths: batch.map((f) => f.abs),
      sizes: Float64Array.from(batch.map((f) => f.e.size)),
      params,
    });
    const retry: Array<Promise<void>> = [];
    let k = 0;
    batch.forEach((f, i) => {
      // Views of the batch's two arrays (one pair of buffers per batch, not per file).
      const count = r.counts[i]!;
      const res = count < 0 ? null : { lens: r.lens.subarray(k, k + count), ids: r.ids.subarray(k, k + count) };
      if (count > 0) k += count;
      let after: StatB | undefined;
      try {
        after = lstatCompact(f.abs);
      } catch {
        after = undefined;
      }
      if (res && after && sameStat(f.st, after) && !this.justWritten(after, f.rel, readAt)) {
        this.lastBytesRead += f.e.size;
        f.e.lens = res.lens;
        f.e.ids = res.ids;
        into.set(f.rel, { size: f.e.size, mtimeNs: f.st.mtimeNs, ctimeNs: f.st.ctimeNs, ino: f.st.ino, lens: res.lens, ids: res.ids });
      } else if (!after || after.kind !== 'file') {
        gone.add(f.e); // deleted, renamed away or replaced since the walk listed it: as if gone during the walk
      } else {
        retry.push(this.chunkFile(f.abs, f.rel, after, f.e, params, settle).then((c) => void (c ? into.set(f.rel, c) : gone.add(f.e))));
      }
    });
    await Promise.all(retry);
  }

  /**
   * Chunks one file, re-reading it while it changes under us, within the settle budget; past it, the file is held back
   * (SettleRule.holdBack). Undefined when the file is gone or no longer a regular file, or held back being new: it is
   * then left out of this generation, like a file deleted during the walk.
   */
  private async chunkFile(abs: string, rel: string, st0: StatB, e: Entry, params: ChunkParams, settle: SettleRule): Promise<CachedFile | undefined> {
    let before = st0;
    // The settle budget counts from when this file was first seen changing, not from the scan's start: a long scan
    // (a large company's first index) must not fail a file that was written once, briefly, just before its turn.
    let changingSince: number | undefined;
    const budget = settle.budgetOf(rel);
    const unsettled = () => performance.now() - (changingSince ??= performance.now()) > budget;
    for (let attempt = 0; ; attempt++) {
      const quietIn = quietInMs(before, rel, this.sightings);
      if (quietIn > 0) {
        // Written a moment ago: wait until it has been quiet long enough before reading it at all.
        if (unsettled()) return settle.holdBack(rel, e, budget);
        await sleep(quietIn + 2);
        let again: StatB;
        try {
          again = lstatCompact(abs);
        } catch {
          return undefined;
        }
        if (again.kind !== 'file') return undefined;
        before = again;
        attempt--;
        continue;
      }
      const size = Number(before.size);
      let results: ChunkSegmentResult[] | undefined;
      let readError: unknown;
      const readAt = performance.now();
      try {
        results = await Promise.all(chunkSegmentsOf(this.pool, abs, size, params));
      } catch (err) {
        readError = err;
      }
      let after: StatB | undefined;
      try {
        after = lstatCompact(abs);
      } catch {
        after = undefined;
      }
      // Deleted, renamed away or replaced by a folder, FIFO or link since it was listed (ENOENT, ELOOP...): not a failure.
      if (!after || after.kind !== 'file') return undefined;
      // A folder above it replaced by a link since the walk listed it: the path now leads through the link (the
      // workers refuse to read there: openRegular's exact paths), and the file the walk saw is gone from its place.
      if ((readError || !sameStat(before, after)) && !inPlace(abs)) return undefined;
      // A file that is still as it was yet cannot be read (permission, I/O error) fails the scan; a changed one is re-read.
      if (readError && sameStat(before, after) && !(readError instanceof SnapferryError && readError.code === ErrorCodes.UNSTABLE_FILE)) throw readError;
      if (results && after && sameStat(before, after) && !this.justWritten(after, rel, readAt)) {
        this.lastBytesRead += size;
        const { lens, ids } = joinChunkLists(results);
        e.size = size;
        e.mtimeNs = before.mtimeNs;
        e.mode = before.mode;
        e.lens = lens;
        e.ids = ids;
        return { size, mtimeNs: before.mtimeNs, ctimeNs: before.ctimeNs, ino: before.ino, lens, ids };
      }
      if (unsettled()) return settle.holdBack(rel, e, budget);
      // Back off a little more each time so that an application mid-write can finish.
      await sleep(Math.min(1000, 50 * 2 ** attempt));
      before = after;
    }
  }
}

/** The entry at `rel` in generation `g`, if any. */
function lastEntryOf(g: Generation, rel: string): Entry | undefined {
  return g.manifest.entries[indexOfPath(g.manifest.entries, rel)];
}

/** Whether the folders above `abs` (a path made from the company's real path) are still folders, no link among them. */
function inPlace(abs: string): boolean {
  const dir = path.dirname(abs);
  try {
    return fs.realpathSync(dir) === dir;
  } catch {
    return false;
  }
}

/**
 * A generation's absPath, made outside doScan: a closure made there would keep the whole scan's context alive with
 * the generation (its scan cache, batches and job list: ~12 MB for 100,000 files once a second scan found nothing new).
 */
function absPathsOf(root: string, entries: readonly Entry[]): (ei: number) => string {
  return (ei) => entryPath(root, entries[ei]!.path);
}

/** A digest of a folder's sorted names (a walk keeps one per folder, not the names twice). */
function namesDigest(names: readonly string[]): string {
  const h = createHash('sha1');
  for (const n of names) h.update(n).update('\0');
  return h.digest('base64');
}

/** The largest time (nanoseconds from the epoch, either way) a manifest holds: a signed 64-bit integer's range. */
const MAX_TIME_NS = (1n << 63n) - 1n;

/** Whether folder `dir` (stat `st`) is a mount point: on another filesystem than its parent (or the root itself). */
function isMountPoint(dir: string, st: fs.Stats): boolean {
  try {
    return fs.statSync(path.dirname(dir)).dev !== st.dev || path.dirname(dir) === dir;
  } catch {
    return false;
  }
}

const STATE_SUFFIX = '.snapferry';

/**
 * Whether folder `name` at `abs` is a branch copy's state folder (`.NAME.snapferry` holding snapferry's lock or
 * records): a copy pulled into the company it is pulled from. Served, every generation would carry the copy of the
 * last one (and its lock), nesting without end as a follower pulls.
 */
function isCopyStateFolder(name: string, abs: string): boolean {
  if (name.length <= STATE_SUFFIX.length + 1 || name[0] !== '.' || !name.endsWith(STATE_SUFFIX)) return false;
  return ['lock', 'applied.json', 'next.json', 'commit.json'].some((f) => fs.existsSync(`${abs}/${f}`));
}

/**
 * Refuses a folder holding a name that is not valid UTF-8 (a Latin-1 "B\xfcro.txt" from an old share, say). Node
 * lists such a name with U+FFFD in place of the bad bytes, a name no call can open: left alone, the file would be
 * missing from every generation without a word. Called only when a listed name has U+FFFD in it (it may be genuine).
 */
async function refuseNonUtf8(absDir: string, relDir: string): Promise<void> {
  for (const raw of await fs.promises.readdir(absDir, { encoding: 'buffer' })) {
    if (isUtf8(raw)) continue;
    const shown = Array.from(raw, (b) => (b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`)).join('');
    fail(ErrorCodes.UNSAFE_TREE, `refused ${relDir ? `${relDir}/` : ''}${shown}: file name is not valid UTF-8 (snapferry carries UTF-8 names only; rename it)`);
  }
}

/**
 * A file of the company the site may not read is the site's problem, not a branch's folder: "permission denied"
 * reaches the puller as SNAPFERRY_E_IO naming the site, not as the DIR_NOT_WRITABLE a branch's own EACCES means.
 */
function siteCannotRead(err: unknown): never {
  throw siteReadError(err);
}

/**
 * The error of a site's read of its own company: a permission error (which names a folder the process may not write
 * when it is the branch's) is an I/O error of the site, said so with the remedy; any other as it is.
 */
export function siteReadError(err: unknown): SnapferryError {
  const e = toSnapferryError(err);
  if (e.code !== ErrorCodes.DIR_NOT_WRITABLE) return e;
  return new SnapferryError(ErrorCodes.IO, `the site cannot read its company: ${e.message} (give the user serve runs as read access)`, { cause: err });
}
