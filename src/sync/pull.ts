/**
 * Pull one company into DIR: seed when DIR is new, delta when it holds a generation, resume after any interruption.
 *
 * The next generation is built beside DIR (state/next/): files that did not change are hard-linked, changed files
 * start as a copy of their old version and get only their changed chunks, chunks the puller already holds anywhere
 * are copied locally, changed chunks of files that existed are fetched as block patches against the old bytes, the
 * rest is fetched in packs. Every written chunk is verified against the authenticated manifest and recorded in a
 * journal, so a restart fetches nothing already verified. Commit swaps the finished tree in atomically (store/state).
 */
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { connect, SecureSession, printable } from './session.js';
import { WorkerPool } from '../work/pool.js';
import { Decompressor } from '../work/zstd.js';
import { layoutOf, Layout } from '../manifest/layout.js';
import { appliedMode, decodeManifest, Entry, Manifest, rootHashOf, sameContent, totalBytes } from '../manifest/manifest.js';
import {
  MsgType,
  decodeJson,
  decodeData,
  decodePatch,
  encodeGet,
  encodePatchGet,
  ManifestMsg,
  OpenMsg,
} from '../protocol/messages.js';
import type { WritePackJob, WritePackResult, CopyRangesJob, CopyRangesResult, ApplyPatchResult, ChunkSegmentResult, FinishFilesJob, FinishFilesResult } from '../work/tasks.js';
import {
  StatePaths,
  DirLock,
  recover,
  readApplied,
  checkDirUsable,
  checkParentWritable,
  commit,
  writeStats,
  removeTree,
  syncFilesystemAsync,
  Applied,
  AppliedRecord,
  writeFileDurable,
  signRecord,
} from '../store/state.js';
import { verifyDir, GoodChunks } from './verify.js';
import { SEGMENT_SIZE } from '../chunk/chunker.js';
import { SnapferryError, ErrorCodes, fail, toSnapferryError } from '../util/errors.js';
import { TokenBucket } from '../util/rate.js';
import { noteGarbage } from '../util/gc.js';

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
  /** Test hook: called at named points of the pull (fault tests kill the process there). */
  onPoint?: (point: string) => void;
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
  unchanged: boolean;
  /** Repair only: the site had moved on, so DIR was brought to the site's newest generation instead. */
  peerMovedOn?: boolean;
  /** Repair only: what the deep check found before repairing. */
  damagedBefore?: number;
  seconds: number;
}

/** Block size of the patch level: small enough that a rewritten 4 KiB page costs ~4 KiB, large enough that signatures stay cheap. */
const PATCH_BLOCK = 1024;
/** Raw bytes per GET. */
const PACK_BYTES = 512 << 10;
const J_BASED = 0x80000000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Pulls with bounded retries: a dropped link resumes from the journal after a backoff. */
export async function pull(opts: PullOptions): Promise<PullResult> {
  const paths = new StatePaths(opts.dir);
  const lock = new DirLock(paths);
  const started = performance.now();
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
    // Repair may re-establish a lost record, but only for a DIR whose state folder shows snapferry made it.
    if (!opts.repair || !fs.existsSync(paths.appliedManifest)) checkDirUsable(paths);
    for (let attempt = 0; ; attempt++) {
      const run = new PullRun(opts, paths, started);
      try {
        const r = await run.execute();
        r.bytesOnWire += wire;
        return r;
      } catch (err) {
        const e = toSnapferryError(err);
        wire += run.wireBytes;
        everConnected ||= !run.neverConnected;
        if (e.code === ErrorCodes.STALE_SOURCE && attempt < retries + 20) {
          opts.log?.(`the company changed while it was sent (${e.message}); fetching the newer generation`);
          continue;
        }
        // A site that refuses connections from the start is reported at once; anything reached before, or a link
        // cut mid-handshake, or a busy site, is retried with backoff.
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

interface Need {
  /** First occurrence (what GET asks for). */
  g: number;
  /** Occurrences to write. */
  targets: number[];
  /** Old file to patch against (same path, same offsets), if any. */
  patchBase?: string;
}


/** One attempt of a pull over one connection. */
class PullRun {
  wireBytes = 0;
  neverConnected = true;
  private session?: SecureSession;
  private pool?: WorkerPool;
  private m!: Manifest;
  private layout!: Layout;
  private rootHash = '';
  private generation = 0;
  private applied?: Applied;
  /** Occurrences the journal of an interrupted attempt says are verified in next/ (read once, by plan). */
  private done = new Uint8Array(0);
  private based = new Set<number>();
  private journalBuf: number[] = [];
  private lastCheckpoint = performance.now();
  private remaining!: Int32Array;
  private bytesDone = 0;
  private bytesTotal = 0;
  private stats = { fetched: 0, patched: 0, reused: 0, written: 0 };
  private pending = new Map<number, { resolve: (m: Buffer) => void; reject: (e: unknown) => void }>();
  private nextReq = 1;
  private readerError?: SnapferryError;
  private bucket?: TokenBucket;

  constructor(
    private readonly opts: PullOptions,
    private readonly paths: StatePaths,
    private readonly started: number,
  ) {
    if (opts.bwlimit) this.bucket = new TokenBucket(opts.bwlimit);
  }

  private progress(phase: PullProgress['phase']): void {
    this.opts.onProgress?.({
      phase,
      bytesDone: this.bytesDone,
      bytesTotal: this.bytesTotal,
      bytesOnWire: this.session?.channel.bytesRead ?? this.wireBytes,
      elapsedMs: performance.now() - this.started,
    });
  }

  /** Repair mode: good chunks of the applied generation per file, from the deep check. */
  private good?: GoodChunks;
  private damagedBefore?: number;

  async execute(): Promise<PullResult> {
    this.progress('connect');
    if (this.opts.repair) {
      try {
        const v = await verifyDir(this.paths.dir, { deep: true, secret: this.opts.secret, locked: true });
        this.applied = v.applied;
        this.good = v.good;
        this.damagedBefore = v.damaged.length;
      } catch (err) {
        const e = toSnapferryError(err);
        if (e.code !== ErrorCodes.STATE && e.code !== ErrorCodes.BAD_MANIFEST) throw e;
        this.opts.log?.(`${e.message}; re-establishing it from the site`);
        this.applied = undefined; // re-chunk what DIR has
        this.damagedBefore = -1;
      }
    } else {
      this.applied = readApplied(this.paths);
    }
    try {
      this.session = await connect(this.opts.url, { secret: this.opts.secret, peerId: this.opts.peerId ?? os.hostname(), timeoutMs: this.opts.timeoutMs });
    } catch (err) {
      throw toSnapferryError(err);
    }
    this.neverConnected = false;
    try {
      return await this.run();
    } catch (err) {
      // Keep what this attempt verified: the next one must not fetch it again, however short this one was.
      await this.flushJournal(true).catch(() => undefined);
      throw err;
    } finally {
      this.wireBytes = this.session.channel.bytesRead;
      this.session.close();
      await this.pool?.close();
    }
  }

  private async run(): Promise<PullResult> {
    const s = this.session!;
    const timeout = this.opts.timeoutMs ?? 60_000;
    await s.sendJson(MsgType.OPEN, { company: this.opts.company, have: this.applied?.record.rootHash } satisfies OpenMsg);
    this.progress('manifest');
    const headMsg = await s.recv(timeout);
    if (headMsg[0] !== MsgType.MANIFEST) fail(ErrorCodes.PROTOCOL, 'expected a manifest');
    const head = decodeJson<ManifestMsg & { unchanged?: boolean }>(headMsg);
    if (typeof head.rootHash !== 'string' || !/^[0-9a-f]{64}$/.test(head.rootHash)) fail(ErrorCodes.PROTOCOL, 'malformed manifest header');
    this.rootHash = head.rootHash;
    this.generation = Number(head.generation) || 0;
    let encoded: Buffer;
    if (head.unchanged) {
      if (!this.applied || this.applied.record.rootHash !== head.rootHash) fail(ErrorCodes.PROTOCOL, 'site claims an unchanged generation we do not hold');
      encoded = fs.readFileSync(this.paths.appliedManifest);
      this.m = this.applied.manifest;
    } else {
      encoded = await this.receiveManifest(head);
      this.m = decodeManifest(encoded);
    }
    this.layout = layoutOf(this.m);
    this.bytesTotal = totalBytes(this.m);

    if (this.applied && this.applied.record.rootHash === this.rootHash && (this.opts.repair ? this.damagedBefore === 0 : this.intact())) {
      if (this.applied.stats.some((x) => x === '')) writeStats(this.paths, this.rootHash, this.m);
      await s.send(Buffer.from([MsgType.BYE]));
      return this.result(true);
    }

    this.progress('plan');
    this.opts.onPoint?.('plan');
    this.pool = new WorkerPool(this.opts.workers);
    const needs = this.plan(encoded, await this.partialSources());
    this.checkSpace(needs);
    this.startReader();
    this.progress('transfer');
    await this.transfer(needs);
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
    };
    commit(this.paths, signRecord(record, this.opts.secret), encoded, this.opts.durable !== false, this.opts.onPoint);
    writeStats(this.paths, this.rootHash, this.m, this.finishedStats);
    this.opts.onPoint?.('committed');
    return this.result(false);
  }

  private result(unchanged: boolean): PullResult {
    return {
      company: this.opts.company,
      generation: this.generation,
      rootHash: this.rootHash,
      files: this.m.entries.filter((e) => e.kind === 'file').length,
      bytes: this.bytesTotal,
      bytesOnWire: this.session!.channel.bytesRead,
      chunksFetched: this.stats.fetched,
      chunksPatched: this.stats.patched,
      chunksReused: this.stats.reused,
      bytesWritten: this.stats.written,
      unchanged,
      ...(this.opts.repair
        ? { peerMovedOn: this.applied !== undefined && this.applied.record.rootHash !== this.rootHash, damagedBefore: this.damagedBefore }
        : {}),
      seconds: Math.round(performance.now() - this.started) / 1000,
    };
  }

  private async receiveManifest(head: ManifestMsg): Promise<Buffer> {
    const size = Number(head.encodedSize);
    const parts = Number(head.parts);
    if (!Number.isInteger(size) || size < 5 || size > 1 << 30 || !Number.isInteger(parts) || parts !== Math.ceil(size / (1 << 20))) {
      fail(ErrorCodes.BAD_MANIFEST, 'manifest header out of bounds');
    }
    const out = Buffer.allocUnsafe(size);
    const z = new Decompressor();
    let o = 0;
    for (let i = 0; i < parts; i++) {
      const msg = await this.session!.recv(this.opts.timeoutMs ?? 60_000);
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

  /** Whether a file of the applied generation is still as committed (size, mtime, inode, ctime; in repair, every chunk verified). */
  private trusted(e: Entry, idx: number): boolean {
    if (this.good && e.kind === 'file') {
      const ok = this.good.get(idx);
      if (e.size > 0 && (!ok || ok.includes(0))) return false;
    }
    let st: fs.BigIntStats;
    try {
      st = fs.lstatSync(path.join(this.paths.dir, e.path), { bigint: true });
    } catch {
      return false;
    }
    if (e.kind === 'dir') return st.isDirectory();
    if (e.kind === 'symlink') return st.isSymbolicLink();
    if (!st.isFile() || Number(st.size) !== e.size || !sameMtime(st.mtimeNs, e.mtimeNs)) return false;
    const rec = this.applied!.stats[idx];
    return !rec || rec === `${st.ino}:${st.ctimeNs}`;
  }

  /**
   * Local files that are not trusted whole but still hold good chunks: in repair, damaged files of the applied
   * generation (their verified chunks); with no record at all, every file of the site's generation that DIR has,
   * re-chunked here. Each serves as a patch base for its own path and as a source of chunks by id (copies are
   * verified against the id as they are made).
   */
  private async partialSources(): Promise<Map<string, { abs: string; size: number; chunks: Array<{ id: bigint; offset: number }> }>> {
    const out = new Map<string, { abs: string; size: number; chunks: Array<{ id: bigint; offset: number }> }>();
    if (!this.opts.repair) return out;
    if (this.applied && this.good) {
      const olds = this.applied.manifest.entries;
      for (const [i, ok] of this.good) {
        const oe = olds[i]!;
        if (!ok.includes(0) && this.trusted(oe, i)) continue;
        const abs = path.join(this.paths.dir, oe.path);
        let size = 0;
        try {
          size = fs.statSync(abs).size;
        } catch {
          continue;
        }
        const chunks: Array<{ id: bigint; offset: number }> = [];
        for (let k = 0, o = 0; k < oe.lens!.length; o += oe.lens![k]!, k++) if (ok[k]) chunks.push({ id: oe.ids![k]!, offset: o });
        out.set(oe.path, { abs, size, chunks });
      }
      return out;
    }
    for (const e of this.m.entries) {
      if (e.kind !== 'file') continue;
      const abs = path.join(this.paths.dir, e.path);
      let st: fs.Stats;
      try {
        st = fs.lstatSync(abs);
      } catch {
        continue;
      }
      if (!st.isFile()) continue;
      const chunks: Array<{ id: bigint; offset: number }> = [];
      for (let off = 0; off < st.size; off += SEGMENT_SIZE) {
        const r = await this.pool!.run<ChunkSegmentResult>({ kind: 'chunkSegment', path: abs, offset: off, length: Math.min(SEGMENT_SIZE, st.size - off), params: this.m.params });
        for (let k = 0, o = off; k < r.lens.length; o += r.lens[k]!, k++) chunks.push({ id: r.ids[k]!, offset: o });
      }
      out.set(e.path, { abs, size: st.size, chunks });
    }
    return out;
  }

  /** Builds next/'s skeleton and decides where every chunk comes from. */
  private plan(encoded: Buffer, partial: Map<string, { abs: string; size: number; chunks: Array<{ id: bigint; offset: number }> }>): Need[] {
    const p = this.paths;
    // Resume only into a next/ built for this very generation; anything else is discarded.
    let resumable = false;
    try {
      resumable = JSON.parse(fs.readFileSync(p.nextJson, 'utf8')).rootHash === this.rootHash && fs.existsSync(p.next);
    } catch {
      resumable = false;
    }
    if (resumable) {
      this.readJournal();
    } else {
      removeTree(p.next);
      fs.rmSync(p.nextJournal, { force: true });
      fs.mkdirSync(p.next, { mode: 0o700 });
      writeFileDurable(p.nextJson, JSON.stringify({ rootHash: this.rootHash, bytes: encoded.length }));
    }
    const L = this.layout;
    this.remaining = new Int32Array(this.m.entries.length);
    const oldByPath = new Map<string, number>();
    const localIndex = new Map<bigint, { path: string; offset: number }>();
    if (this.applied) {
      const olds = this.applied.manifest.entries;
      for (let i = 0; i < olds.length; i++) {
        const oe = olds[i]!;
        if (oe.kind !== 'file' || !this.trusted(oe, i)) continue;
        oldByPath.set(oe.path, i);
        let o = 0;
        const abs = path.join(p.dir, oe.path);
        for (let k = 0; k < oe.lens!.length; k++) {
          if (!localIndex.has(oe.ids![k]!)) localIndex.set(oe.ids![k]!, { path: abs, offset: o });
          o += oe.lens![k]!;
        }
      }
    }
    for (const src of partial.values()) for (const c of src.chunks) if (!localIndex.has(c.id)) localIndex.set(c.id, { path: src.abs, offset: c.offset });
    const needs = new Map<bigint, Need>();
    const copies: Array<{ g: number; src: { path: string; offset: number } }> = [];
    const baseCopies: Array<{ ei: number; from: string }> = [];
    for (let ei = 0; ei < this.m.entries.length; ei++) {
      const e = this.m.entries[ei]!;
      const dst = path.join(p.next, e.path);
      if (e.kind === 'dir') {
        fs.mkdirSync(dst, { recursive: true, mode: 0o700 });
        continue;
      }
      if (e.kind === 'symlink') {
        if (!fs.existsSync(dst)) fs.symlinkSync(e.target!, dst);
        continue;
      }
      const oi = oldByPath.get(e.path);
      const old = oi === undefined ? undefined : this.applied!.manifest.entries[oi]!;
      const src = path.join(p.dir, e.path);
      if (old && sameContent(old, e)) {
        const g0 = L.entryStart[ei]!;
        this.stats.reused += L.entryStart[ei + 1]! - g0;
        this.bytesDone += e.size;
        if (old.mode === e.mode && sameMtime(old.mtimeNs, e.mtimeNs)) {
          if (!fs.existsSync(dst)) fs.linkSync(src, dst);
          this.linked.add(ei);
        } else if (!this.based.has(ei)) {
          // Same bytes, other mode or mtime: a hard link would change the old generation too, so copy.
          baseCopies.push({ ei, from: src });
        }
        continue;
      }
      // Files are created by the first write, on the workers; only empty ones are made here.
      if (e.size === 0 && !fs.existsSync(dst)) fs.closeSync(fs.openSync(dst, 'w', 0o600));
      const oldAt = new Map<number, bigint>();
      if (old && e.size > 0) {
        if (!this.based.has(ei)) baseCopies.push({ ei, from: src });
        let o = 0;
        for (let k = 0; k < old.lens!.length; k++) {
          oldAt.set(o, old.ids![k]!);
          o += old.lens![k]!;
        }
      }
      let remaining = 0;
      for (let g = L.entryStart[ei]!; g < L.entryStart[ei + 1]!; g++) {
        const id = L.id[g]!;
        if (this.done[g] === 1 || oldAt.get(L.offset[g]!) === id) {
          this.stats.reused++;
          this.bytesDone += L.len[g]!;
          continue;
        }
        remaining++;
        const local = localIndex.get(id);
        if (local && !needs.has(id)) {
          copies.push({ g, src: local });
          continue;
        }
        const need = needs.get(id);
        if (need) need.targets.push(g);
        else {
          const part = old ? undefined : partial.get(e.path);
          const patchBase = old && L.offset[g]! < old.size ? src : part && L.offset[g]! < part.size ? part.abs : undefined;
          needs.set(id, { g, targets: [g], patchBase });
        }
      }
      this.remaining[ei] = remaining;
    }
    this.pendingBaseCopies = baseCopies;
    this.pendingCopies = copies;
    return [...needs.values()].sort((a, b) => a.g - b.g);
  }

  private pendingBaseCopies: Array<{ ei: number; from: string }> = [];
  private pendingCopies: Array<{ g: number; src: { path: string; offset: number } }> = [];

  private checkSpace(needs: Need[]): void {
    let toWrite = 0;
    for (const n of needs) for (const g of n.targets) toWrite += this.layout.len[g]!;
    for (const c of this.pendingCopies) toWrite += this.layout.len[c.g]!;
    for (const b of this.pendingBaseCopies) toWrite += this.m.entries[b.ei]!.size;
    try {
      const sf = fs.statfsSync(this.paths.state);
      const free = sf.bavail * sf.bsize;
      if (toWrite > free) {
        fail(ErrorCodes.DISK_FULL, `disk full: this generation needs ${toWrite} more bytes beside ${this.paths.dir}, ${free} are free`);
      }
    } catch (err) {
      if (err instanceof SnapferryError) throw err;
    }
  }

  private readJournal(): void {
    let buf: Buffer;
    try {
      buf = fs.readFileSync(this.paths.nextJournal);
    } catch {
      return;
    }
    const n = Math.floor(buf.length / 4);
    this.done = new Uint8Array(this.layout.total);
    for (let i = 0; i < n; i++) {
      const v = buf.readUInt32LE(i * 4);
      if (v & J_BASED) this.based.add(v & ~J_BASED);
      else if (v < this.layout.total) this.done[v] = 1;
    }
  }

  private journal(values: number[]): void {
    for (const v of values) this.journalBuf.push(v);
  }

  /**
   * Appends journal records. With durability on, the data they claim is flushed first (in the background, one
   * checkpoint at a time) so that the journal never claims bytes a power loss could lose; kill -9 alone loses nothing
   * the kernel holds.
   */
  private async flushJournal(force = false): Promise<void> {
    const now = performance.now();
    if (!force && (this.syncing || (now - this.lastCheckpoint < 1000 && this.journalBuf.length < 65536))) return;
    await this.syncing;
    this.lastCheckpoint = now;
    if (this.journalBuf.length === 0) return;
    const vals = this.journalBuf;
    this.journalBuf = [];
    const append = () => {
      const b = Buffer.allocUnsafe(vals.length * 4);
      for (let i = 0; i < vals.length; i++) b.writeUInt32LE(vals[i]! >>> 0, i * 4);
      fs.appendFileSync(this.paths.nextJournal, b);
    };
    if (this.opts.durable === false) return append();
    const checkpoint = syncFilesystemAsync(this.paths.next).then(append);
    if (force) return checkpoint;
    this.syncing = checkpoint.finally(() => (this.syncing = undefined));
  }

  private syncing?: Promise<void>;

  /** Where a job writes the chunks of `needs`: each occurrence as (chunk index in the job, file, offset). */
  private targetsOf(needs: Need[]): { paths: string[]; tItem: Uint32Array; tPath: Uint32Array; tOffset: Float64Array } {
    const L = this.layout;
    const paths: string[] = [];
    const pathIdx = new Map<number, number>();
    const tItem: number[] = [];
    const tPath: number[] = [];
    const tOffset: number[] = [];
    needs.forEach((n, i) => {
      for (const g of n.targets) {
        const ei = L.entry[g]!;
        let pi = pathIdx.get(ei);
        if (pi === undefined) {
          pi = paths.push(this.targetPath(g)) - 1;
          pathIdx.set(ei, pi);
        }
        tItem.push(i);
        tPath.push(pi);
        tOffset.push(L.offset[g]!);
      }
    });
    return { paths, tItem: Uint32Array.from(tItem), tPath: Uint32Array.from(tPath), tOffset: Float64Array.from(tOffset) };
  }

  /** Path in next/ of the entry holding occurrence g. */
  private targetPath(g: number): string {
    return path.join(this.paths.next, this.m.entries[this.layout.entry[g]!]!.path);
  }

  /** Counts a written occurrence; a file whose last chunk landed is queued to be finished (mode, mtime) on a worker. */
  private occurrenceDone(g: number): void {
    const ei = this.layout.entry[g]!;
    this.remaining[ei]!--;
    this.bytesDone += this.layout.len[g]!;
    if (this.remaining[ei] === 0) {
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
      paths: batch.map((ei) => path.join(this.paths.next, this.m.entries[ei]!.path)),
      modes: Uint32Array.from(batch.map((ei) => appliedMode(this.m.entries[ei]!.mode))),
      mtimes: Float64Array.from(batch.map((ei) => toTime(this.m.entries[ei]!.mtimeNs))),
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
    const watchdog = setInterval(() => {
      if (this.pending.size > 0 && performance.now() - lastHeard > timeoutMs) {
        const e = new SnapferryError(ErrorCodes.TIMEOUT, `the site sent nothing for ${Math.round(timeoutMs / 1000)} s`, { retryable: true });
        fault(e);
        s.channel.abort(e);
      }
    }, Math.min(1000, timeoutMs / 2));
    watchdog.unref();
    s.channel.ws.once('close', () => clearInterval(watchdog));
    s.channel.onMessage = (frame) => {
      lastHeard = performance.now();
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
      const type = msg[0];
      if (type === MsgType.DATA || type === MsgType.PATCH || type === MsgType.STALE) {
        const reqId = type === MsgType.STALE ? Number(decodeJson<{ reqId: number }>(msg).reqId) : msg.length >= 5 ? msg.readUInt32BE(1) : -1;
        const p = this.pending.get(reqId);
        if (!p) return fault(new SnapferryError(ErrorCodes.PROTOCOL, 'answer to a request we did not make'));
        this.pending.delete(reqId);
        if (type === MsgType.STALE) {
          const path_ = printable(String(decodeJson<{ path?: string }>(msg).path ?? '?')).slice(0, 300);
          p.reject(new SnapferryError(ErrorCodes.STALE_SOURCE, `${path_} changed at the site`, { retryable: true }));
        } else p.resolve(msg);
      } else if (type === MsgType.ERROR) {
        const e = decodeJson<{ code: string; message: string }>(msg);
        fault(new SnapferryError((Object.values(ErrorCodes) as string[]).includes(e.code) ? (e.code as never) : ErrorCodes.PROTOCOL, printable(String(e.message)).slice(0, 300)));
      } else if (type !== MsgType.PONG) {
        fault(new SnapferryError(ErrorCodes.PROTOCOL, `unexpected message type ${type}`));
      }
    };
  }

  private request(build: (reqId: number) => Buffer): Promise<Buffer> {
    if (this.readerError) return Promise.reject(this.readerError);
    const reqId = this.nextReq++;
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(reqId, { resolve, reject });
      this.session!.send(build(reqId)).catch(reject);
    });
  }

  /** Local work first (base copies, local chunk copies), then patches and packs from the site, window-bounded. */
  private async transfer(needs: Need[]): Promise<void> {
    const L = this.layout;
    // 1. Base copies: a changed file starts as its old version (in-kernel copy), before any chunk lands on it.
    await runLimited(this.pendingBaseCopies, 4, async ({ ei, from }) => {
      const dst = path.join(this.paths.next, this.m.entries[ei]!.path);
      await fs.promises.copyFile(from, dst);
      // copyFile keeps the source's mode, which may be read-only: the copy is ours to patch until it is finished.
      await fs.promises.chmod(dst, 0o600);
      await fs.promises.truncate(dst, this.m.entries[ei]!.size);
      this.stats.written += this.m.entries[ei]!.size;
      this.journal([(J_BASED | ei) >>> 0]);
    });
    // 2. Chunks the puller already holds elsewhere.
    const refetch: Need[] = [];
    for (let i = 0; i < this.pendingCopies.length; i += 512) {
      const batch = this.pendingCopies.slice(i, i + 512);
      const srcPaths: string[] = [];
      const srcIndex = new Map<string, number>();
      const job: CopyRangesJob = {
        kind: 'copyRanges',
        srcPaths,
        srcIdx: new Uint32Array(batch.length),
        srcOffsets: new Float64Array(batch.length),
        lens: new Uint32Array(batch.length),
        ids: new BigUint64Array(batch.length),
        dstPaths: [],
        dstIdx: new Uint32Array(batch.length),
        dstOffsets: new Float64Array(batch.length),
      };
      batch.forEach((c, k) => {
        let si = srcIndex.get(c.src.path);
        if (si === undefined) {
          si = srcPaths.length;
          srcPaths.push(c.src.path);
          srcIndex.set(c.src.path, si);
        }
        job.srcIdx[k] = si;
        job.srcOffsets[k] = c.src.offset;
        job.lens[k] = L.len[c.g]!;
        job.ids[k] = L.id[c.g]!;
        job.dstIdx[k] = job.dstPaths.push(this.targetPath(c.g)) - 1;
        job.dstOffsets[k] = L.offset[c.g]!;
      });
      const r = await this.pool!.run<CopyRangesResult>(job);
      const failed = new Set(r.failed);
      const ok: number[] = [];
      batch.forEach((c, k) => {
        if (failed.has(k)) refetch.push({ g: c.g, targets: [c.g] });
        else {
          ok.push(c.g);
          this.stats.reused++;
          this.stats.written += L.len[c.g]!;
        }
      });
      this.journal(ok);
      for (const g of ok) this.occurrenceDone(g);
    }
    const all = [...needs, ...refetch];
    // 3. From the site: block patches for chunks of files that existed, packs for the rest.
    const patches = all.filter((n) => n.patchBase);
    const gets = all.filter((n) => !n.patchBase);
    const windowBytes = this.opts.windowBytes ?? 16 << 20;
    const gate = new ByteGate(windowBytes);
    const tasks: Array<Promise<void>> = [];
    let failure: unknown;
    const track = (p: Promise<void>) => {
      const t = p.catch((err) => void (failure ??= err));
      tasks.push(t);
    };
    for (const batch of patchBatchesOf(patches, L)) {
      if (failure || this.readerError) break;
      await gate.take(batch.bytes);
      track(this.patchRuns(batch.runs, gets).finally(() => gate.give(batch.bytes)));
    }
    // Patches that fell back to whole chunks joined `gets`; wait for them before packing.
    await Promise.all(tasks);
    if (failure) throw failure;
    gets.sort((a, b) => a.g - b.g);
    for (const pack of packsOf(gets, L)) {
      if (failure || this.readerError) break;
      await gate.take(pack.bytes);
      track(this.getPack(pack.needs).finally(() => gate.give(pack.bytes)));
    }
    await Promise.all(tasks);
    if (failure) throw failure;
    if (this.readerError) throw this.readerError;
    for (let ei = 0; ei < this.remaining.length; ei++) {
      if (this.remaining[ei]! > 0) fail(ErrorCodes.INTERNAL, `file ${this.m.entries[ei]!.path} incomplete after transfer`);
    }
  }

  private async getPack(needs: Need[]): Promise<void> {
    const L = this.layout;
    const ranges: Array<[number, number]> = [];
    for (const n of needs) {
      const last = ranges[ranges.length - 1];
      if (last && last[1] === n.g) last[1]++;
      else ranges.push([n.g, n.g + 1]);
    }
    const msg = await this.request((reqId) => encodeGet({ reqId, ranges }));
    const data = decodeData(msg);
    await this.bucket?.take(msg.length);
    const lens = Uint32Array.from(needs.map((n) => L.len[n.g]!));
    const ids = BigUint64Array.from(needs.map((n) => L.id[n.g]!));
    // The decrypted frame is moved to the worker whole when it owns its memory, copied otherwise.
    const owns = msg.byteOffset === 0 && msg.byteLength === msg.buffer.byteLength;
    const job: WritePackJob = {
      kind: 'writePack',
      payload: owns ? msg : Buffer.from(data.payload),
      payloadOffset: owns ? data.payload.byteOffset - msg.byteOffset : 0,
      compressed: data.compressed,
      rawLen: data.rawLen,
      lens,
      ids,
      ...this.targetsOf(needs),
    };
    const r = await this.pool!.run<WritePackResult>(job);
    this.stats.written += r.written;
    this.stats.fetched += needs.length;
    const gs: number[] = [];
    for (const n of needs) for (const g of n.targets) gs.push(g);
    this.journal(gs);
    for (const g of gs) this.occurrenceDone(g);
    await this.flushJournal();
    this.progress('transfer');
  }

  /**
   * Fetches runs of consecutive changed chunks (each within one file) as block patches against the old bytes at the
   * same offsets: one signature job, one request and one apply job for the whole batch of runs.
   */
  private async patchRuns(runs: Need[][], fallback: Need[]): Promise<void> {
    const L = this.layout;
    const shaped = runs.map((run) => ({
      path: run[0]!.patchBase!,
      offset: L.offset[run[0]!.g]!,
      lens: Uint32Array.from(run.map((n) => L.len[n.g]!)),
      ids: BigUint64Array.from(run.map((n) => L.id[n.g]!)),
    }));
    const ranges = shaped.map((r) => ({ path: r.path, offset: r.offset, length: r.lens.reduce((a, b) => a + b, 0) }));
    const sigs = await this.pool!.run<Uint32Array[]>({ kind: 'blockSigs', ranges, blockSize: PATCH_BLOCK });
    const msg = await this.request((reqId) =>
      encodePatchGet({ reqId, blockSize: PATCH_BLOCK, runs: runs.map((run, k) => ({ chunk: run[0]!.g, count: run.length, sigs: sigs[k]! })) }),
    );
    const patch = decodePatch(msg);
    if (patch.bitmaps.length !== runs.length) fail(ErrorCodes.PROTOCOL, 'PATCH answers another number of runs');
    await this.bucket?.take(msg.length);
    const all = runs.flat();
    const r = await this.pool!.run<ApplyPatchResult>({
      kind: 'applyPatch',
      runs: shaped.map((x, k) => ({ ...x, bitmap: Buffer.from(patch.bitmaps[k]!) })),
      blockSize: PATCH_BLOCK,
      payload: Buffer.from(patch.payload),
      compressed: patch.compressed,
      rawLen: patch.rawLen,
      ...this.targetsOf(all),
    });
    const failed = new Set(r.failed);
    const gs: number[] = [];
    all.forEach((n, i) => {
      if (failed.has(i)) fallback.push({ g: n.g, targets: n.targets });
      else {
        this.stats.patched++;
        this.stats.fetched++;
        gs.push(...n.targets);
      }
    });
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
      const t = toTime(e.mtimeNs);
      fs.lutimesSync(path.join(this.paths.next, e.path), t, t);
    }
    for (let i = entries.length - 1; i >= 0; i--) {
      const e = entries[i]!;
      if (e.kind !== 'dir') continue;
      const p = path.join(this.paths.next, e.path);
      fs.chmodSync(p, appliedMode(e.mode));
      const t = toTime(e.mtimeNs);
      fs.utimesSync(p, t, t);
    }
    fs.chmodSync(this.paths.next, 0o777 & ~process.umask());
  }

  /** Entries of next/ that are hard links to the old generation. */
  private linked = new Set<number>();
}

/** Seconds since the epoch with microsecond precision, as utimes takes them. */
function toTime(ns: bigint): number {
  return Number(ns / 1000n) / 1e6;
}

/** mtimes set through utimes keep microseconds: compare at that precision. */
export function sameMtime(a: bigint, b: bigint): boolean {
  const d = a - b;
  return d < 2000n && d > -2000n;
}

/** Groups needs (sorted by g) into packs of about PACK_BYTES raw; deterministic, so concurrent branches ask alike. */
function* packsOf(needs: Need[], L: Layout): Generator<{ needs: Need[]; bytes: number }> {
  let cur: Need[] = [];
  let bytes = 0;
  let ranges = 0;
  for (const n of needs) {
    const len = L.len[n.g]!;
    const prev = cur[cur.length - 1];
    const newRange = !prev || prev.g + 1 !== n.g;
    if (cur.length > 0 && (bytes + len > PACK_BYTES || (newRange && ranges >= 1024))) {
      yield { needs: cur, bytes };
      cur = [];
      bytes = 0;
      ranges = 0;
    }
    if (cur.length === 0 || newRange) ranges++;
    cur.push(n);
    bytes += len;
  }
  if (cur.length) yield { needs: cur, bytes };
}

/** Groups patch candidates (sorted by g) into runs of consecutive chunks of one file, about PACK_BYTES each. */
function* patchRunsOf(needs: Need[], L: Layout): Generator<{ needs: Need[]; bytes: number }> {
  let cur: Need[] = [];
  let bytes = 0;
  for (const n of [...needs].sort((a, b) => a.g - b.g)) {
    const len = L.len[n.g]!;
    const prev = cur[cur.length - 1];
    if (prev && (prev.g + 1 !== n.g || L.entry[prev.g] !== L.entry[n.g] || bytes + len > PACK_BYTES)) {
      yield { needs: cur, bytes };
      cur = [];
      bytes = 0;
    }
    cur.push(n);
    bytes += len;
  }
  if (cur.length) yield { needs: cur, bytes };
}

/** Groups patch runs into batches of at most 64 runs and PACK_BYTES: one request and two jobs per batch. */
function* patchBatchesOf(needs: Need[], L: Layout): Generator<{ runs: Need[][]; bytes: number }> {
  let runs: Need[][] = [];
  let bytes = 0;
  for (const run of patchRunsOf(needs, L)) {
    if (runs.length > 0 && (runs.length >= 64 || bytes + run.bytes > PACK_BYTES)) {
      yield { runs, bytes };
      runs = [];
      bytes = 0;
    }
    runs.push(run.needs);
    bytes += run.bytes;
  }
  if (runs.length) yield { runs, bytes };
}

/** Bounds bytes in flight. */
class ByteGate {
  private used = 0;
  private count = 0;
  private waiters: Array<() => void> = [];
  /** At most `limit` bytes and `maxCount` requests (the site refuses more than 64 per session) in flight. */
  constructor(
    private readonly limit: number,
    private readonly maxCount = 32,
  ) {}
  async take(n: number): Promise<void> {
    while (this.count >= this.maxCount || (this.used > 0 && this.used + n > this.limit)) await new Promise<void>((r) => this.waiters.push(r));
    this.used += n;
    this.count++;
  }
  give(n: number): void {
    this.used -= n;
    this.count--;
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

async function runLimited<T>(items: T[], limit: number, fn: (t: T) => Promise<void>): Promise<void> {
  let i = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (i < items.length) await fn(items[i++]!);
  });
  await Promise.all(workers);
}
