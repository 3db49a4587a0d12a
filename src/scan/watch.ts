/**
 * Watches a company folder and announces each new generation once changes settle. One non-recursive fs.watch per
 * folder (an inotify watch each; Node 20's recursive mode on Linux keeps per-file state: ~3.5 KiB a file, 350 MiB
 * for 100,000 files) makes it prompt; a stat-only poll catches whatever the watchers miss (network filesystems,
 * overflowed event queues, more folders than MAX_WATCHED_DIRS). Both only trigger a scan, and a scan re-reads only
 * files whose size, mtime, ctime or inode changed.
 *
 * While every folder is watched on a local filesystem, no event came since the last scan began and every file's stat
 * is unchanged, the watcher vouches for that scan's generation (settledGeneration) and a pull needs no scan of its own:
 * for 100,000 files that saves most of a second of the site's time per pull. On network and FUSE filesystems, where
 * changes made by other machines raise no event, it never vouches, and every pull scans.
 */
import fs from 'node:fs';
import path from 'node:path';
import { EventEmitter } from 'node:events';
import type { CompanyScanner, Generation } from './scanner.js';

/** Options of a watcher. */
export interface WatchOptions {
  /** Quiet time after the last change before a scan (default 300 ms). */
  settleMs?: number;
  /** Longest a stream of changes may delay a scan (default 3 s). */
  maxDelayMs?: number;
  /**
   * Poll interval (default 5 s for a stat sweep, at least 50x the last sweep's duration, while every folder is watched
   * on a local filesystem; else 15 s for a scan with some folders watched, 2 s with none, at least 5x the last scan's).
   */
  pollMs?: number;
  settleTimeoutMs?: number;
}

/** Folders watched at most; beyond that the poll alone notices changes (and every pull scans). */
const MAX_WATCHED_DIRS = 8192;

/** statfs types of network and FUSE filesystems (Linux magic numbers): changes made elsewhere raise no event there. */
const REMOTE_FS = new Set([0x6969, 0x517b, 0xff534d42, 0xfe534d42, 0x65735546, 0x00c36400, 0x01021997, 0x5346414f, 0x73757245, 0x564c, 0x0bd00bd0, 0x01161970, 0x7461636f]);

/** Whether events from this folder's filesystem can be trusted to report every change (a local filesystem). */
function localFilesystem(dir: string): boolean {
  try {
    return !REMOTE_FS.has(Number(fs.statfsSync(dir).type) >>> 0);
  } catch {
    return false;
  }
}

/** Emits 'generation' (Generation) when the company's root hash changes, 'error' (Error) when a scan fails. */
export class CompanyWatcher extends EventEmitter {
  private readonly watchers = new Map<string, fs.FSWatcher>();
  private pollTimer?: NodeJS.Timeout;
  private settleTimer?: NodeJS.Timeout;
  private firstEventAt = 0;
  private scanning = false;
  private again = false;
  private stopped = false;
  private lastScanMs = 0;
  private lastSweepMs = 0;
  private lastScanAt = -Infinity;
  /** Root hash of the generation last announced ('generation' event). */
  private announced?: string;
  /**
   * Counts the changes seen (folder events, new folders, lost watches, STALE reads); cleanSeq is its value when the
   * last scan began.
   */
  private eventSeq = 0;
  private cleanSeq = -1;
  private allWatched = false;

  constructor(
    private readonly scanner: CompanyScanner,
    private readonly opts: WatchOptions = {},
  ) {
    super();
  }

  private local = false;

  /** A read found a file's bytes no longer those of the scan (scanner.invalidate): the generation is not vouched for. */
  private readonly onStale = (): void => this.changed();

  /** Starts watching. */
  start(): void {
    this.local = localFilesystem(this.scanner.root);
    this.scanner.onInvalidate = this.onStale;
    this.watchDirs(this.scanner.current);
    // Joins the scan under way (or makes one) so that every folder is watched as soon as it is known.
    void this.scanNow();
    this.schedulePoll();
  }

  /**
   * The newest generation, if nothing in the company can have changed since the scan that made it began: every folder
   * is watched, no event came since, and every file still has the stat it had (writes through shared memory maps raise
   * no event, but change times). A pull then needs no scan of its own. Waits one turn of the event loop first, so that
   * a change made before the pull asked (its event already queued by the kernel) is seen.
   */
  async settledGeneration(): Promise<Generation | undefined> {
    await new Promise((r) => setImmediate(r));
    if (this.stopped || this.scanning || this.settleTimer || this.again || !this.allWatched) return undefined;
    if (this.cleanSeq !== this.eventSeq) return undefined;
    const current = this.scanner.current;
    if (!(await this.scanner.filesUnchanged())) {
      this.changed();
      return undefined;
    }
    return this.cleanSeq === this.eventSeq ? current : undefined;
  }

  /** Watches the root and every folder of the generation (new ones added, gone ones dropped). */
  private watchDirs(g: Generation | undefined): void {
    if (this.stopped) return;
    const dirs = new Set<string>([this.scanner.root]);
    let folders = 1;
    if (g) {
      g.manifest.entries.forEach((e, i) => {
        if (e.kind !== 'dir') return;
        folders++;
        if (dirs.size < MAX_WATCHED_DIRS) dirs.add(g.absPath(i));
      });
    }
    for (const [d, w] of this.watchers) {
      if (!dirs.has(d)) {
        w.close();
        this.watchers.delete(d);
      }
    }
    let added = false;
    for (const d of dirs) {
      if (this.watchers.has(d)) continue;
      try {
        const w = fs.watch(d, { persistent: false }, (event, name) => this.folderEvent(d, event, name));
        w.on('error', () => {
          w.close();
          if (this.watchers.get(d) === w) this.watchers.delete(d);
          this.allWatched = false;
          this.eventSeq++;
        });
        this.watchers.set(d, w);
        added = true;
      } catch {
        /* gone already, or out of inotify watches: the poll still notices */
      }
    }
    this.allWatched = this.local && g !== undefined && folders === dirs.size && this.watchers.size === dirs.size;
    // A folder watched only now may have changed after the scan read it: trusted again after a scan that began later.
    if (added && g) this.changed();
  }

  /**
   * An event in watched folder `dir`. A 'rename' naming a watched folder (one in `dir`, or `dir` itself: its own watch
   * reports its removal or move under its own name) may mean that folder was removed or moved and another made at its
   * path. The old watch does not cover the new folder (ext4 even reuses the inode number at once), so it is dropped and
   * the scan this event causes watches the path afresh.
   */
  private folderEvent(dir: string, event: string, name: string | null): void {
    if (event === 'rename' && name) {
      this.unwatch(`${dir}/${name}`);
      if (name === path.basename(dir)) this.unwatch(dir);
    }
    this.changed();
  }

  /**
   * Stops watching a folder and every folder below it (watched again by the next watchDirs); nothing is vouched for
   * until then. The watches below go too: they follow their folders' inodes, which moved along (mv A A.old), so a
   * folder made anew at one of their paths (cp -a A.old A) would otherwise raise no event.
   */
  private unwatch(dir: string): void {
    const below = `${dir}/`;
    for (const [d, w] of this.watchers) {
      if (d !== dir && !d.startsWith(below)) continue;
      w.close();
      this.watchers.delete(d);
      this.allWatched = false;
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.scanner.onInvalidate === this.onStale) this.scanner.onInvalidate = undefined;
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    clearTimeout(this.pollTimer);
    clearTimeout(this.settleTimer);
  }

  private schedulePoll(): void {
    if (this.stopped) return;
    // With every folder watched on a local filesystem, events tell of every change but writes through shared memory
    // maps: a stat sweep every few seconds (at most 2% of a core) finds those, and a full scan every ten minutes is the
    // safety net. Otherwise the poll is how changes are found: a scan every 15 s (2 s with no folder watched).
    const every = this.allWatched
      ? Math.max(this.opts.pollMs ?? 5000, this.lastSweepMs * 50)
      : Math.max(this.opts.pollMs ?? (this.watchers.size > 0 ? 15_000 : 2000), this.lastScanMs * 5);
    this.pollTimer = setTimeout(() => {
      void this.poll().finally(() => this.schedulePoll());
    }, every);
    this.pollTimer.unref();
  }

  private async poll(): Promise<void> {
    if (!this.allWatched || performance.now() - this.lastScanAt > 600_000) return this.scanNow();
    const t0 = performance.now();
    const same = await this.scanner.filesUnchanged();
    this.lastSweepMs = performance.now() - t0;
    if (!same) this.changed();
  }


  /** A change was seen: scan once things are quiet, or after maxDelayMs at the latest. */
  private changed(): void {
    if (this.stopped) return;
    this.eventSeq++;
    const now = performance.now();
    if (!this.settleTimer) this.firstEventAt = now;
    clearTimeout(this.settleTimer);
    const settle = this.opts.settleMs ?? 300;
    const wait = Math.min(settle, Math.max(0, this.firstEventAt + (this.opts.maxDelayMs ?? 3000) - now));
    this.settleTimer = setTimeout(() => {
      this.settleTimer = undefined;
      void this.scanNow();
    }, wait);
    this.settleTimer.unref();
  }

  private async scanNow(): Promise<void> {
    if (this.scanning) {
      this.again = true;
      return;
    }
    this.scanning = true;
    try {
      // A scan of our own that begins after the events counted in seq: joining one a pull started earlier could
      // vouch for a tree read before those events.
      await this.scanner.idle();
      const t0 = performance.now();
      const seq = this.eventSeq;
      const prior = this.scanner.current?.rootHash;
      const g: Generation = await this.scanner.scan({ settleTimeoutMs: this.opts.settleTimeoutMs });
      this.lastScanMs = performance.now() - t0;
      this.lastScanAt = performance.now();
      this.cleanSeq = seq;
      this.watchDirs(g);
      // Announced when it differs from what this watcher last announced (a pull's own scan may have found the change
      // first, and followers still need to hear of it) or from the scanner's generation before this scan: a change
      // undone within the settle time leaves the tree as last announced, yet a pull may have taken the changed tree
      // meanwhile (a lock file made and removed), and its branch must hear that the site is back.
      if (g.rootHash !== this.announced || g.rootHash !== prior) {
        this.announced = g.rootHash;
        this.emit('generation', g);
      }
    } catch (err) {
      this.emit('error', err);
    } finally {
      this.scanning = false;
      if (this.again) {
        this.again = false;
        void this.scanNow();
      }
    }
  }
}
