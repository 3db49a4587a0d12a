/**
 * The puller's own state for one DIR, kept beside it in `<parent>/.<name>.snapferry/` (never inside DIR, so DIR holds
 * exactly the company's files):
 *
 *   lock             pid of the process working on DIR (a second pull waits or refuses)
 *   applied.json     the record of the generation DIR holds: company, generation, root hash, site
 *   applied.manifest that generation's manifest (its SHA-256 must equal the recorded root hash)
 *   applied.stats    inode and ctime of each file as committed (so unchanged files are trusted without reading)
 *   next/            the next generation being built; next.json names its root hash
 *   next.verified    what of next/ is verified, as of the last flush to disk (a power cut loses none of it)
 *   next.unsynced    the same, written as soon as the data is, under a header naming the page cache's life
 *                    (store/cachelife.ts): a resume after kill -9 in that life, once it has hashed those chunks
 *                    again, re-fetches nothing verified
 *   next.links       inode and ctime of DIR's files hard-linked into next/ (the link changes their ctime: without this
 *                    record a resumed pull would distrust, and fetch again, every file the interrupted one linked)
 *   next.manifest    the manifest being applied, as received (kept here, not in memory, until the commit)
 *   commit.json      present only while a commit swaps next/ into DIR; recovery rolls it forward
 *   old/             the previous tree during a commit
 *   spare/           the previous tree after it: the files the last commit replaced, rewritten in place by the next
 *                    delta instead of copying DIR's versions whole (store/spare.ts)
 *   spare.manifest   the generation spare/ holds, and spare.stats its inodes and ctimes as committed
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { decodeManifest, entryPath, Entry, Manifest, rootHashOf, sameStoredMtime } from '../manifest/manifest.js';
import { fail, ErrorCodes, SnapferryError, toSnapferryError } from '../util/errors.js';
import { inodeStamp } from '../util/stamp.js';
import { makeDirs, dirProblem } from '../util/mkdirs.js';
import { mountsAtOrUnder } from '../util/mounts.js';
import { exchangePaths } from '../util/exchange.js';

/** The record of an applied generation. */
export interface AppliedRecord {
  format: 1;
  company: string;
  generation: number;
  rootHash: string;
  site: string;
  committedAt: string;
  files: number;
  bytes: number;
  /** Chunks of the generation (records written before it was kept lack it): an unchanged re-pull reuses them all. */
  chunks?: number;
  /**
   * The identity (identityOf) of the folder the commit put at DIR: a folder made at DIR's path since (the copy moved
   * or deleted, and a folder of the user's made there) is not the copy. Records written before it was kept lack it.
   */
  folder?: string;
  /** HMAC-SHA256 of the fields above under a key derived from the site secret: tampering is detectable by holders of the secret. */
  mac?: string;
}

function recordKey(secret: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'snapferry/v1 applied record', 32));
}

function recordMac(r: AppliedRecord, secret: Buffer): string {
  const { mac: _mac, ...fields } = r;
  const canonical = JSON.stringify(fields, Object.keys(fields).sort());
  return createHmac('sha256', recordKey(secret)).update(canonical).digest('hex');
}

/** Seals a record with the site secret. */
export function signRecord(r: AppliedRecord, secret: Buffer): AppliedRecord {
  return { ...r, mac: recordMac(r, secret) };
}

/** Whether a record carries a valid MAC for this secret. */
export function recordAuthentic(r: AppliedRecord, secret: Buffer): boolean {
  if (typeof r.mac !== 'string' || !/^[0-9a-f]{64}$/.test(r.mac)) return false;
  return timingSafeEqual(Buffer.from(r.mac, 'hex'), Buffer.from(recordMac(r, secret), 'hex'));
}

/**
 * DIR given as a symbolic link to a folder (the data kept on another disk) means that folder: the commit's renames
 * then replace the folder and leave the link leading to the new generation, and the state lives beside the folder. A
 * link that leads nowhere stays as it is, for checkDirUsable to refuse by name, unless a commit cut short between its
 * two renames left it so: then it means the folder it names, where that commit's intent waits to be finished.
 */
function followDirLink(dir: string): string {
  try {
    if (!fs.lstatSync(dir).isSymbolicLink()) return dir;
    return fs.realpathSync(dir);
  } catch {
    /* no such path, or a link that leads nowhere */
  }
  // Followed link by link (as the kernel would, each target against the real folder of the link that names it), as
  // many as the kernel follows, to the first path that is no link.
  let at = dir;
  try {
    for (let hop = 0; hop < 40 && fs.lstatSync(at, { throwIfNoEntry: false })?.isSymbolicLink(); hop++) {
      const target = path.resolve(fs.realpathSync(path.dirname(at)), fs.readlinkSync(at));
      at = path.join(fs.realpathSync(path.dirname(target)), path.basename(target));
    }
    if (fs.existsSync(path.join(stateFolderOf(at), 'commit.json'))) return at;
  } catch {
    /* a folder on the way is gone too */
  }
  return dir;
}

/** The state folder of DIR: beside it, `.NAME.snapferry`. */
function stateFolderOf(dir: string): string {
  return path.join(path.dirname(dir), `.${path.basename(dir)}.snapferry`);
}

/** Where things live for one DIR. */
export class StatePaths {
  readonly dir: string;
  readonly state: string;
  readonly lock: string;
  /** Held by a follower (`pull --follow`) for its whole run, so that a second one is refused (they would alternate). */
  readonly followLock: string;
  readonly appliedJson: string;
  readonly appliedManifest: string;
  readonly appliedStats: string;
  readonly next: string;
  readonly nextJson: string;
  readonly nextJournal: string;
  readonly nextUnsynced: string;
  readonly nextLinks: string;
  readonly nextManifest: string;
  readonly commitJson: string;
  readonly old: string;
  readonly pendingJson: string;
  readonly pendingManifest: string;
  readonly spare: string;
  readonly spareManifest: string;
  readonly spareStats: string;
  /** Spare files being deleted in the background. */
  readonly spareDrop: string;
  /** A spare being prepared while a following branch waits (spare.ts, prepareSpare). */
  readonly sparePrep: string;
  /** Spares of files a pull left unchanged, kept past its commit for the next preparation (spare.ts, keepSpares). */
  readonly spareKeep: string;
  readonly spareKeepJson: string;
  /**
   * The next/ of an attempt at another generation (the company changed between attempts), with its manifest and
   * journals: its verified chunks are copied into the new next/ instead of fetched again. Gone with the next commit.
   */
  readonly prev: string;
  readonly prevManifest: string;
  readonly prevJournal: string;
  readonly prevUnsynced: string;
  /**
   * The journals of snapferry before their records were batches that check themselves (next.journal, prev.journal):
   * never read (their bare records are what a power cut can forge), removed where the journals are. Named apart so
   * that such a version, run again on this folder, finds none of ours: it read each batch's count as a verified
   * chunk and committed wrong bytes.
   */
  readonly legacyJournals: readonly string[];
  constructor(dir: string) {
    this.dir = followDirLink(path.resolve(dir));
    this.state = stateFolderOf(this.dir);
    const at = (name: string) => path.join(this.state, name);
    this.lock = at('lock');
    this.followLock = at('follow.lock');
    this.appliedJson = at('applied.json');
    this.appliedManifest = at('applied.manifest');
    this.appliedStats = at('applied.stats');
    this.next = at('next');
    this.nextJson = at('next.json');
    this.nextJournal = at('next.verified');
    this.nextUnsynced = at('next.unsynced');
    this.nextLinks = at('next.links');
    this.nextManifest = at('next.manifest');
    this.commitJson = at('commit.json');
    this.old = at('old');
    this.pendingJson = at('pending.json');
    this.pendingManifest = at('pending.manifest');
    this.spare = at('spare');
    this.spareManifest = at('spare.manifest');
    this.spareStats = at('spare.stats');
    this.sparePrep = at('spare.prep');
    this.spareKeep = at('spare.keep');
    this.spareKeepJson = at('spare.keep.json');
    this.spareDrop = at('spare.drop');
    this.prev = at('prev');
    this.prevManifest = at('prev.manifest');
    this.prevJournal = at('prev.verified');
    this.legacyJournals = [at('next.journal'), at('prev.journal')];
    this.prevUnsynced = at('prev.unsynced');
  }
}

/**
 * Whether a file's stats (lstat, bigint) are those recorded when it was committed: a regular file of that size and
 * mtime with that inode and ctime (inodeStamp; `null` when none was recorded, then size and mtime decide). What every
 * check trusts instead of reading the file: the pull's plan, the unchanged re-pull, the spare and its preparation.
 */
export function asCommitted(st: fs.BigIntStats, size: number, mtimeNs: bigint, stamp: string | null): boolean {
  return st.isFile() && Number(st.size) === size && sameStoredMtime(st.mtimeNs, mtimeNs) && (stamp === null || inodeStamp(st) === stamp);
}

/** Free and total bytes of the filesystem holding `dir`, or undefined where statfs cannot tell. */
export function diskSpace(dir: string): { free: number; total: number } | undefined {
  try {
    const st = fs.statfsSync(dir);
    return { free: st.bavail * st.bsize, total: st.blocks * st.bsize };
  } catch {
    return undefined;
  }
}

/**
 * Free space snapferry's own caches (the site's chunk store, a branch's prepared spare) never take: a tenth of the
 * filesystem, at most 1 GiB. The disk also holds the company, which its application must be able to grow.
 */
export function diskReserve(totalBytes: number): number {
  return Math.min(Math.floor(totalBytes / 10), 2 ** 30);
}

/** Whether anything is at p (a dangling symlink counts: lstat, not stat). */
export function exists(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Writes a file durably: temp file, fsync, rename, fsync of the folder. `data` may be a function that writes the
 * contents piece by piece through the function it is given (a large file without its whole image in memory).
 */
export function writeFileDurable(file: string, data: string | Uint8Array | ((write: (bytes: Uint8Array) => void) => void), sync = true): void {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    try {
      writeContents(fd, data);
      if (sync) fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (err) {
    // A write cut short (a full disk) leaves no half-written temporary file behind.
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  if (sync) fsyncDir(path.dirname(file));
}

/**
 * writeFileDurable with its flushes on libuv's pool, not the calling thread: the contents are written at once, before
 * this returns (so `data` is read now), then flushed, renamed and the folder flushed while the event loop serves on (a
 * site's main thread stood still for 165 ms in one fsync, every branch's transfer with it). Callers serialize writes of
 * one file.
 */
export async function writeFileDurableAsync(file: string, data: string | Uint8Array | ((write: (bytes: Uint8Array) => void) => void)): Promise<void> {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    try {
      writeContents(fd, data);
      await new Promise<void>((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
    } finally {
      fs.closeSync(fd);
    }
    await fs.promises.rename(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  let dir: fs.promises.FileHandle | undefined;
  try {
    dir = await fs.promises.open(path.dirname(file), 'r');
    await dir.sync();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EIO') throw toSnapferryError(err, 'flushing a folder to disk');
  } finally {
    await dir?.close();
  }
}

/** Writes a durable write's contents at fd: bytes, a string, or a function that writes them piece by piece. */
function writeContents(fd: number, data: string | Uint8Array | ((write: (bytes: Uint8Array) => void) => void)): void {
  if (typeof data === 'function') data((bytes) => writeAll(fd, bytes));
  else fs.writeFileSync(fd, data);
}

/** Writes all of bytes at fd's position. */
function writeAll(fd: number, bytes: Uint8Array): void {
  for (let at = 0; at < bytes.length; ) at += fs.writeSync(fd, bytes, at, bytes.length - at);
}

/** fsync of a directory (makes renames and creations in it durable). */
export function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch (err) {
    // Some filesystems refuse fsync on directories (EINVAL): nothing more to do there. A failed write-back is another
    // matter: the renames and creations it should make durable may be lost.
    if ((err as NodeJS.ErrnoException).code === 'EIO') throw toSnapferryError(err, 'flushing a folder to disk');
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Flushes the whole filesystem holding `p` (syncfs via coreutils `sync -f`): one call instead of an fsync per file.
 * Throws IO when the flush fails (a write-back error: the data a journal record or a commit would vouch for is not on
 * disk) or cannot be made; a `sync` too old for -f flushes every filesystem instead.
 */
export function syncFilesystem(p: string): void {
  const r = spawnSync(SYNC, ['-f', p], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status === 0) return;
  if (!r.error && tooOldForF(r.stderr) && spawnSync(SYNC, [], { stdio: 'ignore' }).status === 0) return;
  throw flushFailed(r.error, r.stderr);
}

/**
 * coreutils' sync by its own path where it is at one: another program named sync earlier on PATH (a script, a tool's
 * helper) that took -f and did nothing would defeat every flush without a word. SNAPFERRY_FAULT_SYNC names another
 * program instead, for the fault suite alone (one that fails as a disk's write-back error makes sync fail).
 */
const SYNC = process.env.SNAPFERRY_FAULT_SYNC || (['/usr/bin/sync', '/bin/sync'].find((p) => fs.existsSync(p)) ?? 'sync');

/** syncFilesystem without blocking the event loop: the transfer goes on while the disk catches up. */
export function syncFilesystemAsync(p: string): Promise<void> {
  const run = (args: string[]) =>
    new Promise<{ status: number | null; error?: Error; stderr: string }>((resolve) => {
      const child = spawn(SYNC, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      // The error handler first, and no stderr when the pipe could not be made (EMFILE): either threw before.
      child.on('error', (error) => resolve({ status: null, error, stderr }));
      child.stderr?.on('data', (d: Buffer) => (stderr += d.toString('utf8').slice(0, 4096)));
      child.on('close', (status) => resolve({ status, stderr }));
    });
  return run(['-f', p]).then(async (r) => {
    if (r.status === 0) return;
    if (!r.error && tooOldForF(r.stderr) && (await run([])).status === 0) return;
    throw flushFailed(r.error, r.stderr);
  });
}

/** Whether `sync` refused -f as an option it does not know (coreutils before 8.24). */
function tooOldForF(stderr: string): boolean {
  return /invalid option|unrecognized option|unknown option|usage/i.test(stderr);
}

function flushFailed(error: Error | undefined, stderr: string): SnapferryError {
  const why = error ? `cannot run sync: ${error.message}` : stderr.trim().split('\n')[0] || 'sync failed';
  return new SnapferryError(ErrorCodes.IO, `flushing to disk failed (${why}); nothing was committed`);
}

/** Removes a tree, including read-only folders in it. */
export function removeTree(p: string): void {
  if (!exists(p)) return;
  try {
    fs.rmSync(p, { recursive: true, force: true });
  } catch {
    const fix = (d: string) => {
      try {
        fs.chmodSync(d, 0o700);
        for (const n of fs.readdirSync(d, { withFileTypes: true })) if (n.isDirectory()) fix(path.join(d, n.name));
      } catch {
        /* best effort */
      }
    };
    fix(p);
    fs.rmSync(p, { recursive: true, force: true });
  }
}

/**
 * Refuses a state folder snapferry cannot have made, before anything in it is read or removed: snapferry makes it a
 * folder of its own user's, mode 0700. A link (to a folder elsewhere, whose next/ and spare/ would be deleted), one
 * owned by another user (in a shared folder, someone else's made for this DIR) or one open to other users (a folder of
 * the user's that happens to bear the name) is someone else's.
 */
function checkStateFolder(state: string): void {
  const st = fs.lstatSync(state);
  const uid = process.geteuid?.();
  let why: string | undefined;
  if (st.isSymbolicLink()) why = 'is a symbolic link';
  else if (!st.isDirectory()) why = 'is not a folder';
  else if (uid !== undefined && st.uid !== uid) why = `belongs to another user (uid ${st.uid})`;
  else if ((st.mode & 0o077) !== 0) why = `is open to other users (mode ${(st.mode & 0o777).toString(8)})`;
  if (why === undefined) return checkRecordFiles(state);
  fail(ErrorCodes.DIR_FOREIGN, `${state} ${why}: not a state folder snapferry made, where it keeps the copy's records; refusing to use it (move it away)`);
}

/**
 * Refuses record files that are no plain files (a FIFO, a device, a link), before anything reads them: a read of a
 * FIFO waits for ever, and a link leads the read outside. Folders at their names are removed by the recovery.
 */
function checkRecordFiles(state: string): void {
  for (const d of fs.readdirSync(state, { withFileTypes: true })) {
    if (d.isFile() || d.isDirectory() || !RECORD_FILE.test(d.name)) continue;
    fail(ErrorCodes.STATE, `${path.join(state, d.name)} is not a plain file (a FIFO, a device or a link made there): snapferry's records are plain files; remove it and run the command again`);
  }
}

/** The names of the state folder's record files (StatePaths), the lock's included. */
const RECORD_FILE = /^((follow\.)?lock|(applied|next|pending|spare|prev)\.(json|manifest|stats|verified|journal|unsynced|links)|commit\.json|spare\.keep\.json)$/;

/**
 * Takes lock file `lock` for this process: undefined once taken, else who holds it (a live process's pid, or
 * 'starting' for one made but not yet written). A dead holder's lock is taken over.
 */
export function tryLockFile(lock: string): number | 'starting' | undefined {
  for (;;) {
    let fd: number | undefined;
    try {
      fd = fs.openSync(lock, 'wx', 0o600);
      // The pid and when this process started: a pid alone may name another program after a reboot or a wrap.
      fs.writeSync(fd, `${process.pid} ${startTimeOf(process.pid)}\n`);
      fs.closeSync(fd);
      return undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        // Made but not written (a full disk): left, it would read as a holder starting up to the next taker.
        if (fd !== undefined) {
          fs.closeSync(fd);
          fs.rmSync(lock, { force: true });
        }
        throw toSnapferryError(err, 'cannot lock');
      }
    }
    const holder = lockHolder(lock);
    if (holder !== 'stale') return holder;
    // Stale lock of a killed process: moved aside, then looked at again. Another taker may have replaced it with its
    // own live lock between our read and our rename: that one is put back (link: never over a newer one).
    const stale = `${lock}.stale.${process.pid}`;
    try {
      fs.renameSync(lock, stale);
      if (lockHolder(stale) !== 'stale') {
        try {
          fs.linkSync(stale, lock);
        } catch {
          /* a newer lock is in place already */
        }
      }
      // Recursive: a lock that is a folder (made by hand, or by another tool) is set aside the same way.
      fs.rmSync(stale, { recursive: true, force: true });
    } catch {
      /* someone else moved it first; retry */
    }
  }
}

/**
 * Takes the follower's lock of DIR (`follow.lock` in its state folder) for the life of a `pull --follow`: a second
 * follower of the same DIR is refused with DIR_LOCKED (two followers, of two sites, would replace each other's
 * generation without end). Returns its release, or undefined while DIR holds no generation yet (ask again after the
 * first pull). Other commands (a pull, verify, repair) do not look at it: they take DIR's own lock.
 */
export function takeFollowLock(paths: StatePaths): (() => void) | undefined {
  // Only in the state folder of a copy: one another command's first pull has just made (and removes if it fails
  // before writing anything) is not the follower's to hold open.
  if (!fs.existsSync(paths.appliedJson)) return undefined;
  checkStateFolder(paths.state);
  const holder = tryLockFile(paths.followLock);
  if (holder !== undefined) fail(ErrorCodes.DIR_LOCKED, `${paths.dir} is followed already by ${holderName(holder)}; one follower per folder`);
  // Only while it is still this follower's (a state folder removed and made again meanwhile may hold another's).
  return () => {
    if (lockOwnedHere(paths.followLock)) fs.rmSync(paths.followLock, { force: true });
  };
}

/** An exclusive lock on one DIR: a second process gets DIR_LOCKED (or waits, if asked). A dead holder's lock is taken over. */
export class DirLock {
  private held = false;
  /** This lock made the state folder: if it is empty at release (the attempt wrote nothing), it goes too. */
  private madeState = false;
  constructor(private readonly paths: StatePaths) {}

  /** Takes the lock, waiting up to waitMs for a live holder to finish. */
  async acquire(waitMs = 0): Promise<void> {
    // On the monotonic clock: a wall clock stepped back an hour would have made a wait of seconds an hour long.
    const deadline = performance.now() + waitMs;
    for (;;) {
      // Each try: a holder that made the folder removes it at release when it is empty.
      try {
        this.madeState = makeDirs(this.paths.state, 0o700) !== undefined;
        // 0700 whatever the umask (under 0277 the folder came without its owner's write, and every pull failed to lock).
        if (this.madeState) fs.chmodSync(this.paths.state, 0o700);
        if (!this.madeState) checkStateFolder(this.paths.state);
      } catch (err) {
        if (err instanceof SnapferryError) throw err;
        // Something not a folder at its name (a file, a link to one or to nothing): refused by name.
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') checkStateFolder(this.paths.state);
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') fail(ErrorCodes.DIR_NOT_WRITABLE, `cannot make ${this.paths.state}: ${dirProblem(err)}`);
        throw toSnapferryError(err, `cannot make ${this.paths.state}`);
      }
      let holder: number | 'starting' | undefined;
      try {
        holder = tryLockFile(this.paths.lock);
      } catch (err) {
        // Nothing of this attempt stays beside DIR (tryLockFile removed its lock; the state folder, if it made it).
        if (this.madeState) fs.rmSync(this.paths.state, { recursive: true, force: true });
        throw err;
      }
      if (holder === undefined) {
        this.held = true;
        return;
      }
      if (performance.now() >= deadline) fail(ErrorCodes.DIR_LOCKED, `${this.paths.dir} is in use by ${holderName(holder)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  release(): void {
    if (!this.held) return;
    this.held = false;
    try {
      // Only while it is still this process's: a lock file removed meanwhile (with its state folder, by hand) lets
      // another command take DIR, whose lock this release must leave.
      if (lockOwnedHere(this.paths.lock)) fs.rmSync(this.paths.lock, { force: true });
      // A pull that failed before writing anything (site unreachable, wrong secret...) leaves nothing beside DIR.
      if (this.madeState) fs.rmdirSync(this.paths.state);
    } catch {
      /* not empty (kept for a resume), or gone: nothing to do */
    }
  }
}

/**
 * Who holds a lock, in words, from tryLockFile's answer: "snapferry process 123" (or "snapferry serve process 123" for
 * `program` "serve"), or another one starting up.
 */
export function holderName(holder: number | 'starting', program?: string): string {
  if (holder === 'starting') return `another snapferry ${program ?? 'process'} (starting up)`;
  return `snapferry ${program ? `${program} ` : ''}process ${holder}`;
}

/** Whether the lock file at `p` names this process (taken by tryLockFile here, and not since replaced). */
export function lockOwnedHere(p: string): boolean {
  try {
    return Number.parseInt(fs.readFileSync(p, 'utf8'), 10) === process.pid;
  } catch {
    return false;
  }
}

/**
 * Who holds the lock file at `p`: a live process's pid; 'starting' for a file still without a pid (made by a taker
 * that has not written it yet: it is created empty, then written), unless its stamp is more than a few seconds from now
 * (its maker was killed in between); else 'stale' (a dead process's, or gone).
 */
function lockHolder(p: string): number | 'starting' | 'stale' {
  let text: string;
  let ageMs: number;
  try {
    text = fs.readFileSync(p, 'utf8').trim();
    ageMs = Date.now() - fs.statSync(p).mtimeMs;
  } catch {
    return 'stale';
  }
  const [pidWord, started] = text.split(/\s+/);
  const pid = Number.parseInt(pidWord ?? '', 10);
  if (Number.isFinite(pid) && pid > 0) {
    if (!isAlive(pid)) return 'stale';
    // A live process that started at another time is not the one that took the lock (its pid was reused, as after
    // the power cut that left the lock). Where the start time is unknown (no /proc, a lock of an older snapferry), the
    // pid's life decides alone.
    const now = started ? startTimeOf(pid) : '';
    return now !== '' && now !== started ? 'stale' : pid;
  }
  // Either way: a stamp far ahead of this clock (the clock stepped back since) must not keep it 'starting' for good.
  return text === '' && Math.abs(ageMs) < 5000 ? 'starting' : 'stale';
}

/**
 * When process `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat), or '' where that cannot be read.
 * The name in field 2 may hold spaces and parentheses: fields are counted from after its last ')'.
 */
export function startTimeOf(pid: number): string {
  try {
    return procStatFields(pid)[19] ?? '';
  } catch {
    return '';
  }
}

/**
 * The fields of /proc/PID/stat after the process's name (field 3, its state, first): the name in field 2 may hold
 * spaces and parentheses, so they are counted from after its last ')'. Throws where the file cannot be read.
 */
function procStatFields(pid: number): string[] {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/**
 * Whether a process with this pid runs (one of another user's counts as running). A zombie does not: a pull killed
 * with kill -9 and not yet reaped by its parent (a script that has not waited for it) held DIR for that long.
 */
export function isAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    return procStatFields(pid)[0] !== 'Z';
  } catch (err) {
    // Gone since (ENOENT), or no /proc to tell: then it counts as running, as kill said.
    return (err as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}

/** What DIR holds according to the state, checked: the manifest must hash to the recorded root. */
export interface Applied {
  record: AppliedRecord;
  manifest: Manifest;
  /** Per manifest entry: "ino:ctimeNs" as committed, or "" if unknown. */
  stats: string[];
}

/** Reads the applied generation; undefined if DIR holds none. Throws STATE if the record was tampered with. */
export function readApplied(paths: StatePaths): Applied | undefined {
  if (!exists(paths.appliedJson)) return undefined;
  let record: AppliedRecord;
  let encoded: Buffer;
  try {
    record = JSON.parse(fs.readFileSync(paths.appliedJson, 'utf8')) as AppliedRecord;
    encoded = fs.readFileSync(paths.appliedManifest);
  } catch (err) {
    return fail(ErrorCodes.STATE, `the record of what ${paths.dir} holds is unreadable (${(err as Error).message})`);
  }
  // Valid JSON that is no object (null, a number) is as malformed as garbage: repair re-establishes either.
  if (typeof record !== 'object' || record === null || record.format !== 1 || typeof record.rootHash !== 'string') {
    fail(ErrorCodes.STATE, `the record of what ${paths.dir} holds is malformed`);
  }
  if (rootHashOf(encoded) !== record.rootHash) {
    fail(ErrorCodes.STATE, `the record of what ${paths.dir} holds does not match its manifest (tampered or damaged)`);
  }
  const manifest = decodeManifest(encoded);
  let stats: string[] = [];
  try {
    const s = JSON.parse(fs.readFileSync(paths.appliedStats, 'utf8')) as { rootHash: string; stats: string[] };
    if (s.rootHash === record.rootHash && s.stats.length === manifest.entries.length) stats = s.stats;
  } catch {
    /* no stats: files are then trusted by size and mtime only */
  }
  if (stats.length === 0) stats = manifest.entries.map(() => '');
  return { record, manifest, stats };
}

/**
 * Records inode and ctime of every entry of DIR as it is now (right after a commit). `known` holds those already
 * taken when the files were finished in next/ (a rename of the folder above changes neither). Each entry's path,
 * kind, size and mtime go with them, so that `unchangedByStats` can tell an intact DIR without decoding the manifest.
 */
export function writeStats(paths: StatePaths, rootHash: string, m: Manifest, known?: Map<number, string>, sync = true): void {
  const stampOf = (i: number): string => {
    const k = known?.get(i);
    if (k) return k;
    try {
      const st = fs.lstatSync(entryPath(paths.dir, m.entries[i]!.path), { bigint: true });
      return inodeStamp(st);
    } catch {
      return '';
    }
  };
  writeFileDurable(paths.appliedStats, (write) => writeStatsRecord(write, rootHash, m.entries, stampOf), sync);
}

/**
 * Writes the StatsRecord of `entries` as `JSON.stringify` would write it, in pieces of ~64 KiB: a commit of 100,000
 * files held the record's four arrays of 100,000 items, its JSON (~12 MB) and that JSON's bytes at once (+33 MiB at the
 * branch's peak, which was the commit).
 */
export function writeStatsRecord(write: (bytes: Uint8Array) => void, rootHash: string, entries: readonly Entry[], stampOf: (i: number) => string): void {
  let piece = '';
  const put = (s: string) => {
    piece += s;
    if (piece.length >= 1 << 16) {
      write(Buffer.from(piece));
      piece = '';
    }
  };
  const array = (name: keyof StatsRecord, item: (e: Entry, i: number) => string) => {
    put(`,"${name}":[`);
    entries.forEach((e, i) => put(i === 0 ? item(e, i) : `,${item(e, i)}`));
    put(']');
  };
  put(`{"rootHash":${JSON.stringify(rootHash)}`);
  array('stats', (_, i) => JSON.stringify(stampOf(i)));
  array('paths', (e) => JSON.stringify(e.path));
  put(',"kinds":"');
  for (const e of entries) put(e.kind[0]!);
  put('"');
  // As JSON.stringify writes an array item that is undefined (or not finite): null.
  array('sizes', (e) => JSON.stringify(e.size) ?? 'null');
  array('mtimes', (e) => JSON.stringify(String(e.mtimeNs)));
  put('}');
  if (piece.length > 0) write(Buffer.from(piece));
}

/** applied.stats: per manifest entry, "ino:ctimeNs" as committed, and the entry's path, kind (f, d, s), size and mtime. */
interface StatsRecord {
  rootHash: string;
  stats: string[];
  paths?: string[];
  kinds?: string;
  sizes?: number[];
  mtimes?: string[];
}

/**
 * The record of DIR's generation if DIR still holds it by every entry's metadata as committed (kind; for files size,
 * mtime, inode and ctime), read from the record and the stats alone: the unchanged pull's check, without decoding
 * the manifest. Undefined when anything differs or cannot be told this way (the full check then decides).
 */
export function unchangedByStats(paths: StatePaths): AppliedRecord | undefined {
  try {
    const record = JSON.parse(fs.readFileSync(paths.appliedJson, 'utf8')) as AppliedRecord;
    // The counts an unchanged pull reports come from here: only as the commit wrote them.
    const count = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
    if (!count(record.files) || !count(record.bytes) || (record.chunks !== undefined && !count(record.chunks))) return undefined;
    const s = JSON.parse(fs.readFileSync(paths.appliedStats, 'utf8')) as StatsRecord;
    const n = s.stats?.length ?? 0;
    if (s.rootHash !== record.rootHash || !s.paths || !s.sizes || !s.mtimes || typeof s.kinds !== 'string') return undefined;
    if (s.paths.length !== n || s.kinds.length !== n || s.sizes.length !== n || s.mtimes.length !== n) return undefined;
    for (let i = 0; i < n; i++) {
      const st = fs.lstatSync(entryPath(paths.dir, s.paths[i]!), { bigint: true });
      const kind = s.kinds[i];
      if (kind === 'd' ? !st.isDirectory() : kind === 's' ? !st.isSymbolicLink() : !st.isFile()) return undefined;
      // A folder or link as committed too: a link made anew (to another target) is another inode, and a folder whose
      // entries, mode or times were changed since has another ctime (an extra file in it, say).
      if (kind !== 'f') {
        if (inodeStamp(st) !== s.stats[i]) return undefined;
        continue;
      }
      if (!asCommitted(st, s.sizes[i]!, BigInt(s.mtimes[i]!), s.stats[i]!)) return undefined;
    }
    return record;
  } catch {
    return undefined;
  }
}

/**
 * Whether applied.manifest still hashes to `rootHash` (the record's): what an unchanged pull, which never decodes it,
 * checks before it trusts the record (a damaged one is for readApplied to report, as a pull with a delta does).
 */
export function appliedManifestMatches(paths: StatePaths, rootHash: string): boolean {
  try {
    return rootHashOf(fs.readFileSync(paths.appliedManifest)) === rootHash;
  } catch {
    return false;
  }
}

/**
 * Commits next/ as DIR's new generation. Order: the new record is written aside (pending.*), commit.json makes the
 * intent durable, then DIR is swapped with next/ in one step (exchangePaths; two renames where that cannot be had),
 * then the record replaces the old one, the replaced tree becomes the spare generation (with `keepSpare`;
 * store/spare.ts) or is deleted, the inode/ctime record of DIR is written (`recordStats`), and last commit.json goes.
 * A crash at any point before commit.json leaves the old generation; after it, `recover` rolls forward to the new one.
 */
export function commit(
  paths: StatePaths,
  record: AppliedRecord,
  encodedManifest: Uint8Array,
  durable: boolean,
  onPoint: ((p: string) => void) | undefined,
  keepSpare: boolean,
  recordStats: () => void,
): void {
  checkSwappable(paths);
  if (durable) syncFilesystem(paths.next);
  // Not durable (pull --no-fsync): the records are written and renamed as always, which is what a kill -9 needs, but
  // not flushed. After the data were not, a flush here only waited for them: on ext4 (data=ordered) the first fsync
  // after a delta's 945 MB of base copies wrote them all out first (0.5-0.9 s of a 2.6 s first delta here).
  writeFileDurable(paths.pendingManifest, encodedManifest, durable);
  writeFileDurable(paths.pendingJson, JSON.stringify(record, null, 1), durable);
  onPoint?.('before-intent');
  // DIR's identity goes with the intent: a folder made at DIR's path between the swap's renames is then not taken for
  // the generation being replaced.
  const intent: CommitIntent = { rootHash: record.rootHash, at: new Date().toISOString(), dir: identityOf(paths.dir), next: identityOf(paths.next) };
  writeFileDurable(paths.commitJson, JSON.stringify(intent), durable);
  onPoint?.('intent');
  rollForward(paths, onPoint, keepSpare, durable);
  // The new generation's inode/ctime record before the intent goes: a crash until then is rolled forward again and
  // the record written by recover(); after it, DIR is only ever trusted by its sizes and mtimes if the record is lost.
  recordStats();
  clearIntent(paths, durable);
}

/** The commit is over: its intent goes. */
function clearIntent(paths: StatePaths, sync = true): void {
  fs.rmSync(paths.commitJson, { force: true });
  if (sync) fsyncDir(paths.state);
}

/** Finishes an interrupted commit, if any. Safe to call at any time with the lock held. */
export function recover(paths: StatePaths): boolean {
  if (!exists(paths.commitJson)) {
    // No declared commit: leftovers of one that was never declared, or of one whose cleanup was cut short.
    discardTree(paths, paths.old);
    discardTree(paths, paths.spareDrop);
    discardTree(paths, paths.sparePrep);
    for (const n of exists(paths.state) ? fs.readdirSync(paths.state) : []) {
      if (!n.startsWith(TRASH)) continue;
      try {
        removeTree(path.join(paths.state, n));
      } catch {
        /* still not ours to remove: left, out of every commit's way */
      }
    }
    fs.rmSync(paths.pendingJson, { force: true });
    fs.rmSync(paths.pendingManifest, { force: true });
    return false;
  }
  rollForward(paths);
  // The inode/ctime record is written at the end of a commit; a commit finished here needs it too. A record that
  // cannot be read (lost with a power cut under --no-fsync, damaged) does not keep the intent: DIR is the new
  // generation whatever its record says, and the command that called this reports the record (repair re-establishes
  // it); kept, the intent made every later command, repair included, fail here for good.
  let applied: Applied | undefined;
  try {
    applied = readApplied(paths);
  } catch (err) {
    if (!(err instanceof SnapferryError && err.code === ErrorCodes.STATE)) throw err;
  }
  if (applied) {
    try {
      writeStats(paths, applied.record.rootHash, applied.manifest);
    } catch {
      // Only a quicker check of DIR is lost (its files are then trusted by size and mtime: readApplied).
      removeRecord(paths.appliedStats);
    }
  }
  clearIntent(paths);
  return true;
}

/** What commit.json holds: the commit declared, and DIR's identity (its inode, null if absent) when it was. */
interface CommitIntent {
  rootHash: string;
  at: string;
  /** Absent in intents written before it was recorded: DIR is then taken for the generation being replaced. */
  dir?: string | null;
  /** next/'s identity: found at DIR, it says the swap was made in one step (exchangePaths) and next/ holds the old generation. */
  next?: string | null;
}

/**
 * A path's identity: its inode number and, where the filesystem keeps one, its birth time (`INO.BTIME_NS`), or null
 * where nothing is. The birth time because ext4 hands a deleted folder's inode number to the next folder made at once.
 * Not its device: a disk's device number may change across the reboot after a power cut (another loop or USB device),
 * and DIR, never a mount point, is on its parent's.
 */
export function identityOf(p: string): string | null {
  try {
    const st = fs.lstatSync(p, { bigint: true });
    return st.birthtimeNs > 0n ? `${st.ino}.${st.birthtimeNs}` : String(st.ino);
  } catch {
    return null;
  }
}

/** Whether identities `recorded` and `now` (identityOf) name one folder; one recorded as a bare inode number (before birth times were kept, or without them) by its inode. */
export function sameIdentity(recorded: string | null, now: string | null): boolean {
  if (recorded === null || now === null) return recorded === now;
  return recorded.includes('.') && now.includes('.') ? recorded === now : recorded.split('.')[0] === now.split('.')[0];
}

/** The declared commit's intent; null where it cannot be read or is no object (then it says nothing of identities). */
function readIntent(paths: StatePaths): CommitIntent | null {
  try {
    const intent = JSON.parse(fs.readFileSync(paths.commitJson, 'utf8')) as unknown;
    return typeof intent === 'object' && intent !== null ? (intent as CommitIntent) : null;
  } catch {
    return null;
  }
}

/** Whether what is at DIR now is the generation the declared commit replaces (not something made since). */
function isReplacedGeneration(paths: StatePaths): boolean {
  const intent = readIntent(paths);
  return intent?.dir === undefined || sameIdentity(intent.dir, identityOf(paths.dir));
}

/** Whether the declared commit's one-step swap was made: DIR is the tree that was next/ (next/ holds the old one). */
function isExchanged(paths: StatePaths): boolean {
  const intent = readIntent(paths);
  return typeof intent?.next === 'string' && sameIdentity(intent.next, identityOf(paths.dir));
}

/**
 * Whether next/ holds the generation the declared commit replaces (the one-step swap was made): next/ has the identity
 * DIR had when the intent was written; with no readable intent, the identity the last commit's record gives DIR's
 * folder. Then next/ must never be put at DIR: it is the old generation, not the new one.
 */
function nextIsReplaced(paths: StatePaths): boolean {
  const id = identityOf(paths.next);
  const intent = readIntent(paths);
  if (intent) return typeof intent.dir === 'string' && sameIdentity(intent.dir, id);
  try {
    const folder = (JSON.parse(fs.readFileSync(paths.appliedJson, 'utf8')) as AppliedRecord | null)?.folder;
    return typeof folder === 'string' && sameIdentity(folder, id);
  } catch {
    return false;
  }
}

function rollForward(paths: StatePaths, onPoint?: (p: string) => void, keepSpare = true, sync = true): void {
  const hasNext = exists(paths.next);
  const replacedInNext = hasNext && nextIsReplaced(paths);
  if (replacedInNext && exists(paths.dir) && (isExchanged(paths) || readIntent(paths) === null)) {
    // Cut short after the one-step swap: DIR is the new generation already; the old one waits in next/.
    discardTree(paths, paths.old);
    fs.renameSync(paths.next, paths.old);
    if (sync) fsyncDir(path.dirname(paths.dir));
  } else if (replacedInNext) {
    // The swap was made, and the new generation was moved away from DIR since (or replaced): the commit cannot be
    // finished. The generation it replaced (next/) goes back where DIR was, with its own record: never the new record.
    if (exists(paths.dir)) {
      fail(ErrorCodes.DIR_FOREIGN, `${paths.dir} is not the generation snapferry put there, and the generation it replaced waits in ${paths.next}; move ${paths.dir} away and run the command again (the previous generation is then put back)`);
    }
    fs.renameSync(paths.next, paths.dir);
    if (sync) fsyncDir(path.dirname(paths.dir));
    fs.rmSync(paths.pendingJson, { force: true });
    fs.rmSync(paths.pendingManifest, { force: true });
  } else if (hasNext) {
    if (exists(paths.dir) && !isReplacedGeneration(paths)) {
      // Made at DIR's path after the commit moved the old generation aside (or, for a seed, after it was declared):
      // not snapferry's to replace, unless it is an empty folder.
      const st = fs.lstatSync(paths.dir);
      if (!st.isDirectory() || fs.readdirSync(paths.dir).length > 0) {
        fail(ErrorCodes.DIR_FOREIGN, `${paths.dir} was made while snapferry was putting a new generation in its place; move it away and run the command again (the commit then completes)`);
      }
      fs.rmdirSync(paths.dir);
    }
    if (exists(paths.dir)) {
      // A recovery's swap too: a mount made inside DIR since the intent would go with the old generation.
      checkNoMounts(paths);
      discardTree(paths, paths.old);
    }
    if (exists(paths.dir) && exchangePaths(paths.next, paths.dir)) {
      // DIR was never absent. A crash from here on finds DIR with next/'s identity (isExchanged).
      onPoint?.('exchanged');
      fs.renameSync(paths.next, paths.old);
    } else {
      // Two renames where one step cannot be had: DIR is absent between them, and a crash there is rolled forward.
      if (exists(paths.dir)) {
        try {
          fs.renameSync(paths.dir, paths.old);
        } catch (err) {
          // Nothing has moved: DIR is still the old generation. The intent goes with the failure, or every later
          // command would fail on it again (the next pull resumes from next/ and commits anew).
          clearIntent(paths, sync);
          throw err;
        }
        onPoint?.('swap');
      }
      fs.renameSync(paths.next, paths.dir);
    }
    onPoint?.('swapped');
    if (sync) fsyncDir(path.dirname(paths.dir));
  }
  if (exists(paths.pendingManifest)) {
    // The record of the generation just replaced goes with its tree (old/, soon spare/). Renames, so that a recovery
    // that repeats this step finds either the old record to move or none (never a half-moved one).
    discardTree(paths, paths.spare);
    for (const [from, to] of [
      [paths.appliedManifest, paths.spareManifest],
      [paths.appliedStats, paths.spareStats],
    ] as const) {
      // A record already moved by the run a crash cut short is left where it is (from is gone then, to is the one).
      if (keepSpare && exists(from)) moveRecord(from, to);
      else if (!keepSpare) removeRecord(to);
    }
    moveRecord(paths.pendingManifest, paths.appliedManifest);
  }
  if (exists(paths.pendingJson)) moveRecord(paths.pendingJson, paths.appliedJson);
  if (sync) fsyncDir(paths.state);
  removeRecord(paths.nextJson);
  removeRecord(paths.nextJournal);
  // What a kill or a full disk left of writeFileDurable's rewrites of these two.
  removeRecord(`${paths.nextJson}.tmp`);
  removeRecord(`${paths.nextJournal}.tmp`);
  removeRecord(paths.nextUnsynced);
  removeRecord(paths.nextLinks);
  removeRecord(paths.nextManifest);
  // What an attempt at another generation left (its chunks were copied from, or are of no more use).
  dropPrev(paths);
  // The replaced tree is kept as the spare (its files' stats decide later whether any can be used), or deleted. DIR
  // is the new generation by now: a tree that cannot be cleaned (a folder another user owns, in an adopted folder)
  // is set aside, never a reason to fail the commit (which every later command would then fail to finish again).
  if (keepSpare && exists(paths.old) && !exists(paths.spare)) {
    try {
      removeSharedLinks(paths.old);
      // An empty tree (the empty folder a seed replaced) is no spare.
      if (fs.readdirSync(paths.old).length > 0) fs.renameSync(paths.old, paths.spare);
    } catch {
      /* set aside below */
    }
  }
  if (exists(paths.old)) discardTree(paths, paths.old);
  onPoint?.('spare-kept');
}

/** Removes what an attempt at another generation left (prev/ and its records: StatePaths.prev). */
export function dropPrev(paths: StatePaths): void {
  discardTree(paths, paths.prev);
  for (const f of [paths.prevManifest, paths.prevJournal, paths.prevUnsynced, ...paths.legacyJournals]) removeRecord(f);
}

/**
 * Removes one of the state folder's record files, whatever stands at its name (a folder put there by hand included):
 * a recovery or a pull's plan that failed on it would fail again at every later command.
 */
export function removeRecord(p: string): void {
  fs.rmSync(p, { recursive: true, force: true });
}

/** Renames record file `from` to `to`, over whatever stands at `to` (a folder included: see removeRecord). */
function moveRecord(from: string, to: string): void {
  try {
    fs.renameSync(from, to);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    removeRecord(to);
    fs.renameSync(from, to);
  }
}

/** Names of trees set aside in the state folder (discardTree); each later recovery tries to remove them again. */
const TRASH = 'trash.';

/**
 * Removes a tree of snapferry's own in the state folder, or, when it cannot (a folder in it owned by another user, for
 * a puller that is not root), renames it out of the way (`trash.*`, removed later if it ever can be).
 */
function discardTree(paths: StatePaths, p: string): void {
  try {
    removeTree(p);
  } catch {
    if (exists(p)) fs.renameSync(p, path.join(paths.state, `${TRASH}${Date.now()}.${process.pid}.${path.basename(p)}`));
  }
}

/**
 * Leaves in `dir` only the regular files no other path links to: the links the old tree shares with DIR (its
 * unchanged files) and symlinks go now, before the stats of DIR are recorded, since removing a link changes the ctime
 * of the file it shares (deleting them later would make DIR's files look changed). Its folders become the owner's to
 * write: the tree is snapferry's own from here on, and a read-only folder of the company (mode 555) would otherwise
 * stop this, and every later delta that takes a spare out of it, for anyone but root.
 */
function removeSharedLinks(dir: string): void {
  const mode = fs.lstatSync(dir).mode & 0o7777;
  if ((mode & 0o700) !== 0o700) fs.chmodSync(dir, mode | 0o700);
  for (const d of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, d.name);
    if (d.isDirectory()) removeSharedLinks(p);
    else if (!d.isFile() || fs.lstatSync(p).nlink > 1) fs.rmSync(p, { force: true });
  }
}

/** Checks that the folder holding DIR and its state folder can be written. */
export function checkParentWritable(paths: StatePaths): void {
  const parent = path.dirname(paths.dir);
  try {
    fs.accessSync(parent, fs.constants.W_OK | fs.constants.X_OK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') fail(ErrorCodes.DIR_NOT_WRITABLE, `folder ${parent} does not exist (create it first)`);
    fail(ErrorCodes.DIR_NOT_WRITABLE, `cannot write into ${parent} (where ${path.basename(paths.dir)} and its state live)`);
  }
}

/**
 * Checks that DIR may be written: it is snapferry's (has a record), absent, or an empty folder; with `adopt`, any
 * folder (the user asked for it to be replaced by the generation, reusing what matches).
 */
export function checkDirUsable(paths: StatePaths, adopt = false): void {
  checkParentWritable(paths);
  if (!exists(paths.dir)) return;
  const st = fs.lstatSync(paths.dir);
  if (st.isSymbolicLink()) {
    fail(ErrorCodes.DIR_FOREIGN, `${paths.dir} is a symbolic link to ${JSON.stringify(fs.readlinkSync(paths.dir))}, which leads to no folder; make the folder it names, or give a folder`);
  }
  if (!st.isDirectory()) fail(ErrorCodes.DIR_FOREIGN, `${paths.dir} exists and is not a folder; refusing to replace it`);
  checkSwappable(paths);
  if (adopt) return;
  if (exists(paths.appliedJson)) return checkCommittedFolder(paths);
  if (fs.readdirSync(paths.dir).length > 0) {
    // The rest of the record is there: snapferry made DIR, and its record of what DIR holds is what was lost.
    if (exists(paths.appliedManifest) || exists(paths.appliedStats)) {
      fail(ErrorCodes.DIR_FOREIGN, `the record of what ${paths.dir} holds is missing (${paths.appliedJson}); run repair, which re-establishes it and fetches only what differs`);
    }
    fail(ErrorCodes.DIR_FOREIGN, `${paths.dir} already exists and was not made by snapferry; refusing to overwrite it (choose a new or empty folder, or pull --adopt to replace it, reusing what matches)`);
  }
}

/**
 * Whether something other than the folder the last commit put at DIR stands there now (the record names that folder;
 * one without the name, or unreadable, says nothing).
 */
export function folderReplaced(paths: StatePaths): boolean {
  let folder: unknown;
  try {
    folder = (JSON.parse(fs.readFileSync(paths.appliedJson, 'utf8')) as AppliedRecord | null)?.folder;
  } catch {
    return false;
  }
  return typeof folder === 'string' && exists(paths.dir) && !sameIdentity(folder, identityOf(paths.dir));
}

/**
 * Refuses a DIR with files that is not the folder the last commit put there (its identity recorded with the
 * generation): the copy was moved or deleted and another folder made at its path, which holds the user's files, not
 * the generation the record describes. An empty one is taken (nothing in it to lose). A record that cannot be read
 * is left to readApplied to report.
 */
export function checkCommittedFolder(paths: StatePaths): void {
  if (!folderReplaced(paths)) return;
  if (!fs.lstatSync(paths.dir).isDirectory() || fs.readdirSync(paths.dir).length === 0) return;
  fail(
    ErrorCodes.DIR_FOREIGN,
    `${paths.dir} is not the folder snapferry put there (the copy was moved or deleted and this folder made since); refusing to overwrite it (move it away to pull anew, or pull --adopt to replace it, reusing what matches)`,
  );
}

/**
 * Checks that DIR, where it exists, can be swapped by a commit: it is no mount point and holds none (the commit moves
 * DIR aside, which a mount point refuses, and deletes what the old generation held, which for a mount inside it would
 * be another filesystem's files), and it may be moved (renaming a folder into another needs write permission on it).
 */
export function checkSwappable(paths: StatePaths): void {
  if (!exists(paths.dir) || !fs.lstatSync(paths.dir).isDirectory()) return;
  checkNoMounts(paths);
  try {
    fs.accessSync(paths.dir, fs.constants.W_OK);
  } catch {
    fail(ErrorCodes.DIR_NOT_WRITABLE, `cannot write ${paths.dir}: a commit moves it aside, which needs write permission on it`);
  }
  // In a sticky folder (like /tmp) only its owner, DIR's owner or root may move DIR: another user's DIR there, even
  // open to all, was fetched into whole and then failed at the commit, at every try.
  const euid = process.geteuid?.();
  if (euid === undefined || euid === 0) return;
  const parent = path.dirname(paths.dir);
  const ps = fs.statSync(parent);
  if ((ps.mode & 0o1000) !== 0 && ps.uid !== euid && fs.lstatSync(paths.dir).uid !== euid) {
    fail(ErrorCodes.DIR_NOT_WRITABLE, `cannot move ${paths.dir}: it is another user's, in ${parent}, a sticky folder (like /tmp) where only its owner may move it; give a folder of your own`);
  }
}

/** Refuses a DIR that is a mount point or holds one (see checkSwappable): also checked by a recovery's swap. */
function checkNoMounts(paths: StatePaths): void {
  const mounts = mountsAtOrUnder(paths.dir);
  if (mounts.includes(fs.realpathSync(paths.dir))) {
    fail(ErrorCodes.DIR_NOT_WRITABLE, `${paths.dir} is a mount point: a commit moves DIR aside and puts the new generation in its place, which a mount point refuses; give a folder inside it`);
  }
  if (mounts.length > 0) {
    fail(ErrorCodes.DIR_FOREIGN, `${paths.dir} holds another filesystem mounted at ${mounts[0]}: refusing to replace it (those files are not the company's); unmount it or give another folder`);
  }
}
