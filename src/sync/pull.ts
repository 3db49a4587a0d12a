/**
 * Pull one company into DIR: seed when DIR is new, delta when it holds a generation, resume after any interruption.
 *
 * The next generation is built beside DIR (state/next/): files that did not change are hard-linked, changed files
 * start as their spare (the version the last commit replaced, rewritten in place: store/spare.ts) or else as a copy of
 * their current version, and get only the chunks that differ from that start; chunks the puller already holds
 * anywhere are copied locally, changed chunks of files that existed are fetched as block patches against the old
 * bytes, the rest is fetched in packs. Every written chunk is verified against the authenticated manifest and recorded in a
 * journal, so a restart fetches nothing already verified. Commit swaps the finished tree in atomically (store/state).
 */
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { connect, SecureSession, printable } from './session.js';
import { WS_HEADER_MAX } from '../transport/channel.js';
// The worker pool, zstd and verify are loaded when a pull needs them: an unchanged re-pull never does.
import type { WorkerPool } from '../work/pool.js';
import { layoutOf, Layout } from '../manifest/layout.js';
import { IdIndex, idWords } from '../manifest/idindex.js';
import { appliedMode, decodeManifest, Entry, entryPath, Manifest, rootHashOf, sameContent, sameMtime, sameStoredMtime, totalBytes } from '../manifest/manifest.js';
import {
  MsgType,
  decodeJson,
  textOf,
  numberOf,
  decodeData,
  decodePatch,
  encodeGet,
  encodePatchGet,
  ManifestMsg,
  OpenMsg,
  heldBackOf,
} from '../protocol/messages.js';
import type { Holes, WritePackJob, WritePackResult, CopyRangesJob, CopyRangesResult, ApplyPatchResult, FinishFilesJob, FinishFilesResult } from '../work/tasks.js';
import {
  StatePaths,
  DirLock,
  recover,
  dropPrev,
  readApplied,
  checkDirUsable,
  checkParentWritable,
  commit,
  writeStats,
  unchangedByStats,
  removeRecord,
  removeTree,
  exists,
  syncFilesystem,
  syncFilesystemAsync,
  fsyncDir,
  Applied,
  AppliedRecord,
  writeFileDurable,
  signRecord,
  asCommitted,
  diskSpace,
  identityOf,
  sameIdentity,
  checkCommittedFolder,
  folderReplaced,
  appliedManifestMatches,
} from '../store/state.js';
import { MovedFiles } from './moves.js';
import { Spare, dropKept, dropSpareFilesAsync, keepSpares } from '../store/spare.js';
import { BaseCopies, BaseStep } from './basecopies.js';
import type { GoodChunks } from './verify.js';
import { chunkSegmentsOf } from '../work/segments.js';
import { SnapferryError, ErrorCodes, fail, toSnapferryError } from '../util/errors.js';
import { ByteGate } from '../util/bytegate.js';
import { TokenBucket } from '../util/rate.js';
import { noteGarbage } from '../util/gc.js';
import { boundHeapGrowth } from './heap.js';
import { inodeStamp, utimesSeconds, utimesArg } from '../util/stamp.js';
import { copyAround, BLOCK } from '../util/copy.js';
import { cacheLifeOf } from '../store/cachelife.js';
import { loadHasher, type Hasher } from '../chunk/hash.js';
import { openRegular, mayRead } from '../util/open.js';
import { prefetch, type FileRange } from '../util/prefetch.js';
import { makeDirs } from '../util/mkdirs.js';
import { encodeJournalBatch, decodeJournal } from './journalfile.js';

/** Progress of a pull, reported as it goes. */
export interface PullProgress {
  phase: 'connect' | 'manifest' | 'plan' | 'transfer' | 'commit';
  bytesDone: number;
  bytesTotal: number;
  bytesOnWire: number;
  elapsedMs: number;
}

/** Options of a pull. */
export interface PullOptions {
  url: string;
  company: string;
  dir: string;
  secret: Buffer;
  peerId?: string;
  /** Cap on bytes per second received. */
  bwlimit?: number;
  /** Flush data to disk before commit and journal checkpoints (default true). */
  durable?: boolean;
  /** Wait this long for another pull of the same DIR to finish (default: refuse at once). */
  lockWaitMs?: number;
  /** Attempts after a dropped connection (default 5, with backoff). */
  retries?: number;
  /** Worker threads. */
  workers?: number;
  /** Raw bytes of chunk data requested but not yet written, at most (default 16 MiB). */
  windowBytes?: number;
  timeoutMs?: number;
  onProgress?: (p: PullProgress) => void;
  log?: (line: string) => void;
  /**
   * Repair: check DIR deeply first and trust only what verifies (chunks, not metadata); with a lost or tampered record,
   * re-chunk the files DIR has and reuse whatever matches the site's generation.
   */
  repair?: boolean;
  /**
   * Adopt: DIR may be a folder snapferry did not make (a copy carried by hand, a restored backup). Its files at the
   * generation's paths are chunked and whatever matches is reused; the commit then replaces the folder with the
   * generation (what the generation lacks goes). Without it such a folder is refused. A DIR snapferry made pulls as usual.
   */
  adopt?: boolean;
  /**
   * Called each time an attempt has a session with the site (authenticated), even if the pull then fails: a follower
   * tells a site it once reached (and may reach again) from a wrong address.
   */
  onConnected?: () => void;
  /** Test hook: called at named points of the pull (fault tests kill the process there). */
  onPoint?: (point: string) => void;
  /**
   * Keep the files a commit replaces (the spare generation) and start the next delta's changed files from them
   * instead of from whole copies (default true; false deletes them and uses none).
   */
  spare?: boolean;
  /**
   * Keep the spares of files this pull leaves unchanged past its commit, for a preparation after it (follow sets it:
   * store/spare.ts, keepSpares). Default false: a one-shot pull drops them as before.
   */
  keepSpares?: boolean;
}

/** What a pull did (the --json summary). */
export interface PullResult {
  company: string;
  generation: number;
  rootHash: string;
  files: number;
  bytes: number;
  bytesOnWire: number;
  chunksFetched: number;
  chunksPatched: number;
  chunksReused: number;
  bytesWritten: number;
  /** Changed files built on their spare (rewritten where they differ) instead of on a whole copy. */
  spareFiles: number;
  unchanged: boolean;
  /** Repair only: the site had moved on, so DIR was brought to the site's newest generation instead. */
  peerMovedOn?: boolean;
  /** Repair only: what the deep check found before repairing. */
  damagedBefore?: number;
  /**
   * Files the site held back because they kept changing (each as the generation before had it, or not yet if new):
   * the first names (MAX_HELD_NAMES) and how many in all. Absent when none was.
   */
  heldBack?: { names: string[]; count: number };
  seconds: number;
}

/** Attempts of one pull at most, however many made progress (see pull()). */
const MAX_ATTEMPTS = 200;
/** Block size of the patch level: small enough that a rewritten 4 KiB page costs ~4 KiB, large enough that signatures stay cheap. */
const PATCH_BLOCK = 1024;
/** Raw bytes per GET (and per batch of patches). */
const PACK_BYTES = 512 << 10;
/** The smallest pack, for a pull capped at a low rate (--bwlimit): half a second of the rate, down to this. */
const MIN_PACK_BYTES = 16 << 10;
/** Journal records: a chunk index, or J_BASED | entry index (next/'s file holds its base), J_SPARE marking a spare base. */
const J_BASED = 0x80000000;
const J_SPARE = 0x40000000;
const J_ENTRY = 0x3fffffff;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** How long a pull that succeeded waits for the site's answer to its close frame (counted in bytesOnWire). */
const CLOSE_WAIT_MS = 2000;

/** Pulls with bounded retries: a dropped link resumes from the journal after a backoff. */
export async function pull(opts: PullOptions): Promise<PullResult> {
  // A big manifest and a long transfer would otherwise grow the main heap with the company (see heap.ts); first, so
  // that every worker's start is seen.
  boundHeapGrowth();
  const paths = new StatePaths(opts.dir);
  const lock = new DirLock(paths);
  const started = performance.now();
  // Repair mends a copy: where no state folder shows snapferry made one (a mistyped path, an empty folder), it would
  // fetch the whole company and call that a repair. Checked before the lock, which makes the state folder.
  if (opts.repair && !fs.existsSync(paths.state)) {
    fail(ErrorCodes.NOT_A_COPY, `${paths.dir} holds no copy made by snapferry (no ${paths.state}); repair mends a copy, pull makes one`);
  }
  try {
    checkParentWritable(paths);
    await lock.acquire(opts.lockWaitMs ?? 0);
  } catch (err) {
    throw toSnapferryError(err, `cannot use ${paths.dir}`);
  }
  let wire = 0;
  let everConnected = false;
  const retries = opts.retries ?? 5;
  try {
    recover(paths);
    // Spares a follower kept for its next preparation (a follower stopped in its pull, say): no preparation follows a
    // pull that keeps none, and they would stay for ever.
    if (!opts.keepSpares) dropKept(paths);
    // Repair may re-establish a lost record, but only for a DIR whose state folder shows snapferry made it.
    // A repair with a record may find DIR damaged in any way but one: no longer a folder (a file, a link to nothing),
    // which it must not replace either.
    if (opts.adopt || (opts.repair && fs.existsSync(paths.appliedManifest))) checkDirUsable(paths, true);
    else checkDirUsable(paths);
    // A repair mends the folder snapferry committed, not one made at its path since (pull --adopt takes that over).
    if (opts.repair && !opts.adopt) checkCommittedFolder(paths);
    checkSameCompany(paths, opts.company);
    // What DIR is now (its inode, null if absent): a folder put in its place while the pull runs is not replaced.
    const dirIdentity = identityOf(paths.dir);
    // A copy deleted or moved away since a generation was applied there is seeded anew: said, since an operator who
    // moved it by mistake sees a whole seed instead of a delta (and the old copy, if moved, still on disk elsewhere).
    if (dirIdentity === null && !opts.repair && recordSays(paths, 'rootHash')) {
      opts.log?.(`${paths.dir} is gone (deleted or moved away since snapferry last applied a generation there); seeding it anew`);
    }
    // Failed attempts in a row without progress: an attempt that brought chunks starts the count again, so a link that
    // drops every few megabytes still finishes (the budget bounds a site or link that gets nowhere, not a long pull).
    // All attempts are bounded too: progress a new generation undoes each time must not retry for ever.
    // What failed attempts at the generation the pull ends with fetched: the final attempt finds those chunks in next/
    // and would count them reused, though this command fetched them (as bytesOnWire counts every attempt's bytes).
    let earlier = { rootHash: '', fetched: 0, patched: 0, written: 0 };
    for (let attempt = 0, total = 0; ; attempt++, total++) {
      const run = new PullRun(opts, paths, started, dirIdentity);
      try {
        const r = await run.execute();
        r.bytesOnWire += wire;
        if (earlier.rootHash === r.rootHash && !r.unchanged) {
          r.chunksFetched += earlier.fetched;
          r.chunksPatched += earlier.patched;
          r.chunksReused = Math.max(0, r.chunksReused - earlier.fetched);
          r.bytesWritten += earlier.written;
        }
        return r;
      } catch (err) {
        const e = toSnapferryError(err);
        wire += run.wireBytes;
        const c = run.counted;
        if (c.rootHash !== earlier.rootHash) earlier = { rootHash: c.rootHash, fetched: 0, patched: 0, written: 0 };
        earlier.fetched += c.fetched;
        earlier.patched += c.patched;
        earlier.written += c.written;
        everConnected ||= !run.neverConnected;
        if (e.code === ErrorCodes.STALE_SOURCE && attempt < retries + 20) {
          opts.log?.(`the company changed while it was sent (${e.message}); fetching the newer generation`);
          continue;
        }
        // A site that refuses connections from the start is reported at once; anything reached before, or a link
        // cut mid-handshake, or a busy site, is retried with backoff.
        if (run.progressed && total < MAX_ATTEMPTS) attempt = 0;
        if (!e.retryable || attempt >= retries || (!everConnected && e.code === ErrorCodes.UNREACHABLE)) throw e;
        const backoff = Math.min(30_000, 500 * 2 ** attempt);
        opts.log?.(`${e.message}; retrying in ${(backoff / 1000).toFixed(1)} s (attempt ${attempt + 2} of ${retries + 1})`);
        await sleep(backoff);
      }
    }
  } finally {
    lock.release();
  }
}

/** Hard links the plan makes between two records of them in next.links (recordOwnLinks). */
const LINKS_BATCH = 64;

/** Where plan decided an occurrence of a chunk comes from (one byte per global chunk index). */
const enum From {
  /** Nothing to do: reused in place, hard-linked, already verified, or not a file's chunk. */
  NONE = 0,
  /** First occurrence of an id, fetched whole in a pack. */
  GET = 1,
  /** First occurrence of an id, fetched as a block patch against the old bytes at the same path and offset. */
  PATCH = 2,
  /** A later occurrence of an id being fetched: written by the same fetch (see `nextTarget`). */
  DUP = 3,
  /** Copied from bytes the puller already holds. */
  COPY = 4,
}

/** A chunk the puller already holds: an index into the applied generation's layout (>= 0) or into partial chunks (-1 - k). */
type LocalRef = number;

/** Local files re-chunked or verified in repair, or left by an attempt at another generation, that may serve chunks and patch bases (see partialSources). */
type Partial = Map<string, { abs: string; size: number; chunks: Array<{ id: bigint; offset: number }>; copyOnly?: boolean }>;

/** Chunks the puller already holds, found by id. */
interface LocalChunks {
  /** Trusted files of the applied generation: path -> entry index. */
  oldByPath: Map<string, number>;
  /**
   * Those of them the puller may not read back (the company's mode 000 or 0200, kept as it is, for a user without
   * root's override): linked when unchanged (a link reads nothing), never a base nor a source of chunks (EACCES).
   */
  unreadable: Set<number>;
  /** Layout of the applied generation, if any. */
  oldLayout?: Layout;
  /** Where the id of chunk g (given as id words) is held locally, if anywhere. */
  find(words: Uint32Array, g: number): LocalRef | undefined;
  /** File and offset of a local chunk. */
  source(ref: LocalRef): { path: string; offset: number };
}

/** One attempt of a pull over one connection. */
class PullRun {
  wireBytes = 0;
  neverConnected = true;

  /**
   * Raw bytes per pack: PACK_BYTES, or under --bwlimit half a second of the rate (at least MIN_PACK_BYTES), so that a
   * pack on its way is no longer burst than that.
   */
  private get packBytes(): number {
    return this.opts.bwlimit ? Math.max(MIN_PACK_BYTES, Math.min(PACK_BYTES, Math.floor(this.opts.bwlimit / 2))) : PACK_BYTES;
  }

  /** What this attempt fetched and wrote, for the generation it pulled (rootHash '' before it knew). */
  get counted(): { rootHash: string; fetched: number; patched: number; written: number } {
    return { rootHash: this.rootHash ?? '', fetched: this.stats.fetched, patched: this.stats.patched, written: this.stats.written };
  }

  /** Whether this attempt received and wrote chunks from the site (what a retry need not fetch again). */
  get progressed(): boolean {
    return this.stats.fetched + this.stats.patched > 0;
  }
  private session?: SecureSession;
  private pool?: WorkerPool;
  private m!: Manifest;
  private layout!: Layout;
  private rootHash = '';
  private generation = 0;
  /** What the site's manifest header said it held back (see PullResult.heldBack). */
  private heldBack?: { names: string[]; count: number };
  private applied?: Applied;
  /** Whether unchangedByStats found DIR holding the applied generation as committed at this pull's start. */
  private appliedIntact = false;
  /** Occurrences the journal of an interrupted attempt says are verified in next/ (read once, by plan). */
  private done = new Uint8Array(0);
  /** Entries whose file in next/ holds its base: a copy of DIR's version, or (spareBased) its spare. */
  private based = new Set<number>();
  private spareBased = new Set<number>();
  private journalBuf: number[] = [];
  private lastCheckpoint = performance.now();
  /** next.unsynced, open for appending while an attempt runs (see settleJournal); undefined where it is not kept. */
  private unsyncedFd?: number;
  /** The page cache life next.unsynced is written under (store/cachelife.ts); undefined where it cannot be named. */
  private life?: Buffer;
  private remaining!: Int32Array;
  private bytesDone = 0;
  private bytesTotal = 0;
  private stats = { fetched: 0, patched: 0, reused: 0, written: 0, spares: 0 };
  /** Requests awaiting their answer, with the message type that answers them (DATA or PATCH). */
  private pending = new Map<number, { answer: number; resolve: (m: Buffer) => void; reject: (e: unknown) => void }>();
  private nextReq = 1;
  private readerError?: SnapferryError;
  private bucket?: TokenBucket;

  constructor(
    private readonly opts: PullOptions,
    private readonly paths: StatePaths,
    private readonly started: number,
    /** DIR's identity when the pull began (identityOf). */
    private readonly dirIdentity: string | null = null,
  ) {
    if (opts.bwlimit) this.bucket = new TokenBucket(opts.bwlimit);
  }

  private progress(phase: PullProgress['phase']): void {
    this.opts.onProgress?.({
      phase,
      bytesDone: this.bytesDone,
      bytesTotal: this.bytesTotal,
      bytesOnWire: this.session?.channel.wireBytesRead ?? this.wireBytes,
      elapsedMs: performance.now() - this.started,
    });
  }

  /** Repair mode: good chunks of the applied generation per file, from the deep check. */
  private good?: GoodChunks;
  private damagedBefore?: number;

  async execute(): Promise<PullResult> {
    this.progress('connect');
    /** Why repair re-establishes DIR's record: said once the site accepted the secret (a wrong one fails the check too). */
    let recordNote: string | undefined;
    if (this.opts.repair) {
      try {
        const { verifyDir } = await import('./verify.js');
        const v = await verifyDir(this.paths.dir, { deep: true, secret: this.opts.secret, locked: true });
        this.applied = v.applied;
        this.good = v.good;
        this.damagedBefore = v.damaged.length;
        if (v.unchecked.length > 0) {
          const first = v.unchecked[0]!;
          recordNote = `${v.unchecked.length} entr${v.unchecked.length === 1 ? 'y' : 'ies'} could not be checked (${printable(first.path)}: ${first.reason}${v.unchecked.length > 1 ? ', …' : ''}); not counted as damage`;
        }
      } catch (err) {
        const e = toSnapferryError(err);
        if (e.code !== ErrorCodes.STATE && e.code !== ErrorCodes.BAD_MANIFEST) throw e;
        recordNote = `${e.message}; re-establishing it from the site`;
        this.applied = undefined; // re-chunk what DIR has
        this.damagedBefore = -1;
      }
    }
    try {
      this.session = await connect(this.opts.url, { secret: this.opts.secret, peerId: this.opts.peerId ?? os.hostname(), timeoutMs: this.opts.timeoutMs, readLimit: this.bucket });
    } catch (err) {
      throw toSnapferryError(err);
    }
    this.neverConnected = false;
    this.opts.onConnected?.();
    if (recordNote) this.opts.log?.(recordNote);
    let result: PullResult | undefined;
    try {
      result = await this.run();
      return result;
    } catch (err) {
      // Nothing may still write into next/ once this attempt has ended.
      await this.bases.settle();
      // Keep what this attempt verified: the next one must not fetch it again, however short this one was.
      await this.flushJournal(true).catch(() => undefined);
      throw err;
    } finally {
      this.closeUnsynced();
      this.wireBytes = this.session.channel.wireBytesRead;
      this.session.close();
      // bytesOnWire is every byte received, the site's answer to our close frame too: a pull that succeeded waits for
      // it (bounded; meanwhile the workers stop) before it takes the count.
      await Promise.all([this.pool?.close(), result ? this.session.channel.closedWithin(CLOSE_WAIT_MS) : undefined]);
      if (result) result.bytesOnWire = this.wireBytes = this.session.channel.wireBytesRead;
    }
  }

  private async run(): Promise<PullResult> {
    const s = this.session!;
    const timeout = this.opts.timeoutMs ?? 60_000;
    // The generation DIR holds is named from its record alone; while the site scans, DIR is checked against the stats
    // of that generation (enough when the site says it is unchanged: the manifest is then never decoded).
    // A folder adopted in place of the one the record describes (a backup restored where the copy was) is taken as a
    // first adopt: its files are chunked and matched, not judged by a record of another folder.
    const recordOfOther = this.opts.adopt === true && folderReplaced(this.paths);
    const have = this.opts.repair ? this.applied?.record.rootHash : recordOfOther ? undefined : recordSays(this.paths, 'rootHash');
    await s.sendJson(MsgType.OPEN, { company: this.opts.company, have } satisfies OpenMsg);
    const intactRecord = have && !this.opts.repair ? unchangedByStats(this.paths) : undefined;
    this.progress('manifest');
    const headMsg = await s.recv(timeout, true);
    if (headMsg[0] !== MsgType.MANIFEST) fail(ErrorCodes.PROTOCOL, 'expected a manifest');
    const head = decodeJson<ManifestMsg & { unchanged?: boolean }>(headMsg);
    if (typeof head.rootHash !== 'string' || !/^[0-9a-f]{64}$/.test(head.rootHash)) fail(ErrorCodes.PROTOCOL, 'malformed manifest header');
    this.rootHash = head.rootHash;
    this.generation = numberOf(head.generation) || 0;
    this.heldBack = heldBackOf(head);
    if (head.unchanged && intactRecord?.rootHash === head.rootHash && appliedManifestMatches(this.paths, head.rootHash)) {
      await s.send(Buffer.from([MsgType.BYE]));
      return this.result(true, { files: intactRecord.files, bytes: intactRecord.bytes, chunks: intactRecord.chunks });
    }
    if (!this.opts.repair && !recordOfOther) this.applied = readApplied(this.paths);
    // The check against the stats a moment ago found every file of the applied generation as committed: the plan
    // trusts them without a second lstat of each (~90 ms for 2,626 files here, on the first delta's critical path).
    this.appliedIntact = intactRecord !== undefined && intactRecord.rootHash === this.applied?.record.rootHash;
    // The manifest's bytes are not kept through the transfer (as many as 12 a chunk, and every path): they wait in a
    // file (next.manifest, or applied.manifest when the site says DIR's generation is current) for the commit, which
    // reads them back and checks them against the root hash. (Encoding this.m again took 10-55 ms a pull.)
    let encodedLength: number;
    let manifestFile: string;
    if (head.unchanged) {
      if (!this.applied || this.applied.record.rootHash !== head.rootHash) fail(ErrorCodes.PROTOCOL, 'site claims an unchanged generation we do not hold');
      manifestFile = this.paths.appliedManifest;
      encodedLength = fs.statSync(manifestFile).size;
      this.m = this.applied.manifest;
    } else {
      const encoded = await this.receiveManifest(head);
      encodedLength = encoded.length;
      this.m = decodeManifest(encoded);
      this.setAsideOtherGeneration();
      manifestFile = this.paths.nextManifest;
      fs.writeFileSync(manifestFile, encoded, { mode: 0o600 });
    }
    this.layout = layoutOf(this.m);
    this.bytesTotal = totalBytes(this.m);

    if (this.applied && this.applied.record.rootHash === this.rootHash && (this.opts.repair ? this.damagedBefore === 0 : this.intact())) {
      // Stats that could not tell this alone (unknown entries, or written before they carried paths and sizes).
      if (!this.opts.repair && !intactRecord) writeStats(this.paths, this.rootHash, this.m);
      if (manifestFile === this.paths.nextManifest) fs.rmSync(manifestFile, { force: true });
      await s.send(Buffer.from([MsgType.BYE]));
      return this.result(true);
    }

    this.progress('plan');
    this.opts.onPoint?.('plan');
    const { WorkerPool } = await import('../work/pool.js');
    this.pool = new WorkerPool(this.opts.workers);
    // Records of an interrupted attempt that were never flushed are checked against their chunks' ids (readJournal).
    const hasher = fs.existsSync(this.paths.nextUnsynced) ? await loadHasher() : undefined;
    const resumed = this.plan(encodedLength, await this.partialSources(), hasher);
    this.settleJournal(resumed);
    // next/ has its folders, links and symlinks now, and no file data yet.
    this.opts.onPoint?.('planned');
    await this.checkSpace();
    this.startReader();
    this.progress('transfer');
    await this.transfer();
    await this.flushJournal(true);
    await this.finishTree();
    await s.send(Buffer.from([MsgType.BYE])).catch(() => undefined);

    this.progress('commit');
    this.opts.onPoint?.('commit');
    const record: AppliedRecord = {
      format: 1,
      company: this.opts.company,
      generation: this.generation,
      rootHash: this.rootHash,
      site: this.opts.url,
      committedAt: new Date().toISOString(),
      files: this.m.entries.filter((e) => e.kind === 'file').length,
      bytes: this.bytesTotal,
      chunks: this.layout.total,
      // next/ is the folder the commit renames to DIR.
      folder: identityOf(this.paths.next) ?? undefined,
    };
    await this.spareDrop;
    // DIR as it is now, not only as it was when the pull began: a folder with files made at DIR while a seed ran is not
    // snapferry's to replace (the commit would take it for the old generation and move it into spare/). Refused by
    // name; next/ stays, so once it is moved away the next pull commits without fetching again. (A repair mends DIR
    // as it finds it.)
    if (!this.opts.repair) checkDirUsable(this.paths, this.opts.adopt === true);
    // Nor is a folder with files put at DIR in place of the copy (moved away meanwhile) while a delta ran.
    const nowAtDir = identityOf(this.paths.dir);
    if (!this.opts.repair && nowAtDir !== null && !sameIdentity(this.dirIdentity, nowAtDir) && fs.lstatSync(this.paths.dir).isDirectory() && fs.readdirSync(this.paths.dir).length > 0) {
      fail(ErrorCodes.DIR_FOREIGN, `${this.paths.dir} was replaced by another folder while the pull ran, not made by snapferry; refusing to overwrite it (move it away and pull again: what was fetched is kept)`);
    }
    const encoded = fs.readFileSync(manifestFile);
    if (rootHashOf(encoded) !== this.rootHash) fail(ErrorCodes.STATE, `the manifest kept in ${manifestFile} for the commit was changed`);
    commit(this.paths, signRecord(record, this.opts.secret), encoded, this.opts.durable !== false, this.opts.onPoint, this.opts.spare !== false && !this.opts.repair, () =>
      writeStats(this.paths, this.rootHash, this.m, this.finishedStats, this.opts.durable !== false),
    );
    this.opts.onPoint?.('committed');
    return this.result(false);
  }

  /**
   * The summary; `counts` for an unchanged DIR whose manifest was not read (its record has them: every chunk of the
   * generation counts as reused, as in a delta, where fetched and reused chunks add up to the generation's).
   */
  private result(unchanged: boolean, counts?: { files: number; bytes: number; chunks?: number }): PullResult {
    return {
      company: this.opts.company,
      generation: this.generation,
      rootHash: this.rootHash,
      files: counts?.files ?? this.m.entries.filter((e) => e.kind === 'file').length,
      bytes: counts?.bytes ?? this.bytesTotal,
      bytesOnWire: this.session!.channel.wireBytesRead,
      chunksFetched: this.stats.fetched,
      chunksPatched: this.stats.patched,
      chunksReused: counts ? (Number.isSafeInteger(counts.chunks) ? counts.chunks! : 0) : this.stats.reused,
      bytesWritten: this.stats.written,
      spareFiles: this.stats.spares,
      unchanged,
      ...(this.opts.repair
        ? { peerMovedOn: this.applied !== undefined && this.applied.record.rootHash !== this.rootHash, damagedBefore: this.damagedBefore }
        : {}),
      ...(this.heldBack ? { heldBack: { names: this.heldBack.names.map((n) => printable(n)), count: this.heldBack.count } } : {}),
      seconds: Math.round(performance.now() - this.started) / 1000,
    };
  }

  private async receiveManifest(head: ManifestMsg): Promise<Buffer> {
    const size = numberOf(head.encodedSize);
    const parts = numberOf(head.parts);
    if (!Number.isInteger(size) || size < 5 || size > 1 << 30 || !Number.isInteger(parts) || parts !== Math.ceil(size / (1 << 20))) {
      fail(ErrorCodes.BAD_MANIFEST, 'manifest header out of bounds');
    }
    const out = Buffer.allocUnsafe(size);
    const { Decompressor } = await import('../work/zstd.js');
    const z = new Decompressor();
    let o = 0;
    for (let i = 0; i < parts; i++) {
      const msg = await this.session!.recv(this.opts.timeoutMs ?? 60_000, true);
      if (msg[0] !== MsgType.MANIFEST_PART || msg.length < 6) fail(ErrorCodes.PROTOCOL, 'expected a manifest part');
      const rawLen = msg.readUInt32BE(2);
      if (rawLen > 1 << 20 || o + rawLen > size) fail(ErrorCodes.BAD_MANIFEST, 'manifest part out of bounds');
      const raw = msg[1] === 1 ? z.decompress(msg.subarray(6), rawLen) : msg.subarray(6);
      if (raw.length !== rawLen) fail(ErrorCodes.BAD_MANIFEST, 'manifest part has the wrong size');
      raw.copy(out, o);
      o += rawLen;
    }
    if (o !== size) fail(ErrorCodes.BAD_MANIFEST, 'manifest truncated');
    if (rootHashOf(out) !== this.rootHash) fail(ErrorCodes.BAD_MANIFEST, 'manifest does not match its root hash');
    return out;
  }

  /** Whether DIR still holds exactly the applied generation, by metadata. */
  private intact(): boolean {
    const a = this.applied!;
    for (let i = 0; i < a.manifest.entries.length; i++) if (!this.trusted(a.manifest.entries[i]!, i)) return false;
    return true;
  }

  /** Folders of the applied generation that are not folders in DIR now (made when first needed). */
  private appliedNonFolders?: Set<string>;

  /** Whether a file of the applied generation is still as committed (size, mtime, inode, ctime; in repair, every chunk verified). */
  private trusted(e: Entry, idx: number): boolean {
    // Under a folder moved away and replaced by a link to it, its files keep their inode and ctime: as committed to
    // lstat, yet outside DIR (a hard link to one would tie the new generation to a file elsewhere).
    this.appliedNonFolders ??= nonFolders(this.paths.dir, this.applied!.manifest.entries);
    if (underAny(this.appliedNonFolders, e.path)) return false;
    if (this.good && e.kind === 'file') {
      if (e.size > 0 && !this.good.allGood(idx)) return false;
    }
    let st: fs.BigIntStats;
    try {
      st = fs.lstatSync(entryPath(this.paths.dir, e.path), { bigint: true });
    } catch {
      return false;
    }
    // A folder with its mode and mtime (an entry added to it or removed since changes its mtime), a link with its target.
    if (e.kind === 'dir') return st.isDirectory() && Number(st.mode & 0o7777n) === appliedMode(e.mode) && sameStoredMtime(st.mtimeNs, e.mtimeNs);
    if (e.kind === 'symlink') return st.isSymbolicLink() && readlinkOr(entryPath(this.paths.dir, e.path)) === e.target;
    return this.asApplied(st, idx);
  }

  /**
   * A next/ an earlier attempt built for another generation (the company changed at the site between the attempts)
   * is set aside as prev/, with its manifest and journals, before this generation's manifest takes next.manifest's
   * place: its verified chunks are then copied (checked against their ids) instead of fetched again. Without it, a
   * seed over a flaky link of a company in use started from nothing after every drop that met a change.
   */
  private setAsideOtherGeneration(): void {
    const p = this.paths;
    let other: unknown;
    try {
      other = JSON.parse(fs.readFileSync(p.nextJson, 'utf8')).rootHash;
    } catch {
      return;
    }
    if (other === this.rootHash || !exists(p.next) || !exists(p.nextManifest) || (!exists(p.nextJournal) && !exists(p.nextUnsynced))) return;
    dropPrev(p);
    fs.renameSync(p.next, p.prev);
    fs.renameSync(p.nextManifest, p.prevManifest);
    if (exists(p.nextJournal)) fs.renameSync(p.nextJournal, p.prevJournal);
    if (exists(p.nextUnsynced)) fs.renameSync(p.nextUnsynced, p.prevUnsynced);
  }

  /**
   * The chunks of prev/ (setAsideOtherGeneration) its journals vouch for, as partial sources by path. A chunk found
   * there is copied only if its bytes still hash to its id, so a record that does not hold costs a fetch, never a
   * wrong chunk.
   */
  private prevSources(out: Partial): void {
    const p = this.paths;
    if (!exists(p.prev)) return;
    let m: Manifest;
    try {
      m = decodeManifest(fs.readFileSync(p.prevManifest));
    } catch {
      return;
    }
    const L = layoutOf(m);
    const byEntry = new Map<number, Array<{ id: bigint; offset: number }>>();
    // The unflushed journal only while its data can still be in the page cache (see cachelife.ts).
    const life = cacheLifeOf(p.state);
    const records = life ? [recordsOf(p.prevJournal), unsyncedRecordsOf(p.prevUnsynced, life)] : [recordsOf(p.prevJournal)];
    for (const list of records) {
      for (const v of list) {
        if (v & J_BASED || v >= L.total) continue;
        const ei = L.entry[v]!;
        let chunks = byEntry.get(ei);
        if (!chunks) byEntry.set(ei, (chunks = []));
        chunks.push({ id: L.id[v]!, offset: L.offset[v]! });
      }
    }
    for (const [ei, chunks] of byEntry) {
      const e = m.entries[ei]!;
      if (out.has(e.path)) continue;
      const abs = entryPath(p.prev, e.path);
      let st: fs.Stats;
      try {
        st = fs.lstatSync(abs);
      } catch {
        continue;
      }
      // Not a patch base: where it holds nothing verified it holds zeros (a GET, from the site's store, costs less).
      if (st.isFile()) out.set(e.path, { abs, size: st.size, chunks, copyOnly: true });
    }
  }

  /**
   * Local files that are not trusted whole but still hold good chunks: in repair, damaged files of the applied
   * generation (their verified chunks); with no record at all, every file of the site's generation that DIR has,
   * re-chunked here. Each serves as a patch base for its own path and as a source of chunks by id (copies are
   * verified against the id as they are made).
   */
  private async partialSources(): Promise<Partial> {
    const out: Partial = new Map();
    this.prevSources(out);
    if (!this.opts.repair && !(this.opts.adopt && !this.applied)) return out;
    if (this.applied && this.good) {
      const olds = this.applied.manifest.entries;
      for (const i of this.good.files()) {
        const oe = olds[i]!;
        if (this.good.allGood(i) && this.trusted(oe, i)) continue;
        const abs = entryPath(this.paths.dir, oe.path);
        let size = 0;
        try {
          size = fs.statSync(abs).size;
        } catch {
          continue;
        }
        const chunks: Array<{ id: bigint; offset: number }> = [];
        const lens = oe.lens!; // read once: a PackedEntry makes a view at each read
        const ids = oe.ids!;
        for (let k = 0, o = 0; k < lens.length; o += lens[k]!, k++) if (this.good.isGood(i, k)) chunks.push({ id: ids[k]!, offset: o });
        out.set(oe.path, { abs, size, chunks });
      }
      return out;
    }
    // Every file of DIR at a path of the generation, chunked on the pool (all of them queued at once: both cores work),
    // except under what is not a folder in DIR (a link to a folder elsewhere is not DIR's to reuse).
    const files: Array<Promise<void>> = [];
    const notFolders = nonFolders(this.paths.dir, this.m.entries);
    for (const e of this.m.entries) {
      if (e.kind !== 'file' || underAny(notFolders, e.path)) continue;
      const abs = entryPath(this.paths.dir, e.path);
      let st: fs.Stats;
      try {
        st = fs.lstatSync(abs);
      } catch {
        continue;
      }
      // One the puller may not read (a company mode 000 or 0200 kept as it is) is fetched: chunking it failed the
      // whole repair or adopt with EACCES, and with the record lost no way on but a chmod by hand.
      if (!st.isFile() || ((st.mode & 0o400) === 0 && !mayRead(abs))) continue;
      files.push(
        Promise.all(chunkSegmentsOf(this.pool!, abs, st.size, this.m.params)).then((rs) => {
          const chunks: Array<{ id: bigint; offset: number }> = [];
          let o = 0;
          for (const r of rs) for (let k = 0; k < r.lens.length; o += r.lens[k]!, k++) chunks.push({ id: r.ids[k]!, offset: o });
          out.set(e.path, { abs, size: st.size, chunks });
        }),
      );
    }
    await Promise.all(files);
    return out;
  }

  /**
   * Builds next/'s skeleton and decides where every chunk comes from, into per-chunk typed arrays (no object per chunk,
   * so a branch's memory does not grow with the company): identical chunks are fetched once and written to every
   * occurrence, chunks held locally are copied, changed chunks of files that existed are patched.
   */
  private plan(encodedLength: number, partial: Partial, hasher: Hasher | undefined): boolean {
    const p = this.paths;
    // Resume only into a next/ built for this very generation; anything else is discarded.
    let resumable = false;
    try {
      resumable = JSON.parse(fs.readFileSync(p.nextJson, 'utf8')).rootHash === this.rootHash && fs.existsSync(p.next);
      // Only a tree the earlier attempt built: its folders real folders. A link in a folder's place (planted there)
      // would lead the plan's links and writes outside DIR, and be committed as part of the generation.
      resumable &&= fs.lstatSync(p.next).isDirectory() && this.m.entries.every((e) => e.kind !== 'dir' || !isNonFolder(entryPath(p.next, e.path)));
    } catch {
      resumable = false;
    }
    this.life = cacheLifeOf(p.state);
    // DIR's files an interrupted attempt linked are trusted by the stamps that link gave them, whatever generation that
    // attempt was for (the record names DIR's generation): read before a next/ for another one is discarded, or every
    // unchanged file failed its stamp and a 3-byte change after a cut-short delta fetched the whole company.
    const linked = this.trustOwnLinks();
    if (resumable) {
      this.readJournal(hasher);
    } else {
      // Removing next/ takes those links away again, which changes the files' ctime once more: those still as linked
      // just before are stamped anew once it is gone.
      const dirFile = (i: number) => entryPath(p.dir, this.applied!.manifest.entries[i]!.path);
      const asLinked = [...linked].filter((i) => {
        try {
          return this.asApplied(fs.lstatSync(dirFile(i), { bigint: true }), i);
        } catch {
          return false;
        }
      });
      removeTree(p.next);
      for (const i of asLinked) {
        try {
          this.applied!.stats[i] = inodeStamp(fs.lstatSync(dirFile(i), { bigint: true }));
        } catch {
          /* gone: fetched */
        }
      }
      for (const f of [p.nextJournal, p.nextUnsynced, p.nextLinks, ...p.legacyJournals]) removeRecord(f);
      fs.mkdirSync(p.next, { mode: 0o700 });
      // Not flushed (0.1-0.2 s here, on ext4 waiting for every dirty byte): the first checkpoint's flush comes before any
      // record that depends on it, and a next.json lost or cut by a power cut only has next/ discarded.
      writeFileDurable(p.nextJson, JSON.stringify({ rootHash: this.rootHash, bytes: encodedLength }), false);
    }
    const L = this.layout;
    this.remaining = new Int32Array(this.m.entries.length);
    this.from = new Uint8Array(L.total);
    this.nextTarget = new Int32Array(L.total).fill(-1);
    // Last occurrence in each fetch's chain, so occurrences are appended in order (dropped after planning).
    const tail = new Int32Array(L.total);
    const words = idWords(L.id);
    const local = this.localChunks(partial);
    const fetched = new IdIndex(L.id, L.total);
    const ol = local.oldLayout;
    const oldWords = ol ? idWords(ol.id) : words;
    const linkedOld: number[] = [];
    let linksRecorded = 0;
    // The spare generation's record, read when a changed file first asks for it.
    let spare: Spare | null | undefined;
    const spareOf = () => (spare === undefined ? (spare = Spare.load(p) ?? null) : spare) ?? undefined;
    // Only a resumed next/ can hold entries already (one check per file saved on a fresh one). lstat, not exists: a
    // symlink made by the interrupted attempt may point to a file not written yet.
    const absent = (dst: string) => !resumable || !exists(dst);
    const moves = this.applied ? new MovedFiles(this.applied.manifest.entries, local.oldByPath, this.m.entries) : undefined;
    for (let ei = 0; ei < this.m.entries.length; ei++) {
      const e = this.m.entries[ei]!;
      const dst = entryPath(p.next, e.path);
      if (e.kind === 'dir') {
        makeDirs(dst, 0o700);
        continue;
      }
      if (e.kind === 'symlink') {
        if (absent(dst)) fs.symlinkSync(e.target!, dst);
        continue;
      }
      // A file moved at the site is linked from its old path, as an unchanged one is from its own.
      const found = local.oldByPath.get(e.path) ?? moves?.take(e);
      const foundEntry = found === undefined ? undefined : this.applied!.manifest.entries[found]!;
      const sameBytes = foundEntry !== undefined && sameContent(foundEntry, e);
      const linkable = sameBytes && foundEntry.mode === e.mode && sameMtime(foundEntry.mtimeNs, e.mtimeNs);
      // One the puller may not read serves only as a link (see LocalChunks.unreadable).
      const oi = found !== undefined && (linkable || !local.unreadable.has(found)) ? found : undefined;
      const old = oi === undefined ? undefined : foundEntry;
      const src = entryPath(p.dir, old?.path ?? e.path);
      const whole = old !== undefined && sameBytes;
      const wantLink = whole && linkable;
      const have = resumable ? this.reconcile(ei, dst, whole ? { src, link: wantLink } : undefined) : 'absent';
      if (whole) {
        const g0 = L.entryStart[ei]!;
        this.stats.reused += L.entryStart[ei + 1]! - g0;
        const copyLater = have !== 'file' && !wantLink && !this.based.has(ei);
        if (copyLater) this.creditOnBase.set(ei, e.size);
        else this.bytesDone += e.size;
        if (have === 'file') {
          // The killed attempt left this file whole and verified (a repair's, say): it is finished with the rest.
        } else if (wantLink) {
          if (have !== 'link') fs.linkSync(src, dst);
          this.linked.add(ei);
          linkedOld.push(oi!);
          // Recorded as they are made, a batch at a time: a pull killed in its plan resumes trusting what it linked
          // (by the ctime the link gave it); recorded once after the loop, every file linked before a kill was fetched.
          if (linkedOld.length - linksRecorded >= LINKS_BATCH) {
            this.recordOwnLinks(linkedOld.slice(linksRecorded));
            linksRecorded = linkedOld.length;
            this.opts.onPoint?.('links');
          }
        } else if (!this.based.has(ei)) {
          // Same bytes, other mode or mtime: a hard link would change the old generation too, so copy.
          this.bases.add({ ei, from: src, spare: false, bytes: e.size });
        }
        continue;
      }
      // Files are created by the first write, on the workers; only empty ones are made here.
      if (e.size === 0 && absent(dst)) fs.closeSync(fs.openSync(dst, 'w', 0o600));
      const fromOld = old && e.size > 0 ? new StartChunks(ol!.offset, ol!.len, oldWords, ol!.entryStart[oi!]!, ol!.entryStart[oi! + 1]!) : undefined;
      const start = e.size > 0 ? this.startOf(ei, dst, src, fromOld, spareOf, words) : undefined;
      // A file an interrupted attempt left in next/ (its base copy journaled, or chunks written) has old bytes too,
      // even where this plan takes no base for it (DIR's version since untrusted: a chmod, a touch).
      if (start || have === 'file') this.withBase.add(ei);
      // Past its size, a file an interrupted attempt left holds nothing yet: its runs of zeros there are left holes
      // (written out, a sparse file's resumed seed asked for its whole size and was refused on a disk that fits it).
      if (have === 'file') this.holesFromOf.set(ei, fs.lstatSync(dst).size);
      // The chunks a base copy is still to bring count as done when it lands (makeBase), not now: progress and its
      // ETA would otherwise credit a delta's largest work, the copies, before it begins.
      const copyLater = start !== undefined && start === fromOld && !this.based.has(ei);
      let heldLater = 0;
      const part = old ? undefined : partial.get(e.path);
      // A partial file serves as a patch base for its path unless it is only a source of chunks (prevSources).
      const base = old ? { path: src, size: old.size } : part && !part.copyOnly ? { path: part.abs, size: part.size } : undefined;
      if (base) this.patchBase.set(ei, base.path);
      let remaining = 0;
      for (let g = L.entryStart[ei]!; g < L.entryStart[ei + 1]!; g++) {
        const off = L.offset[g]!;
        // What the file starts as, walked alongside (both in offset order): a chunk at the same offset with the same id
        // is already there.
        if (this.done[g] === 1 || start?.holds(off, L.len[g]!, words, g)) {
          this.stats.reused++;
          if (copyLater && this.done[g] !== 1) heldLater += L.len[g]!;
          else this.bytesDone += L.len[g]!;
          continue;
        }
        remaining++;
        // An id held locally is never fetched: every occurrence of it is copied.
        const ref = local.find(words, g);
        if (ref !== undefined) {
          this.from[g] = From.COPY;
          this.copies.push(g, ref);
          continue;
        }
        const first = fetched.add(g);
        // A chunk of the same id and another length (a crafted collision) is fetched on its own, not written as a copy.
        if (first >= 0 && L.len[first] === L.len[g]) {
          this.from[g] = From.DUP;
          this.nextTarget[tail[first]!] = g;
          tail[first] = g;
        } else {
          this.from[g] = base && off < base.size ? From.PATCH : From.GET;
          tail[g] = g;
        }
      }
      this.remaining[ei] = remaining;
      if (heldLater > 0) this.creditOnBase.set(ei, heldLater);
    }
    this.local = local;
    this.recordOwnLinks(linkedOld.slice(linksRecorded));
    // Spare files not used by now never will be (the commit makes this generation's replaced files the new spare),
    // but for a follower's spares of files left as they were: kept aside for its next preparation.
    if (this.opts.keepSpares && this.opts.spare !== false && exists(p.spare)) {
      keepSpares(p, spareOf(), [...this.linked].map((ei) => this.m.entries[ei]!), this.rootHash);
    }
    // The spares' moves made durable before chunks are written into them: else a power cut could leave a spare at its
    // old place holding this attempt's bytes, under the stats its record vouches for (its blocks written in place
    // are not ordered after the rename), and a later delta would trust it as the generation it was. Here, while the
    // folders they left are still at their paths (the rest of the spare goes next).
    if (this.opts.durable !== false) for (const d of this.spareMoves) fsyncDir(d);
    this.spareDrop = dropSpareFilesAsync(p);
    return resumable;
  }

  /**
   * On resume, makes what an interrupted attempt left at `dst` fit this plan, which may differ from that attempt's
   * (DIR's files it trusted then may not be trusted now, and the other way round). `whole`: this plan takes the file
   * whole from DIR's version `src`, by a hard link or a copy. Returns what `dst` now holds:
   * - 'link': the hard link to `src` this plan wants;
   * - 'file': a file of this entry only (never a hard link: writing or finishing one would change the file it shares
   *   its inode with, DIR's own) that the journal vouches for, which the plan goes on from; for a whole file, only one
   *   complete and verified (its base journaled, or every chunk);
   * - 'absent': nothing (whatever was there is removed, and the journal's marks for it cleared).
   */
  private reconcile(ei: number, dst: string, whole?: { src: string; link: boolean }): 'absent' | 'link' | 'file' {
    const g0 = this.layout.entryStart[ei]!;
    const g1 = this.layout.entryStart[ei + 1]!;
    // Whatever the records of an interrupted attempt say of a file next/ does not hold as it should, they go with it:
    // left in memory, the journal rewritten after the plan would keep them for bytes no file holds.
    const absent = (): 'absent' => {
      this.based.delete(ei);
      this.spareBased.delete(ei);
      if (this.done.length) this.done.fill(0, g0, g1);
      return 'absent';
    };
    let st: fs.Stats;
    try {
      st = fs.lstatSync(dst);
    } catch {
      return absent();
    }
    if (whole?.link) {
      try {
        const t = fs.lstatSync(whole.src);
        if (t.ino === st.ino && t.dev === st.dev) return 'link';
      } catch {
        /* DIR's file is gone: the link is made again (and fails) as on a fresh plan */
      }
    }
    // Longer than the entry: not a base (made to the entry's size) nor chunks written in place (a spare moved in before
    // its base step, whose chunks were checked at their places): its tail would stay.
    if (st.isFile() && st.nlink === 1 && st.size <= this.m.entries[ei]!.size && this.sizeFitsJournal(ei, st.size)) {
      const journaled = this.done.length > 0 && g1 > g0;
      // Only what the journal vouches for: its base (made to the entry's size) or chunks written in place. A file with
      // no record (a copy cut short before its record, a spare moved in before its base step) may be longer than the
      // entry, and chunk writes alone would leave its tail.
      if (!whole && (this.based.has(ei) || this.spareBased.has(ei) || (journaled && this.done.subarray(g0, g1).includes(1)))) return 'file';
      if (whole && (this.based.has(ei) || (journaled && !this.done.subarray(g0, g1).includes(0)))) return 'file';
    }
    fs.rmSync(dst, { force: true });
    return absent();
  }

  /**
   * Whether a file of `size` bytes in next/ can be what the journal says of entry `ei`: a base is made to the entry's
   * size, and a chunk recorded as written lies inside the file. A file cut short since (a disk that lost writes, a
   * hand in the state folder) holds less than the records say: it is fetched again, never committed as it is (it was,
   * with exit 0, and the next pull found DIR 'unchanged').
   */
  private sizeFitsJournal(ei: number, size: number): boolean {
    if ((this.based.has(ei) || this.spareBased.has(ei)) && size !== this.m.entries[ei]!.size) return false;
    if (this.done.length === 0) return true;
    const L = this.layout;
    for (let g = L.entryStart[ei + 1]! - 1; g >= L.entryStart[ei]!; g--) {
      if (this.done[g] === 1) return L.offset[g]! + L.len[g]! <= size;
    }
    return true;
  }

  /**
   * What entry `ei`'s file in next/ starts as, and the chunks that gives it: what an interrupted attempt left there
   * (its journal says), else its spare when that is usable and holds at least as much of the new version as a copy
   * would, less half the file (a whole-file copy in the kernel is cheaper per byte than rewriting chunks), else a
   * copy of DIR's version (`fromOld`). The base step is queued; a spare is moved into next/ here, since the plan of
   * every chunk of the file depends on it.
   */
  private startOf(
    ei: number,
    dst: string,
    src: string,
    fromOld: StartChunks | undefined,
    spareOf: () => Spare | undefined,
    words: Uint32Array,
  ): StartChunks | undefined {
    const e = this.m.entries[ei]!;
    const L = this.layout;
    const g0 = L.entryStart[ei]!;
    const g1 = L.entryStart[ei + 1]!;
    if (this.spareBased.has(ei)) {
      const se = spareOf()?.entry(e.path);
      if (se) return StartChunks.ofEntry(se);
      // next/ holds a spare whose record is gone: nothing it holds can be trusted; start again from a copy.
      this.spareBased.delete(ei);
      if (this.done.length) this.done.fill(0, g0, g1);
    }
    if (this.based.has(ei) || !fromOld) return fromOld;
    // An interrupted attempt wrote verified chunks into this file without a base (a repair that did not trust DIR's
    // version, which this attempt does): a copy or a spare put in its place now would bury them under older bytes
    // while the journal still counts them done. The file goes on from what it holds.
    if (this.done.length && this.done.subarray(g0, g1).includes(1)) return undefined;
    const inOld = StartChunks.bytesHeld(fromOld.again(), L, words, g0, g1);
    const sf = this.opts.spare !== false && !this.opts.repair ? spareOf()?.usable(e.path) : undefined;
    if (sf) {
      const fromSpare = StartChunks.ofEntry(sf.entry);
      const inSpare = StartChunks.bytesHeld(fromSpare.again(), L, words, g0, g1);
      // Not one that holds (almost) nothing of the new version: every byte of it would be written over.
      if (inSpare >= e.size / 16 && inSpare >= inOld - e.size / 2) {
        fs.renameSync(sf.abs, dst);
        this.spareMoves.add(path.dirname(dst)).add(path.dirname(sf.abs));
        this.bases.add({ ei, from: sf.abs, spare: true, bytes: 0 });
        return fromSpare;
      }
    }
    // A file rewritten whole (a database rebuilt, a file replaced): a copy of DIR's version would be written over
    // again, its disk space asked for twice; the few chunks it still holds are copied from it one by one instead.
    if (inOld < e.size / 16) return undefined;
    this.bases.add({ ei, from: src, spare: false, bytes: e.size });
    return fromOld;
  }

  /**
   * Records the inode and ctime of the files of DIR just hard-linked into next/ (by their index in the applied
   * manifest): the link changed their ctime, so a resumed attempt trusts them by this record (trustOwnLinks). Not
   * flushed: if it is lost, a resumed attempt only fetches those files again.
   */
  private recordOwnLinks(oldIdx: number[]): void {
    if (oldIdx.length === 0) return;
    const stats: Record<number, string> = {};
    for (const oi of oldIdx) {
      try {
        const st = fs.lstatSync(entryPath(this.paths.dir, this.applied!.manifest.entries[oi]!.path), { bigint: true });
        stats[oi] = inodeStamp(st);
      } catch {
        /* gone: it is not trusted then */
      }
    }
    // One JSON line a batch (a file of one object, as written before batches, reads the same). Each starts with a
    // newline too: a record a power cut left without its end must not take the next one down with it.
    fs.appendFileSync(this.paths.nextLinks, `\n${JSON.stringify({ applied: this.applied?.record.rootHash, stats })}\n`, { mode: 0o600 });
  }

  /**
   * Trusts DIR's files that an interrupted attempt hard-linked into next/ by the ctime that link gave them; answers
   * their indices in the applied manifest.
   */
  private trustOwnLinks(): Set<number> {
    const trustedNow = new Set<number>();
    if (!this.applied) return trustedNow;
    try {
      for (const line of fs.readFileSync(this.paths.nextLinks, 'utf8').split('\n')) {
        if (line.trim() === '') continue;
        // A line cut short by the kill is the last one: the files of its batch are fetched again.
        let r: { applied?: string; stats?: Record<string, string> };
        try {
          r = JSON.parse(line) as typeof r;
        } catch {
          continue;
        }
        if (r.applied !== this.applied.record.rootHash || !r.stats) continue;
        for (const [oi, st] of Object.entries(r.stats)) {
          const i = Number(oi);
          if (Number.isInteger(i) && i >= 0 && i < this.applied.stats.length && typeof st === 'string') {
            this.applied.stats[i] = st;
            trustedNow.add(i);
          }
        }
      }
    } catch {
      /* no record: files the interrupted attempt linked are fetched again */
    }
    return trustedNow;
  }

  /** The spare files' deletion, running in the background until the commit. */
  private spareDrop?: Promise<void>;

  /**
   * Chunks the puller holds: every chunk of the applied generation's trusted files (by the applied layout), then the
   * partial sources' chunks, each id at its first place.
   */
  private localChunks(partial: Partial): LocalChunks {
    const oldByPath = new Map<string, number>();
    const unreadable = new Set<number>();
    let oldLayout: Layout | undefined;
    let oldIndex: IdIndex | undefined;
    if (this.applied) {
      const olds = this.applied.manifest.entries;
      oldLayout = layoutOf(this.applied.manifest);
      oldIndex = new IdIndex(oldLayout.id, oldLayout.total);
      for (let i = 0; i < olds.length; i++) {
        const oe = olds[i]!;
        if (oe.kind !== 'file' || !(this.appliedIntact || this.trusted(oe, i))) continue;
        oldByPath.set(oe.path, i);
        // A file the puller may not read back can be neither a base nor a source of chunks (it once failed every later
        // pull, EACCES); unchanged, it is still linked (before, it was fetched again at every delta).
        if ((oe.mode & 0o400) === 0 && !mayRead(entryPath(this.paths.dir, oe.path))) {
          unreadable.add(i);
          continue;
        }
        for (let k = oldLayout.entryStart[i]!; k < oldLayout.entryStart[i + 1]!; k++) oldIndex.add(k);
      }
    }
    // Partial sources exist only in repair, adopt, and after a change between attempts: few enough to keep as objects.
    const partChunks: Array<{ path: string; offset: number }> = [];
    const partIds: bigint[] = [];
    for (const src of partial.values()) {
      for (const c of src.chunks) {
        partChunks.push({ path: src.abs, offset: c.offset });
        partIds.push(c.id);
      }
    }
    const partIndex = new IdIndex(BigUint64Array.from(partIds), partIds.length);
    for (let k = 0; k < partIds.length; k++) partIndex.add(k);
    const dir = this.paths.dir;
    const olds = this.applied?.manifest.entries;
    return {
      oldByPath,
      unreadable,
      oldLayout,
      find(words, g) {
        const k = oldIndex ? oldIndex.findIn(words, g) : -1;
        if (k >= 0) return k;
        const j = partIndex.size > 0 ? partIndex.findIn(words, g) : -1;
        return j >= 0 ? -1 - j : undefined;
      },
      source(ref) {
        if (ref < 0) return partChunks[-1 - ref]!;
        return { path: entryPath(dir, olds![oldLayout!.entry[ref]!]!.path), offset: oldLayout!.offset[ref]! };
      },
    };
  }

  /** The changed files' base copies: queued by the plan, started by transfer() once checkSpace has passed. */
  private readonly bases = new BaseCopies((step) => this.makeBase(step));
  /** Entries whose file in next/ starts from a base (a copy, a spare, an interrupted attempt's): never baseless. */
  private readonly withBase = new Set<number>();
  /** The folders spares were moved out of and into by the plan (flushed before anything is written into them). */
  private readonly spareMoves = new Set<string>();
  /** Per global chunk index: where it comes from (From). */
  private from = new Uint8Array(0);
  /** Per global chunk index: the next occurrence written by the same fetch, or -1 (a chain starts at a GET or PATCH). */
  private nextTarget = new Int32Array(0);
  /** Local copies as flat pairs: global chunk index, LocalRef. */
  private copies: number[] = [];
  private local?: LocalChunks;
  /** Entries with an old version (or a partial local file) to patch against, by entry index. */
  private patchBase = new Map<number, string>();

  private async checkSpace(): Promise<void> {
    let toWrite = 0;
    for (let g = 0; g < this.from.length; g++) if (this.from[g] !== From.NONE) toWrite += this.layout.len[g]!;
    for (const b of this.bases.steps) if (!b.spare) toWrite += this.m.entries[b.ei]!.size;
    const free = () => diskSpace(this.paths.state)?.free ?? Infinity;
    // Sparse files take less than their size: counted again, only when space looks short, without the holes.
    if (toWrite > free()) toWrite -= await this.holeBytes();
    // Unused spare files are being deleted: when space is short, what they free counts.
    if (toWrite > free()) await this.spareDrop;
    // So does what an attempt at another generation left (prev/): its chunks planned as copies are fetched instead
    // (a copy whose source is gone falls back to a fetch), the same bytes written.
    if (toWrite > free() && exists(this.paths.prev)) dropPrev(this.paths);
    const left = free();
    if (toWrite > left) {
      fail(ErrorCodes.DISK_FULL, `disk full: this generation needs ${toWrite} more bytes beside ${this.paths.dir}, ${left} are free`);
    }
  }

  /**
   * Of checkSpace's count, the bytes that take no disk blocks: chunks that are zeros of a whole maximal chunk where the
   * file holds nothing yet (writePack and copyRanges leave a run of zeros of 64 KiB or more a hole, and a run of zeros
   * makes maximal chunks: Holes), and what a base copy skips (copyAround does not write the zero blocks of its source:
   * its unallocated blocks are counted here).
   */
  private async holeBytes(): Promise<number> {
    const L = this.layout;
    let bytes = 0;
    // Bases are made after this check: where their holes will begin comes from their sources now (makeBase's rule).
    const baseFrom = new Map<number, number>();
    for (const b of this.bases.steps) {
      const size = this.m.entries[b.ei]!.size;
      try {
        const st = fs.statSync(b.spare ? entryPath(this.paths.next, this.m.entries[b.ei]!.path) : b.from);
        const held = Math.min(size, st.size);
        baseFrom.set(b.ei, held);
        // A copy writes no more than its source held (counted at the new size), and none of the source's holes.
        if (!b.spare) bytes += size - held + Math.max(0, held - st.blocks * 512);
      } catch {
        /* gone: its copy fails on its own */
      }
    }
    const max = this.m.params.maxSize;
    let zeroId: bigint | undefined;
    for (let g = 0; g < L.total; g++) {
      if (L.len[g] !== max || this.from[g] === From.NONE || this.from[g] === From.PATCH) continue;
      zeroId ??= (await loadHasher()).h64(new Uint8Array(max));
      if (L.id[g] !== zeroId) continue;
      const ei = L.entry[g]!;
      const from = baseFrom.get(ei) ?? this.holesFrom(ei);
      if (from >= 0 && L.offset[g]! >= from) bytes += max;
    }
    return bytes;
  }

  /**
   * Reads what an interrupted attempt recorded as verified in next/: next.verified (flushed data, as of its last
   * checkpoint), then next.unsynced (records written as the data was, up to the kill) when it was written under this
   * page cache life. Those chunks are read back and hashed first: a disk pulled and put back can come back under a
   * reused mount id without the writes it had not flushed. Bases named only there are not trusted (a base cannot be
   * checked by its chunks; the file is then finished from what it verifiably holds).
   */
  private readJournal(hasher: Hasher | undefined): void {
    for (const v of recordsOf(this.paths.nextJournal)) this.applyRecord(v);
    if (!this.life || !hasher) return;
    const L = this.layout;
    const check: number[] = [];
    for (const v of unsyncedRecordsOf(this.paths.nextUnsynced, this.life)) if (!(v & J_BASED) && v < L.total && this.done[v] !== 1) check.push(v);
    // Usually none: an attempt that failed without a kill flushed all it had into next.verified.
    if (check.length === 0) return;
    if (this.opts.durable !== false) {
      // Flushed now, as the journal's data is at each checkpoint; a flush that fails leaves them to be fetched again.
      try {
        syncFilesystem(this.paths.next);
      } catch {
        return;
      }
    }
    check.sort((a, b) => a - b);
    let buf = Buffer.alloc(0);
    let fdEntry = -1;
    let fd = -1;
    const close = () => {
      if (fd >= 0) fs.closeSync(fd);
      fd = -1;
    };
    try {
      for (const g of check) {
        if (L.entry[g] !== fdEntry) {
          close();
          fdEntry = L.entry[g]!;
          try {
            fd = openRegular(this.targetPath(g));
          } catch {
            fd = -1;
          }
        }
        if (fd < 0) continue;
        const len = L.len[g]!;
        if (buf.length < len) buf = Buffer.allocUnsafe(len);
        let got = 0;
        try {
          got = fs.readSync(fd, buf, 0, len, L.offset[g]!);
        } catch {
          got = -1;
        }
        if (got === len && hasher.h64(buf.subarray(0, len)) === L.id[g]) this.applyRecord(g);
      }
    } finally {
      close();
    }
  }

  /** Marks a journal record's occurrence verified, or its entry's file as holding its base. */
  private applyRecord(v: number): void {
    if (v & J_BASED) (v & J_SPARE ? this.spareBased : this.based).add(v & J_ENTRY);
    else if (v < this.layout.total) {
      if (this.done.length === 0) this.done = new Uint8Array(this.layout.total);
      this.done[v] = 1;
    }
  }

  /**
   * After the plan: next.verified is rewritten from what the plan kept of an interrupted attempt's records (the plan
   * drops those of files it removes, and they must not come back at a later resume, nor those only next.unsynced
   * held be lost by a power cut), and next.unsynced starts empty under this attempt's page cache life. Records are
   * written to it as soon as their data is, so that a kill -9 costs no verified chunk (next.verified alone, appended
   * once a second after a flush, would cost up to that second's). Not kept where the life cannot be named.
   */
  private settleJournal(resumed: boolean): void {
    const p = this.paths;
    if (resumed) {
      // In a typed array (a large resumed seed has millions of records).
      let n = this.based.size + this.spareBased.size;
      for (let g = 0; g < this.done.length; g++) n += this.done[g]!;
      const records = new Uint32Array(n);
      let o = 0;
      for (let g = 0; g < this.done.length; g++) if (this.done[g] === 1) records[o++] = g;
      for (const ei of this.based) records[o++] = (J_BASED | ei) >>> 0;
      for (const ei of this.spareBased) records[o++] = (J_BASED | J_SPARE | ei) >>> 0;
      // A disk too full for this fails the pull here rather than at checkSpace (next.verified is left as it was).
      writeFileDurable(p.nextJournal, encodeJournalBatch(records));
    }
    this.closeUnsynced();
    try {
      if (!this.life) return void fs.rmSync(p.nextUnsynced, { force: true });
      fs.writeFileSync(p.nextUnsynced, this.life, { mode: 0o600 });
      this.unsyncedFd = fs.openSync(p.nextUnsynced, 'a');
    } catch {
      // Only a speed-up for the next attempt: next.verified still records everything.
      this.dropUnsynced();
    }
  }

  private closeUnsynced(): void {
    if (this.unsyncedFd === undefined) return;
    try {
      fs.closeSync(this.unsyncedFd);
    } catch {
      /* nothing to keep */
    }
    this.unsyncedFd = undefined;
  }

  /** Stops keeping next.unsynced (its records would be cut or misaligned); best effort. */
  private dropUnsynced(): void {
    this.closeUnsynced();
    try {
      fs.rmSync(this.paths.nextUnsynced, { force: true });
    } catch {
      /* a stale file is checked chunk by chunk at the next resume */
    }
  }

  /** Records occurrences (or bases) whose data is written in next/: in next.unsynced now, in next.verified at the next checkpoint. */
  private journal(values: number[]): void {
    for (const v of values) this.journalBuf.push(v);
    if (this.unsyncedFd === undefined || values.length === 0) return;
    const b = recordBytes(values);
    let written = 0;
    try {
      written = fs.writeSync(this.unsyncedFd, b);
    } catch {
      written = -1;
    }
    // A full disk, say: records written in part would misalign the ones after them; it is no longer kept.
    if (written !== b.length) this.dropUnsynced();
  }

  /**
   * Appends journal records. With durability on, the data they claim is flushed first (in the background, one
   * checkpoint at a time) so that the journal never claims bytes a power loss could lose; kill -9 alone loses nothing
   * the kernel holds.
   */
  private async flushJournal(force = false): Promise<void> {
    const now = performance.now();
    if (this.checkpointError) throw this.checkpointError;
    if (!force && (this.syncing || (now - this.lastCheckpoint < 1000 && this.journalBuf.length < 65536))) return;
    await this.syncing;
    if (this.checkpointError) throw this.checkpointError;
    this.lastCheckpoint = now;
    if (this.journalBuf.length === 0) return;
    const vals = this.journalBuf;
    this.journalBuf = [];
    const append = () => {
      fs.appendFileSync(this.paths.nextJournal, encodeJournalBatch(vals), { mode: 0o600 });
      // For the fault suite: the point where a base copy is on record and its file's chunks may not be written yet.
      if (this.opts.onPoint && vals.some((v) => (v & J_BASED) !== 0)) this.opts.onPoint('based');
    };
    if (this.opts.durable === false) return append();
    const checkpoint = syncFilesystemAsync(this.paths.next).then(append);
    if (force) return checkpoint;
    // Nobody awaits a background checkpoint at once: its failure is kept for the next flush to throw (left as a
    // rejected promise it would end the process as an unhandled rejection).
    this.syncing = checkpoint.catch((err) => void (this.checkpointError ??= err)).finally(() => (this.syncing = undefined));
  }

  private syncing?: Promise<void>;
  private checkpointError?: unknown;

  /**
   * Where a job writes the fetched chunks `firsts` (first occurrences, as GET or PATCH asks for them): each occurrence
   * of each, following the plan's chains, as (chunk index in the job, file, offset).
   */
  private targetsOf(firsts: ArrayLike<number>): { paths: string[]; entries: number[]; tItem: Uint32Array; tPath: Uint32Array; tOffset: Float64Array } {
    const L = this.layout;
    const paths: string[] = [];
    const entries: number[] = [];
    const pathIdx = new Map<number, number>();
    const tItem: number[] = [];
    const tPath: number[] = [];
    const tOffset: number[] = [];
    for (let i = 0; i < firsts.length; i++) {
      for (let g = firsts[i]!; g >= 0; g = this.nextTarget[g]!) {
        const ei = L.entry[g]!;
        let pi = pathIdx.get(ei);
        if (pi === undefined) {
          pi = paths.push(this.targetPath(g)) - 1;
          entries.push(ei);
          pathIdx.set(ei, pi);
        }
        tItem.push(i);
        tPath.push(pi);
        tOffset.push(L.offset[g]!);
      }
    }
    return { paths, entries, tItem: Uint32Array.from(tItem), tPath: Uint32Array.from(tPath), tOffset: Float64Array.from(tOffset) };
  }

  /**
   * Final modes and mtimes for the files a pack job completes: those whose every remaining occurrence it writes (for
   * small files, their one chunk). The job finishes them through its open descriptors.
   */
  private finishesOf(t: { entries: number[]; tPath: Uint32Array }): { finishModes: Int32Array; finishMtimes: Float64Array } {
    const counts = new Int32Array(t.entries.length);
    for (const pi of t.tPath) counts[pi]!++;
    const finishModes = new Int32Array(t.entries.length).fill(-1);
    const finishMtimes = new Float64Array(t.entries.length);
    t.entries.forEach((ei, pi) => {
      if (counts[pi] !== this.remaining[ei]) return;
      const e = this.m.entries[ei]!;
      finishModes[pi] = appliedMode(e.mode);
      finishMtimes[pi] = utimesSeconds(e.mtimeNs);
    });
    return { finishModes, finishMtimes };
  }

  /** Every occurrence written by fetching `firsts`. */
  private occurrencesOf(firsts: ArrayLike<number>): number[] {
    const gs: number[] = [];
    for (let i = 0; i < firsts.length; i++) for (let g = firsts[i]!; g >= 0; g = this.nextTarget[g]!) gs.push(g);
    return gs;
  }

  /** Whether `st` is DIR's file of the applied generation's entry `oi` as committed: size, mtime, inode and ctime. */
  private asApplied(st: fs.BigIntStats, oi: number): boolean {
    const old = this.applied!.manifest.entries[oi]!;
    return asCommitted(st, old.size, old.mtimeNs, this.applied!.stats[oi] || null);
  }

  /** Puts one changed file's base in place in next/ (step 1 of transfer(); see BaseCopies). */
  private async makeBase({ ei, from, spare }: BaseStep): Promise<void> {
    const e = this.m.entries[ei]!;
    const dst = entryPath(this.paths.next, e.path);
    // A spare is already in place (plan moved it); a copy is made now. A reflink where the filesystem has them (btrfs,
    // XFS: no bytes copied; only the chunks written later take new blocks), else a copy written to the disk directly
    // except for the pages the chunks will be written into (copyAround).
    if (!spare) await copyAround(from, dst, this.rewrittenOf(ei), this.opts.durable !== false, e.size);
    const had = (await fs.promises.stat(dst)).size;
    // DIR's file (the applied entry of its path the plan trusted) was trusted by its stats when the pull began, and the
    // plan counts the copy's chunks as held without reading them: a write to it since (or during the copy) changed its
    // ctime, and the copy cannot be trusted.
    const oi = spare ? undefined : this.local!.oldByPath.get(e.path);
    if (oi !== undefined && !this.asApplied(await fs.promises.lstat(from, { bigint: true }), oi)) {
      throw new SnapferryError(ErrorCodes.STATE, `${e.path} was changed in ${this.paths.dir} during the pull (snapferry's copies are not to be written to); nothing was committed: pull again`, { retryable: true });
    }
    // The source's mode may be read-only: the file is ours to patch until it is finished.
    await fs.promises.chmod(dst, 0o600);
    // What the copy wrote is the old file's size, up to the new one's (an empty file grown to 5 MB counted 5 MB here
    // and 5 MB again as the chunks written into it).
    const copied = spare ? 0 : Math.min(e.size, had);
    await fs.promises.truncate(dst, e.size);
    // Past what the copy or the spare held, the file holds nothing: zeros the file grew by are left holes there.
    this.holesFromOf.set(ei, Math.min(e.size, had));
    this.opts.onPoint?.('base-copied');
    if (spare) this.stats.spares++;
    else this.stats.written += copied;
    this.journal([(J_BASED | (spare ? J_SPARE : 0) | ei) >>> 0]);
    this.bytesDone += this.creditOnBase.get(ei) ?? 0;
    this.creditOnBase.delete(ei);
    this.progress('transfer');
  }
  /** Entries with a base or an earlier attempt's file: the offset past which the file in next/ holds nothing yet. */
  private readonly holesFromOf = new Map<number, number>();

  /** Where entry ei's file in next/ may keep runs of zeros as holes (Holes.from): 0 for a new file, -1 where unknown. */
  private holesFrom(ei: number): number {
    return this.baseless(ei) ? 0 : (this.holesFromOf.get(ei) ?? -1);
  }

  /** The Holes of a job's target paths, one entry index per path. */
  private holesOf(entries: ArrayLike<number>): Holes {
    return {
      from: Float64Array.from(entries, (ei) => this.holesFrom(ei)),
      size: Float64Array.from(entries, (ei) => this.m.entries[ei]!.size),
    };
  }

  /** Per changed file with a base copy still to make: the bytes of its chunks the copy brings (see makeBase). */
  private readonly creditOnBase = new Map<number, number>();

  /**
   * Whether entry `ei`'s file in next/ is written anew: no base copy, spare or earlier attempt's file under it, and
   * every byte of it still to be written.
   */
  private baseless(ei: number): boolean {
    // Per entry: 0 not yet known, 1 baseless, 2 not (a byte each: a seed asks for every file).
    const known = (this.baselessOf ??= new Uint8Array(this.m.entries.length));
    if (known[ei] === 0 && this.withBase.has(ei)) known[ei] = 2;
    if (known[ei] === 0) {
      const L = this.layout;
      let g = L.entryStart[ei]!;
      while (g < L.entryStart[ei + 1]! && this.from[g] !== From.NONE) g++;
      known[ei] = g === L.entryStart[ei + 1]! ? 1 : 2;
    }
    return known[ei] === 1;
  }
  private baselessOf?: Uint8Array;

  /** The byte ranges of entry `ei`'s file that its chunks will be written to (flat [start, end) pairs, merged, in order). */
  private rewrittenOf(ei: number): number[] {
    const L = this.layout;
    const ranges: number[] = [];
    for (let g = L.entryStart[ei]!; g < L.entryStart[ei + 1]!; g++) {
      if (this.from[g] === From.NONE) continue;
      const s = L.offset[g]!;
      if (ranges.length > 0 && ranges[ranges.length - 1] === s) ranges[ranges.length - 1] = s + L.len[g]!;
      else ranges.push(s, s + L.len[g]!);
    }
    return ranges;
  }

  /** Waits for the base copies of every file that chunks `firsts` (and their duplicates) are written to. */
  private async basesOf(firsts: number[]): Promise<void> {
    const waits = new Set<Promise<void>>();
    for (const g of this.occurrencesOf(firsts)) {
      const p = this.bases.readyOf(this.layout.entry[g]!);
      if (p) waits.add(p);
    }
    await Promise.all(waits);
  }

  /** Path in next/ of the entry holding occurrence g. */
  private targetPath(g: number): string {
    return entryPath(this.paths.next, this.m.entries[this.layout.entry[g]!]!.path);
  }

  /** Counts a written occurrence; a file whose last chunk landed is queued to be finished (mode, mtime) on a worker. */
  private occurrenceDone(g: number): void {
    const ei = this.layout.entry[g]!;
    this.remaining[ei]!--;
    this.bytesDone += this.layout.len[g]!;
    // A file a pack job completed was finished there already.
    if (this.remaining[ei] === 0 && !this.finishedStats.has(ei)) {
      this.toFinish.push(ei);
      if (this.toFinish.length >= 256) this.finishBatch();
    }
  }

  private toFinish: number[] = [];
  private finishing: Array<Promise<void>> = [];
  /** inode:ctime of files finished in next/, by entry index. */
  private finishedStats = new Map<number, string>();

  /** Sends the queued finished files to a worker for their final mode and mtime. */
  private finishBatch(): void {
    const batch = this.toFinish;
    this.toFinish = [];
    if (batch.length === 0) return;
    const job: FinishFilesJob = {
      kind: 'finishFiles',
      paths: batch.map((ei) => entryPath(this.paths.next, this.m.entries[ei]!.path)),
      modes: Uint32Array.from(batch.map((ei) => appliedMode(this.m.entries[ei]!.mode))),
      mtimes: Float64Array.from(batch.map((ei) => utimesSeconds(this.m.entries[ei]!.mtimeNs))),
    };
    this.finishing.push(
      this.pool!.run<FinishFilesResult>(job).then((r) => {
        batch.forEach((ei, i) => this.finishedStats.set(ei, r.stats[i]!));
      }),
    );
  }

  /** Reads every message of the session and routes answers to their requests. */
  private startReader(): void {
    const s = this.session!;
    const fault = (err: SnapferryError) => {
      this.readerError ??= err;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    s.channel.onClose = fault;
    // A site or link that goes silent while requests are pending is given up on (retryable): never a hang.
    const timeoutMs = this.opts.timeoutMs ?? 60_000;
    let lastHeard = performance.now();
    // Bytes of PONGs, which never count (however many a site sends), and the socket's count when last heard from.
    let pongBytes = 0;
    let heardAt = s.channel.progressBytes;
    // A hold on reads (--bwlimit) counts only if the last message was not a PONG: PONGs put the bucket in debt too.
    let lastWasPong = false;
    const watchdog = setInterval(() => {
      // An answer still on its way counts (a 512 KiB pack over a 7 KB/s link takes 75 s), a trickle does not.
      if (s.channel.alive(heardAt + pongBytes, !lastWasPong)) {
        heardAt = s.channel.progressBytes - pongBytes;
        lastHeard = performance.now();
      }
      if (this.pending.size > 0 && performance.now() - lastHeard > timeoutMs) {
        const e = new SnapferryError(ErrorCodes.TIMEOUT, `the site sent nothing for ${Math.round(timeoutMs / 1000)} s`, { retryable: true });
        fault(e);
        s.channel.abort(e);
      }
    }, Math.min(1000, timeoutMs / 2));
    watchdog.unref();
    s.channel.ws.once('close', () => clearInterval(watchdog));
    s.channel.onMessage = (frame) => {
      if (this.readerError) return;
      noteGarbage(frame.length * 2);
      let msg: Buffer;
      try {
        msg = s.open(frame);
      } catch (err) {
        fault(toSnapferryError(err));
        s.channel.abort(toSnapferryError(err));
        return;
      }
      // Only what answers (or refuses) counts as hearing from the site: a PONG nobody asked for, sent every half second,
      // kept a site that answered nothing alive for ever.
      lastWasPong = msg[0] === MsgType.PONG;
      if (!lastWasPong) lastHeard = performance.now();
      else pongBytes += frame.length + WS_HEADER_MAX;
      try {
        this.route(msg, fault);
      } catch (err) {
        // A malformed answer (this runs in the socket's message handler: a throw here would end the process).
        const e = toSnapferryError(err);
        fault(e);
        s.channel.abort(e);
      }
    };
  }

  /** Routes one opened message of the site to the request it answers. */
  private route(msg: Buffer, fault: (err: SnapferryError) => void): void {
    const type = msg[0];
    if (type === MsgType.DATA || type === MsgType.PATCH || type === MsgType.STALE) {
      // Decoded whole before the request leaves `pending`: a throw after that would leave it unanswered for ever.
      const stale = type === MsgType.STALE ? decodeJson<{ reqId?: unknown; path?: unknown }>(msg) : undefined;
      const reqId = stale ? numberOf(stale.reqId) : msg.length >= 5 ? msg.readUInt32BE(1) : -1;
      const p = this.pending.get(reqId);
      if (!p) return fault(new SnapferryError(ErrorCodes.PROTOCOL, 'answer to a request we did not make'));
      if (type !== MsgType.STALE && type !== p.answer) return fault(new SnapferryError(ErrorCodes.PROTOCOL, `answer of type ${type} to a request for type ${p.answer}`));
      this.pending.delete(reqId);
      if (stale) {
        const path_ = printable(textOf(stale.path ?? '?')).slice(0, 300);
        p.reject(new SnapferryError(ErrorCodes.STALE_SOURCE, `${path_} changed at the site`, { retryable: true }));
      } else p.resolve(msg);
    } else if (type === MsgType.ERROR) {
      const e = decodeJson<{ code: string; message: unknown }>(msg);
      fault(new SnapferryError((Object.values(ErrorCodes) as string[]).includes(e.code) ? (e.code as never) : ErrorCodes.PROTOCOL, printable(textOf(e.message)).slice(0, 300)));
    } else if (type !== MsgType.PONG) {
      fault(new SnapferryError(ErrorCodes.PROTOCOL, `unexpected message type ${type}`));
    }
  }

  private request(answer: number, build: (reqId: number) => Buffer): Promise<Buffer> {
    if (this.readerError) return Promise.reject(this.readerError);
    const reqId = this.nextReq++;
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(reqId, { answer, resolve, reject });
      this.session!.send(build(reqId)).catch(reject);
    });
  }

  /** Local work first (base copies, local chunk copies), then patches and packs from the site, window-bounded. */
  private async transfer(): Promise<void> {
    // 1. Base copies: a changed file starts as its old version (copyAround), before any chunk lands on it. They
    // run while the patches are asked for (signatures come from the old files, not the copies); a patch waits only
    // for the copies of the files it writes to (basesOf).
    const allBases = this.bases.done();
    allBases.catch(() => undefined); // awaited below; a failure also fails the patches waiting for it
    // 2. From the site: block patches for chunks of files that existed.
    const L = this.layout;
    // Under --bwlimit, about a second of the rate (raw bytes, so less on the wire) is asked for at a time: what is in
    // flight comes at the link's speed into the socket buffers, however slowly it is then read.
    const windowBytes = this.opts.windowBytes ?? (this.opts.bwlimit ? Math.min(16 << 20, Math.max(this.packBytes, this.opts.bwlimit)) : 16 << 20);
    const gate = new ByteGate(windowBytes, 32); // 32 requests: the site refuses more than 64 per session
    // Settled tasks leave the set, so it stays as small as the window.
    const tasks = new Set<Promise<void>>();
    let failure: unknown;
    const track = (p: Promise<void>) => {
      const t: Promise<void> = p.catch((err) => void (failure ??= err)).finally(() => tasks.delete(t));
      tasks.add(t);
    };
    // Read ahead what the patch jobs will read and the pages they will partly overwrite (see patchReadAhead).
    let patched = false;
    const readAhead = prefetch(this.patchReadAhead(), () => patched || failure !== undefined, 16, { probe: 4 });
    try {
      for (const batch of patchBatchesOf(this.from, L, this.patchBase, this.packBytes)) {
        if (failure || this.readerError) break;
        await gate.take(batch.bytes);
        track(this.patchRuns(batch.runs).finally(() => gate.give(batch.bytes)));
      }
      // Patches that fell back to whole chunks became GETs; wait for them before packing.
      await Promise.all(tasks);
    } finally {
      patched = true;
      await readAhead;
    }
    await allBases;
    if (failure) throw failure;
    // 3. Chunks the puller already holds elsewhere (into files whose base copies are done).
    await this.copyLocal();
    // 4. Packs from the site for the rest.
    for (const pack of lanePacksOf(this.from, L, this.packBytes, this.pool!.size)) {
      if (failure || this.readerError) break;
      await gate.take(pack.bytes);
      track(this.getPack(pack.firsts, pack.lane).finally(() => gate.give(pack.bytes)));
    }
    await Promise.all(tasks);
    if (failure) throw failure;
    if (this.readerError) throw this.readerError;
    for (let ei = 0; ei < this.remaining.length; ei++) {
      if (this.remaining[ei]! > 0) fail(ErrorCodes.INTERNAL, `file ${this.m.entries[ei]!.path} incomplete after transfer`);
    }
  }

  /**
   * The ranges patch jobs into spares will touch, in the order they are asked for: the old bytes each run's signatures
   * are made from (DIR's file, out of the page cache after direct writes or hours), and the whole pages of the spare
   * the run will be written into (written chunk by chunk, each edge page would otherwise be read from the disk first,
   * by a worker waiting for it). Not for files with a base copy: copyAround leaves the pages to be written cached, and
   * reads ahead would take the threads and the disk the copies need (a first delta's transfer took 1.95-2.18 s by
   * hand with them against 1.63 s without).
   */
  private *patchReadAhead(): Generator<FileRange> {
    if (this.patchBase.size === 0) return;
    const L = this.layout;
    const spares = new Set(this.bases.steps.filter((s) => s.spare).map((s) => s.ei));
    for (const { run, bytes } of patchRunsOf(this.from, L, this.packBytes)) {
      const ei = L.entry[run[0]!]!;
      const offset = L.offset[run[0]!]!;
      if (!spares.has(ei)) continue;
      yield { path: this.patchBase.get(ei)!, offset, length: bytes };
      const first = Math.floor(offset / BLOCK) * BLOCK;
      yield { path: this.targetPath(run[0]!), offset: first, length: Math.ceil((offset + bytes) / BLOCK) * BLOCK - first };
    }
  }

  /** Copies the planned local chunks in batches; a copy that fails verification is fetched instead. */
  private async copyLocal(): Promise<void> {
    const L = this.layout;
    const pairs = this.copies;
    for (let i = 0; i < pairs.length; i += 1024) {
      const n = Math.min(512, (pairs.length - i) / 2);
      const srcPaths: string[] = [];
      const srcIndex = new Map<string, number>();
      const job: CopyRangesJob = {
        kind: 'copyRanges',
        srcPaths,
        srcIdx: new Uint32Array(n),
        srcOffsets: new Float64Array(n),
        lens: new Uint32Array(n),
        ids: new BigUint64Array(n),
        dstPaths: [],
        dstIdx: new Uint32Array(n),
        dstOffsets: new Float64Array(n),
      };
      const dstEntries = new Uint32Array(n);
      for (let k = 0; k < n; k++) {
        const g = pairs[i + 2 * k]!;
        const src = this.local!.source(pairs[i + 2 * k + 1]!);
        let si = srcIndex.get(src.path);
        if (si === undefined) {
          si = srcPaths.length;
          srcPaths.push(src.path);
          srcIndex.set(src.path, si);
        }
        job.srcIdx[k] = si;
        job.srcOffsets[k] = src.offset;
        job.lens[k] = L.len[g]!;
        job.ids[k] = L.id[g]!;
        job.dstIdx[k] = job.dstPaths.push(this.targetPath(g)) - 1;
        job.dstOffsets[k] = L.offset[g]!;
        dstEntries[k] = L.entry[g]!;
      }
      job.holes = this.holesOf(dstEntries);
      const r = await this.pool!.run<CopyRangesResult>(job);
      const failed = new Set(r.failed);
      const ok: number[] = [];
      for (let k = 0; k < n; k++) {
        const g = pairs[i + 2 * k]!;
        // A failed copy is fetched whole, for this occurrence alone (its chain is just itself).
        if (failed.has(k)) this.from[g] = From.GET;
        else {
          ok.push(g);
          this.stats.reused++;
          this.stats.written += L.len[g]!;
        }
      }
      this.journal(ok);
      for (const g of ok) this.occurrenceDone(g);
    }
    this.copies = [];
    this.local = undefined;
  }

  /** Fetches one pack and has worker `lane` verify it and write it (see lanePacksOf). */
  private async getPack(firsts: number[], lane: number): Promise<void> {
    const L = this.layout;
    const ranges: Array<[number, number]> = [];
    for (const g of firsts) {
      const last = ranges[ranges.length - 1];
      if (last && last[1] === g) last[1]++;
      else ranges.push([g, g + 1]);
    }
    const msg = await this.request(MsgType.DATA, (reqId) => encodeGet({ reqId, ranges }));
    const data = decodeData(msg);
    const lens = Uint32Array.from(firsts, (g) => L.len[g]!);
    const ids = new BigUint64Array(firsts.length);
    firsts.forEach((g, k) => (ids[k] = L.id[g]!));
    // The decrypted frame is moved to the worker whole when it owns its memory, copied otherwise.
    const owns = msg.byteOffset === 0 && msg.byteLength === msg.buffer.byteLength;
    const { entries, ...targets } = this.targetsOf(firsts);
    const job: WritePackJob = {
      kind: 'writePack',
      payload: owns ? msg : Buffer.from(data.payload),
      payloadOffset: owns ? data.payload.byteOffset - msg.byteOffset : 0,
      compressed: data.compressed,
      rawLen: data.rawLen,
      lens,
      ids,
      ...targets,
      ...this.finishesOf({ entries, tPath: targets.tPath }),
      holes: this.holesOf(entries),
      // Around the page cache only for a pull that flushes before its commit (see WritePackJob.direct).
      direct: this.opts.durable !== false,
    };
    const r = await this.pool!.run<WritePackResult>(job, true, lane);
    r.finished?.forEach((st, pi) => st && this.finishedStats.set(entries[pi]!, st));
    this.stats.written += r.written;
    this.stats.fetched += firsts.length;
    const gs = this.occurrencesOf(firsts);
    this.journal(gs);
    for (const g of gs) this.occurrenceDone(g);
    await this.flushJournal();
    this.progress('transfer');
  }

  /**
   * Fetches runs of consecutive changed chunks (each within one file) as block patches against the old bytes at the
   * same offsets: one signature job, one request and one apply job for the whole batch of runs. A chunk the patch
   * cannot rebuild becomes a GET.
   */
  private async patchRuns(runs: number[][]): Promise<void> {
    const L = this.layout;
    const shaped = runs.map((run) => {
      const ids = new BigUint64Array(run.length);
      run.forEach((g, k) => (ids[k] = L.id[g]!));
      return { path: this.patchBase.get(L.entry[run[0]!]!)!, offset: L.offset[run[0]!]!, lens: Uint32Array.from(run, (g) => L.len[g]!), ids };
    });
    const ranges = shaped.map((r) => ({ path: r.path, offset: r.offset, length: r.lens.reduce((a, b) => a + b, 0) }));
    const sigs = await this.pool!.run<Uint32Array[]>({ kind: 'blockSigs', ranges, blockSize: PATCH_BLOCK });
    const msg = await this.request(MsgType.PATCH, (reqId) =>
      encodePatchGet({ reqId, blockSize: PATCH_BLOCK, runs: runs.map((run, k) => ({ chunk: run[0]!, count: run.length, sigs: sigs[k]! })) }),
    );
    const patch = decodePatch(msg);
    if (patch.bitmaps.length !== runs.length) fail(ErrorCodes.PROTOCOL, 'PATCH answers another number of runs');
    const all = runs.flat();
    await this.basesOf(all);
    const r = await this.pool!.run<ApplyPatchResult>({
      kind: 'applyPatch',
      runs: shaped.map((x, k) => ({ ...x, bitmap: Buffer.from(patch.bitmaps[k]!) })),
      blockSize: PATCH_BLOCK,
      payload: Buffer.from(patch.payload),
      compressed: patch.compressed,
      rawLen: patch.rawLen,
      ...dropEntries(this.targetsOf(all)),
    });
    const failed = new Set(r.failed);
    const ok: number[] = [];
    all.forEach((g, i) => {
      if (failed.has(i)) this.from[g] = From.GET;
      else {
        this.stats.patched++;
        this.stats.fetched++;
        ok.push(g);
      }
    });
    const gs = this.occurrencesOf(ok);
    this.stats.written += r.written;
    this.journal(gs);
    for (const g of gs) this.occurrenceDone(g);
    await this.flushJournal();
    this.progress('transfer');
  }

  /**
   * Final modes and mtimes: files (most were finished on the workers as their last chunk landed; the rest now, except
   * hard links, which already have them and must not be touched: they share the old generation's inode), then
   * symlinks, then folders deepest first (a read-only folder is closed last).
   */
  private async finishTree(): Promise<void> {
    const entries = this.m.entries;
    const finished = new Set(this.finishedStats.keys());
    for (const ei of this.toFinish) finished.add(ei);
    for (let ei = 0; ei < entries.length; ei++) {
      const e = entries[ei]!;
      if (e.kind !== 'file' || finished.has(ei) || this.linked.has(ei)) continue;
      this.toFinish.push(ei);
      if (this.toFinish.length >= 256) this.finishBatch();
    }
    this.finishBatch();
    await Promise.all(this.finishing);
    for (const e of entries) {
      if (e.kind !== 'symlink') continue;
      const t = utimesArg(utimesSeconds(e.mtimeNs));
      fs.lutimesSync(entryPath(this.paths.next, e.path), t, t);
    }
    for (let i = entries.length - 1; i >= 0; i--) {
      const e = entries[i]!;
      if (e.kind !== 'dir') continue;
      const p = entryPath(this.paths.next, e.path);
      fs.chmodSync(p, appliedMode(e.mode));
      const t = utimesArg(utimesSeconds(e.mtimeNs));
      fs.utimesSync(p, t, t);
    }
    // The folder itself is the branch's, not the company's (its mode is not carried): a delta keeps what the
    // operator gave DIR (a mode closed to others, a readers' group), a seed makes it as mkdir would. Before, each
    // delta put DIR back to 0777 less the umask and the puller's group.
    let dirStat: fs.Stats | undefined;
    try {
      dirStat = fs.statSync(this.paths.dir);
    } catch {
      /* a seed */
    }
    if (dirStat?.isDirectory()) {
      try {
        fs.chownSync(this.paths.next, -1, dirStat.gid);
      } catch {
        /* a group the puller is not in: its own */
      }
      fs.chmodSync(this.paths.next, dirStat.mode & 0o7777);
    } else fs.chmodSync(this.paths.next, 0o777 & ~process.umask());
  }

  /** Entries of next/ that are hard links to the old generation. */
  private linked = new Set<number>();
}

/**
 * Refuses to put company `company` into a DIR whose record names another: a mistyped name would otherwise replace
 * one company's copy with another's (the record's own word, before it is checked: a guard, not a proof).
 */
function checkSameCompany(paths: StatePaths, company: string): void {
  // No record: a seed, or a record repair re-establishes.
  const held = recordSays(paths, 'company');
  if (held !== undefined && held !== company) {
    fail(ErrorCodes.DIR_FOREIGN, `${paths.dir} holds company ${JSON.stringify(printable(held).slice(0, 100))}, not ${JSON.stringify(company)}; refusing to replace it (pull ${JSON.stringify(company)} into another folder)`);
  }
}

/** The folder entries of `entries` that are not folders under `root` now (missing, or a link, a file...). */
function nonFolders(root: string, entries: readonly Entry[]): Set<string> {
  const out = new Set<string>();
  for (const e of entries) {
    if (e.kind !== 'dir') continue;
    let folder = false;
    try {
      folder = fs.lstatSync(entryPath(root, e.path)).isDirectory();
    } catch {
      folder = false;
    }
    if (!folder) out.add(e.path);
  }
  return out;
}

/** Whether `p` lies under one of `folders` (relative paths). */
function underAny(folders: ReadonlySet<string>, p: string): boolean {
  if (folders.size === 0) return false;
  for (let i = p.indexOf('/'); i > 0; i = p.indexOf('/', i + 1)) if (folders.has(p.slice(0, i))) return true;
  return false;
}

/** Targets as a job takes them (the entry of each path stays here). */
function dropEntries<T extends { entries: number[] }>(t: T): Omit<T, 'entries'> {
  const { entries: _entries, ...rest } = t;
  return rest;
}

/** The chunks a file in next/ starts with (offsets and id words, [k0, k1)), walked in offset order beside the target's. */
class StartChunks {
  private k: number;
  constructor(
    private readonly offset: ArrayLike<number>,
    private readonly lens: ArrayLike<number>,
    private readonly words: Uint32Array,
    private readonly k0: number,
    private readonly k1: number,
  ) {
    this.k = k0;
  }

  /** The chunks of a manifest entry. */
  static ofEntry(e: Entry): StartChunks {
    const lens = e.lens!; // read once: a PackedEntry makes a view at each read
    const offset = new Float64Array(lens.length);
    for (let i = 1; i < offset.length; i++) offset[i] = offset[i - 1]! + lens[i - 1]!;
    return new StartChunks(offset, lens, idWords(e.ids!), 0, offset.length);
  }

  /** Bytes of target chunks [g0, g1) that `c` holds in place. */
  static bytesHeld(c: StartChunks, L: Layout, words: Uint32Array, g0: number, g1: number): number {
    let bytes = 0;
    for (let g = g0; g < g1; g++) if (c.holds(L.offset[g]!, L.len[g]!, words, g)) bytes += L.len[g]!;
    return bytes;
  }

  /** A fresh walk over the same chunks. */
  again(): StartChunks {
    return new StartChunks(this.offset, this.lens, this.words, this.k0, this.k1);
  }

  /**
   * Whether target chunk g (at `off`, `len` bytes, id in `words`) is here at the same offset; calls come in offset
   * order. The length is compared too: two chunks of one id and different lengths (a crafted xxh64 collision) are
   * not the same bytes.
   */
  holds(off: number, len: number, words: Uint32Array, g: number): boolean {
    while (this.k < this.k1 && this.offset[this.k]! < off) this.k++;
    const k = this.k;
    return k < this.k1 && this.offset[k] === off && this.lens[k] === len && this.words[k * 2] === words[g * 2] && this.words[k * 2 + 1] === words[g * 2 + 1];
  }
}

/** Journal records as bytes (little-endian uint32 each). */
function recordBytes(values: readonly number[]): Buffer {
  const b = Buffer.allocUnsafe(values.length * 4);
  for (let i = 0; i < values.length; i++) b.writeUInt32LE(values[i]! >>> 0, i * 4);
  return b;
}

/** A journal file's records (journalfile.ts: those of its batches that check), none when it cannot be read. */
function recordsOf(file: string): Uint32Array {
  try {
    return decodeJournal(fs.readFileSync(file));
  } catch {
    return new Uint32Array(0);
  }
}

/**
 * next.unsynced's records (bare uint32s, each checked against its chunk before it counts) after `header`, none when
 * the file does not begin with it or cannot be read; a record cut short by a kill is left out.
 */
function unsyncedRecordsOf(file: string, header: Buffer): Uint32Array {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch {
    return new Uint32Array(0);
  }
  const skip = header.length;
  if (!buf.subarray(0, skip).equals(header)) return new Uint32Array(0);
  const n = Math.floor((buf.length - skip) / 4);
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = buf.readUInt32LE(skip + i * 4);
  return out;
}

/**
 * What DIR's record says of `field`, if there is a readable record and the field is a string: its word, unchecked
 * (readApplied checks the record against the manifest).
 */
function recordSays(paths: StatePaths, field: 'rootHash' | 'company'): string | undefined {
  try {
    const v = (JSON.parse(fs.readFileSync(paths.appliedJson, 'utf8')) as Record<string, unknown>)[field];
    return typeof v === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The packs of packsOf, in one lane per worker thread: a pack goes to the lane of the file its first chunk is in, files
 * are dealt to the lanes largest first to the lightest, and the lanes take turns (the one with the fewest bytes asked
 * so far first). Why: a write takes the file's inode lock, so one thread should write a file (two spin on the lock),
 * and with packs in plain chunk order the window was in one large file at a time: one worker did 80 % of a seed while
 * the other waited, on a machine where a new page costs ~2 s/GiB to write (see bench/pagecache.ts). Only the order
 * and the worker depend on the lanes, not the packs: concurrent branches ask alike whatever their number of cores (the
 * site's shared cache of packs it compresses on demand; cut per lane, a branch with one worker and one with two shared
 * 12 % fewer). A file that begins inside another file's pack has that pack written by the other's worker.
 * Lazy: only each lane's next pack exists.
 */
export function* lanePacksOf(from: Uint8Array, L: Layout, packBytes: number, lanes: number): Generator<{ firsts: number[]; bytes: number; lane: number }> {
  const bytesOf = new Float64Array(L.entryStart.length - 1);
  for (let g = 0; g < from.length; g++) if (from[g] === From.GET) bytesOf[L.entry[g]!] += L.len[g]!;
  const load = new Float64Array(lanes);
  const laneOf = new Uint16Array(bytesOf.length);
  const bySize = [...bytesOf.keys()].filter((ei) => bytesOf[ei]! > 0).sort((a, b) => bytesOf[b]! - bytesOf[a]! || a - b);
  for (const ei of bySize) {
    let k = 0;
    for (let i = 1; i < lanes; i++) if (load[i]! < load[k]!) k = i;
    laneOf[ei] = k;
    load[k] += bytesOf[ei]!;
  }
  // Each lane walks the one sequence of packs and keeps its own: one walk feeding a queue per lane would hold the
  // packs of one lane (a 483 MB ledger's) while the other caught up; cutting them again per lane costs a pass over
  // the plan per worker.
  const packs = Array.from({ length: lanes }, (_, k) => packsOfLane(packsOf(from, L, packBytes), (p) => laneOf[L.entry[p.firsts[0]!]!] === k));
  const next = packs.map((p) => p.next());
  const asked = new Float64Array(lanes);
  for (;;) {
    let k = -1;
    for (let i = 0; i < lanes; i++) if (!next[i]!.done && (k < 0 || asked[i]! < asked[k]!)) k = i;
    if (k < 0) return;
    const pack = next[k]!.value as { firsts: number[]; bytes: number };
    asked[k] += pack.bytes;
    yield { ...pack, lane: k };
    next[k] = packs[k]!.next();
  }
}

/** The packs of `all` that are the lane's. */
function* packsOfLane<P>(all: Iterable<P>, mine: (p: P) => boolean): Generator<P> {
  for (const p of all) if (mine(p)) yield p;
}

/**
 * Groups the chunks planned as GET, in chunk order, into packs of about packBytes raw; deterministic, so concurrent
 * branches ask alike.
 */
function* packsOf(from: Uint8Array, L: Layout, packBytes: number): Generator<{ firsts: number[]; bytes: number }> {
  let cur: number[] = [];
  let bytes = 0;
  let ranges = 0;
  for (let g = 0; g < from.length; g++) {
    if (from[g] !== From.GET) continue;
    const len = L.len[g]!;
    const prev = cur[cur.length - 1];
    const newRange = prev === undefined || prev + 1 !== g;
    if (cur.length > 0 && (bytes + len > packBytes || (newRange && ranges >= 1024))) {
      yield { firsts: cur, bytes };
      cur = [];
      bytes = 0;
      ranges = 0;
    }
    if (cur.length === 0 || newRange) ranges++;
    cur.push(g);
    bytes += len;
  }
  if (cur.length) yield { firsts: cur, bytes };
}

/** Groups the chunks planned as PATCH, in chunk order, into runs of consecutive chunks of one file, about packBytes each. */
function* patchRunsOf(from: Uint8Array, L: Layout, packBytes: number): Generator<{ run: number[]; bytes: number }> {
  let cur: number[] = [];
  let bytes = 0;
  for (let g = 0; g < from.length; g++) {
    if (from[g] !== From.PATCH) continue;
    const len = L.len[g]!;
    const prev = cur[cur.length - 1];
    if (prev !== undefined && (prev + 1 !== g || L.entry[prev] !== L.entry[g] || bytes + len > packBytes)) {
      yield { run: cur, bytes };
      cur = [];
      bytes = 0;
    }
    cur.push(g);
    bytes += len;
  }
  if (cur.length) yield { run: cur, bytes };
}

/** Groups patch runs into batches of at most 64 runs and packBytes: one request and two jobs per batch. */
function* patchBatchesOf(from: Uint8Array, L: Layout, bases: Map<number, string>, packBytes: number): Generator<{ runs: number[][]; bytes: number }> {
  let runs: number[][] = [];
  let bytes = 0;
  if (bases.size === 0) return;
  for (const { run, bytes: n } of patchRunsOf(from, L, packBytes)) {
    if (runs.length > 0 && (runs.length >= 64 || bytes + n > packBytes)) {
      yield { runs, bytes };
      runs = [];
      bytes = 0;
    }
    runs.push(run);
    bytes += n;
  }
  if (runs.length) yield { runs, bytes };
}

/** A symbolic link's target, or undefined where it cannot be read. */
function readlinkOr(p: string): string | undefined {
  try {
    return fs.readlinkSync(p);
  } catch {
    return undefined;
  }
}

/** Whether something other than a folder stands at `p` (nothing there is not). */
function isNonFolder(p: string): boolean {
  try {
    return !fs.lstatSync(p).isDirectory();
  } catch {
    return false;
  }
}
