/**
 * The serving site: accepts WebSocket connections, authenticates each peer, and serves the generations of its
 * companies. Each generation's chunks are compressed once into the company's chunk store when it is indexed, and packs
 * are sent from it as stored frames; chunks not stored (yet) are read and compressed on the worker pool per pack (a
 * shared, bounded cache serves concurrent branches). Everything is sealed per session. Memory per session is bounded by the puller's request window
 * and the channel's high-water mark.
 */
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { WebSocketServer, WebSocket } from '../transport/ws.js';
import { Channel } from '../transport/channel.js';
import { accept, SecureSession, BUSY_HEADER, MAX_MESSAGE } from './session.js';
import { CompanyScanner, Generation, siteReadError } from '../scan/scanner.js';
import { CompanyWatcher } from '../scan/watch.js';
import { WorkerPool } from '../work/pool.js';
import { layoutOf, Layout, chunkSources } from '../manifest/layout.js';
import {
  MsgType,
  MAX_FRAME,
  MAX_GET_BYTES,
  PATCH_HEADER_BYTES,
  decodeJson,
  textOf,
  decodeGet,
  decodePatchGet,
  encodeDataHeader,
  encodePatchHeader,
  OpenMsg,
  ManifestMsg,
  GetMsg,
  PatchGetMsg,
  MAX_HELD_NAMES,
  heldBackText,
} from '../protocol/messages.js';
import type { ReadPackJob, ReadPackResult, MakePatchJob, MakePatchResult } from '../work/tasks.js';
import { Compressor } from '../work/zstd.js';
import { SnapferryError, ErrorCodes, fail, fsProblem, printable, toSnapferryError } from '../util/errors.js';
import { TokenBucket, formatBytes } from '../util/rate.js';
import { DEFAULT_CHUNK_PARAMS, type ChunkParams, type ChunkPolicy } from '../chunk/chunker.js';
import { noteGarbage } from '../util/gc.js';
import { ByteGate } from '../util/bytegate.js';
import { makeDirs, dirProblem } from '../util/mkdirs.js';
import { boundHeapGrowth } from './heap.js';
import { ChunkStore, makeTempStoreFolder } from '../store/chunkstore.js';
import { tryLockFile, lockOwnedHere, holderName, diskSpace } from '../store/state.js';
import { fillStore } from './storefill.js';
import { PendingHandshakes } from './handshakes.js';
import { loadHasher } from '../chunk/hash.js';
import { idWords } from '../manifest/idindex.js';
import { COMPANY_NAME, COMPANY_NAME_RULE } from '../util/names.js';

/** Options of a serving site. */
export interface ServeOptions {
  host: string;
  port: number;
  /** Secret for a peer id (one site secret for all peers today; per-peer secrets plug in here). */
  secretFor: (peerId: string) => Buffer | undefined;
  /** Company name -> folder. */
  companies: Map<string, string>;
  /** Cap on bytes per second sent, all sessions together. */
  bwlimit?: number;
  /**
   * zstd level for chunk data; default: adaptive per session. Level 1 has the best ratio on company data (higher
   * levels do not shrink it further, see bench micro), so a link that holds the data back gets level 1; a link that
   * never does (LAN, loopback) makes CPU the bottleneck and gets level -1, about 25% cheaper to compress.
   */
  level?: number;
  /** Time allowed for a handshake. */
  handshakeTimeoutMs?: number;
  /**
   * Authenticated sessions allowed at once (default 256); an upgrade beyond them is refused with 503. Connections that
   * have not authenticated do not count: they have their own budget, `maxUnauthenticated`; nor do followers waiting for
   * a change (up to FOLLOWERS_PER_CONNECTION times as many), so that branches that follow never keep others out.
   */
  maxConnections?: number;
  /**
   * Connections that have not authenticated yet, allowed at once (default 64): TCP connections before their WebSocket
   * upgrade and WebSockets in their handshake together. When the budget is full, the oldest of them from the address
   * holding the most is closed to make room for a new connection (never the newcomer refused; see handshakes.ts), so
   * peers without the secret cannot keep a branch out by holding connections, nor by flooding from one address.
   */
  maxUnauthenticated?: number;
  /** Close a session that sends nothing for this long. */
  idleTimeoutMs?: number;
  /** Bytes of compressed packs kept for concurrent branches. */
  cacheBytes?: number;
  /** Worker threads (default: cores, at most 4). */
  workers?: number;
  /** Total time a changing file may delay a generation. */
  settleTimeoutMs?: number;
  /** Watch the companies and re-index them as they change (default true). */
  watch?: boolean;
  /** Keep each company's scan cache in this folder, so a restarted site re-reads only what changed. */
  cacheDir?: string;
  /**
   * Keep a chunk store per company (default true): every chunk compressed once when it is indexed, so pulls only read
   * and seal. In `cacheDir/NAME.chunks` when a cache folder is given (kept across restarts), else in a temporary
   * folder removed when the site stops. Costs disk: about a third of the company on company data.
   */
  store?: boolean;
  /** Chunk parameters, or the policy choosing them from a company's size (default chunkParamsFor). */
  chunkParams?: ChunkParams | ChunkPolicy;
  /** zstd level of the chunk store (default 1: the best ratio on company data, as rsync's). */
  storeLevel?: number;
  log?: (line: string) => void;
}

interface Company {
  name: string;
  scanner: CompanyScanner;
  /** The last generation logged as indexed. */
  saidGeneration?: number;
  layouts: WeakMap<Generation, Layout>;
  /** Started on the first follower; announces new generations. */
  watcher?: CompanyWatcher;
  /**
   * Sessions transferring each generation (by root hash). The pack cache is used only while two or more share one:
   * a lone branch gains nothing from it, and cached buffers that outlive a young-generation GC cost major GCs.
   */
  readers: Map<string, number>;
  /** The company's chunk store (ServeOptions.store). */
  store?: ChunkStore;
  /** The generation the store is being filled for, or was last filled for. */
  fillGeneration?: number;
  /**
   * When that fill was cut short (an error such as a full disk or its folder removed; or the reserve, with the disk's
   * free bytes then): a later pull tries it again (see fill), or it would wait for the company's next change.
   */
  fillCut?: { at: number; free?: number };
  /** The store's fills and compactions, one at a time (a compaction deletes segments a fill could append to). */
  storeWork?: Promise<void>;
}

/**
 * Levels the adaptive controller moves between, most compression first. (No compression at all measured slower on
 * loopback than -1: the puller then opens and writes 2.4x the bytes; `--level none` remains for the operator.)
 */
const LEVEL_LADDER = [1, -1];

/** Room for an answer's header beside its stored frames: they must fit in one message with it. */
const DATA_HEADER_ROOM = 64;

/** A store fill cut short is tried again by a pull this long after (see SnapferryServer.fillAgain). */
const FILL_RETRY_MS = 10_000;
/** ... and, stopped at the disk's reserve, once this much more of the disk is free. */
const FILL_RETRY_ROOM = 16 << 20;

/**
 * Buffers of answers sent (read or stored packs and their sealed copies) collected every this many bytes on the site's
 * main thread: against the default 16 MiB, a 1 GiB seed's peak RSS on the site 130-137 MiB instead of 147-153 MiB and
 * its CPU (index, fill and pull) 8.2-8.5 s instead of 8.8-9.2 s (3 alternated runs). Workers keep the default: there a
 * lower threshold cost the branch 0.3-0.8 CPU s per seed.
 */
const ANSWER_GARBAGE_EVERY = 4 << 20;

/**
 * Chunk bytes a session's answers may be made or sent at once: a puller's window (16 MiB). The site gives a request's
 * bytes back when its answer is handed to the socket, before the puller gives them back (once written), so a branch
 * never waits on it; a peer that asks for 64 packs of 8 MiB and reads nothing makes the site hold two of them (each
 * with its sealed copy and what the socket holds: 42 MiB in all, measured), not all 64 (over a GiB).
 */
const ANSWER_BUDGET_BYTES = 16 << 20;

/** Followers waiting for a change allowed per `maxConnections` connection, beyond them (see SiteOptions.maxConnections). */
const FOLLOWERS_PER_CONNECTION = 8;

/** Ends of connections that never authenticated logged one by one per minute; the rest are counted (noteRefusal). */
const REFUSALS_LOGGED_PER_MINUTE = 20;

/** How long a stopping site waits for its sessions to answer their close frames before it cuts them. */
const CLOSE_GRACE_MS = 5000;

/** A bounded cache of compressed packs, keyed by generation and chunk ranges, shared by concurrent sessions. */
class PackCache {
  private map = new Map<string, { promise: Promise<ReadPackResult>; size: number }>();
  private bytes = 0;
  hits = 0;
  misses = 0;
  constructor(private readonly limit: number) {}

  get(key: string, make: () => Promise<ReadPackResult>): Promise<ReadPackResult> {
    const hit = this.map.get(key);
    if (hit) {
      this.hits++;
      this.map.delete(key);
      this.map.set(key, hit); // most recently used last
      return hit.promise;
    }
    this.misses++;
    const entry = { promise: make(), size: 0 };
    this.map.set(key, entry);
    entry.promise.then(
      (r) => {
        if (this.map.get(key) !== entry) return;
        entry.size = 'payload' in r ? r.payload.length : 0;
        if ('stale' in r) this.map.delete(key);
        this.bytes += entry.size;
        this.evict();
      },
      () => this.map.get(key) === entry && this.map.delete(key),
    );
    return entry.promise;
  }

  private evict(): void {
    for (const [k, v] of this.map) {
      if (this.bytes <= this.limit) break;
      if (v.size === 0) continue; // in flight
      this.map.delete(k);
      this.bytes -= v.size;
    }
  }
}

/** A running site. */
export class SnapferryServer {
  private http?: http.Server;
  private wss?: WebSocketServer;
  private readonly companies = new Map<string, Company>();
  private readonly sessions = new Set<Channel>();
  /** Sessions that completed the handshake: the ones `maxConnections` counts. */
  private readonly authenticated = new Set<Channel>();
  /** Authenticated sessions that only wait for a change (FOLLOW): not counted against maxConnections. */
  private readonly following = new Set<Channel>();
  /** TCP connections not authenticated yet (before the upgrade or in the handshake), by address, oldest first. */
  private readonly unauthenticated = new PendingHandshakes();
  /** Unauthenticated connections closed for newer ones since that was last logged, and when it was. */
  private evicted = 0;
  private evictedLoggedAt = -Infinity;
  private poolInstance?: WorkerPool;
  private readonly cache: PackCache;
  private readonly bucket?: TokenBucket;
  private readonly log: (line: string) => void;
  /** A temporary folder for chunk stores when no cache folder is given; removed by close(). */
  private storeTmp?: string;
  /** The lock this site holds on its --cache-dir (removed at close). */
  private cacheLock?: string;
  /** --cache-dir, unless its disk was full at start (then the site runs as without it). */
  private cacheDirInUse?: string;
  /** Stops marking storeTmp as in use (see makeTempStoreFolder). */
  private stopMarkingStoreTmp?: () => void;
  /** Set once close() began: background work it stops is not reported as failed. */
  private closing = false;
  /** Temporary store folders of killed sites removed on start (logged once listening). */
  private sweptStoreFolders = 0;
  /** The URL the site listens on, once started. */
  url = '';

  constructor(private readonly opts: ServeOptions) {
    this.cache = new PackCache(opts.cacheBytes ?? 48 << 20);
    this.bucket = opts.bwlimit ? new TokenBucket(opts.bwlimit) : undefined;
    this.log = opts.log ?? (() => undefined);
    this.cacheDirInUse = opts.cacheDir;
  }

  private get pool(): WorkerPool {
    if (!this.poolInstance) {
      // Scans and long transfers would otherwise grow the main heap with the company (see heap.ts); before the pool,
      // so that the workers' start is seen.
      boundHeapGrowth();
      // The companies' paths are made from their folders' real paths (start): every file read is checked to be there.
      this.poolInstance = new WorkerPool(this.opts.workers, { exactPaths: true });
    }
    return this.poolInstance;
  }

  /** Checks the companies, binds the port, and starts indexing the companies in the background. */
  async start(): Promise<string> {
    this.refuseCacheInCompany();
    if (this.opts.cacheDir) {
      // A full disk (the company's own programs filled it) must not keep the site from serving: its cache is only an
      // accelerator. Served as without --cache-dir then (scan caches in memory, stores in the temporary folder).
      const withoutCache = (err: unknown) => {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC' && toSnapferryError(err).code !== ErrorCodes.DISK_FULL) return false;
        this.log(`--cache-dir ${this.opts.cacheDir} not used: its disk is full; serving without it`);
        this.cacheDirInUse = undefined;
        return true;
      };
      try {
        makeDirs(this.opts.cacheDir, 0o700);
      } catch (err) {
        if (!withoutCache(err)) fail(ErrorCodes.USAGE, `--cache-dir ${this.opts.cacheDir} cannot be made: ${dirProblem(err)}`);
      }
      // One site per cache folder: two would append to the same stores and scan caches, and one's compaction drop
      // segments the other still reads.
      const lock = path.join(this.opts.cacheDir, 'serve.lock');
      let holder: number | 'starting' | undefined;
      try {
        if (this.cacheDirInUse) holder = tryLockFile(lock);
      } catch (err) {
        if (!withoutCache(err)) throw err;
      }
      if (holder !== undefined) {
        fail(ErrorCodes.DIR_LOCKED, `--cache-dir ${this.opts.cacheDir} is in use by ${holderName(holder, 'serve')}; give each site its own`);
      }
      if (this.cacheDirInUse) this.cacheLock = lock;
    }
    for (const [name, dir] of this.opts.companies) {
      if (!COMPANY_NAME.test(name)) fail(ErrorCodes.USAGE, `company name ${JSON.stringify(name)}: ${COMPANY_NAME_RULE}`);
      let real: string;
      try {
        real = fs.realpathSync(dir);
        if (!fs.statSync(real).isDirectory()) throw new Error('not a folder');
      } catch (err) {
        fail(ErrorCodes.USAGE, `company ${name}: folder ${dir} cannot be served (${fsProblem(err)})`);
      }
      const cacheFile = this.cacheDirInUse ? path.join(this.cacheDirInUse, `${name}.scan`) : undefined;
      this.companies.set(name, { name, scanner: new CompanyScanner(real, this.pool, this.opts.chunkParams, cacheFile), layouts: new WeakMap(), readers: new Map() });
    }
    if (this.opts.store !== false) await this.openStores();
    // Idle or slow HTTP clients must not hold sockets for long: Node checks header and request deadlines every second.
    const server = http.createServer({ connectionsCheckingInterval: 1000, headersTimeout: 10_000, requestTimeout: 10_000 }, (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' }).end('snapferry site: use a snapferry client\n');
    });
    const maxConnections = this.opts.maxConnections ?? 256;
    const maxUnauthenticated = Math.max(1, this.opts.maxUnauthenticated ?? 64);
    // Raw TCP connections are capped too, so sockets cannot pile up to the fd limit. Unauthenticated ones never exceed
    // their budget (the oldest is closed first, below), so only this cap's margin is reached by them, never the cap:
    // authenticated sessions (at most maxConnections, plus handshakes admitted below the cap that complete once it is
    // reached, at most one budget), the budget, and a few spare for sessions still closing.
    server.maxConnections = maxConnections * (1 + FOLLOWERS_PER_CONNECTION) + 2 * maxUnauthenticated + 16;
    // A puller never sends anything large (its biggest message is a GET of 32 KiB): a small cap keeps an
    // unauthenticated peer from making the site buffer megabytes.
    const wss = new WebSocketServer({
      noServer: true,
      maxPayload: 64 << 10,
      perMessageDeflate: false,
    });
    server.on('connection', (socket: net.Socket) => {
      // Until the upgrade, a socket that sends nothing for 10 s is dropped; sessions have their own timeouts.
      socket.setTimeout(10_000, () => socket.destroy());
      // Budget full: an older connection that has not authenticated makes room, the oldest of the address holding the
      // most. Refusing the newcomer instead would let whoever holds the budget lock every branch out; closing the
      // oldest of all let a party opening connections faster than a branch's handshake (milliseconds) close the
      // branch's every time; now a flood from one address closes its own.
      if (this.unauthenticated.size >= maxUnauthenticated) {
        this.unauthenticated.takeForEviction()?.destroy();
        this.noteEvicted(maxUnauthenticated);
      }
      this.unauthenticated.add(socket);
    });
    server.on('upgrade', (req, socket, head) => {
      (socket as net.Socket).setTimeout(0);
      // First: a peer that resets the connection while we answer it would otherwise crash the site (ECONNRESET).
      socket.on('error', () => socket.destroy());
      // Only authenticated sessions fill the site; connections in their handshake are bounded by their own budget.
      if (this.authenticated.size - this.following.size >= maxConnections) {
        // A peer that never closes its side must not keep the socket half-open (the server allows half-open sockets).
        const t = setTimeout(() => socket.destroy(), 2000);
        socket.once('close', () => clearTimeout(t));
        socket.end(`HTTP/1.1 503 Service Unavailable\r\n${BUSY_HEADER}: connections\r\nConnection: close\r\n\r\n`);
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, socket as net.Socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch(async (err) => {
      // Nothing of this site may outlive it: its temporary store folder, its stores and workers go now.
      await this.close().catch(() => undefined);
      throw listenError(err, this.opts.host, this.opts.port);
    });
    // Said only by a site that runs: one that cannot listen has one thing to say.
    if (this.sweptStoreFolders > 0) this.log(`removed ${this.sweptStoreFolders} chunk store folder(s) left in ${os.tmpdir()} by sites that were killed`);
    this.http = server;
    this.wss = wss;
    const addr = server.address() as { address: string; port: number };
    const host = addr.address.includes(':') ? `[${addr.address}]` : addr.address;
    this.url = `ws://${host}:${addr.port}`;
    for (const c of this.companies.values()) {
      c.scanner.scan({ settleTimeoutMs: this.opts.settleTimeoutMs }).then(
        (g) => this.sayIndexed(c, g),
        (err) => this.logFailure(`indexing ${c.name} failed: ${toSnapferryError(err).message}`),
      );
      // Keep the index current as the company changes, so a pull finds its generation ready (and followers hear of it).
      if (this.opts.watch !== false) this.watcherOf(c);
    }
    return this.url;
  }

  /**
   * Logs a failure of background work (indexing, watching, storing), unless the site is closing: close() stops that
   * work itself (its workers end), and a clean shutdown must not say that something failed.
   */
  private logFailure(line: string): void {
    if (!this.closing) this.log(line);
  }

  /** Stops accepting, ends sessions, stops workers. */
  async close(): Promise<void> {
    this.closing = true;
    this.sayUnsaidRefusals();
    for (const c of this.companies.values()) c.watcher?.stop();
    // A copy: a session leaves the set as soon as its close frame is sent, and those are the ones cut below.
    const open = [...this.sessions];
    for (const ch of open) ch.close(1001, 'site shutting down');
    this.wss?.close();
    const closed = new Promise<void>((r) => (this.http ? this.http.close(() => r()) : r()));
    // Connections that are no session yet end now: once close has begun Node no longer times out a request still
    // arriving, and a peer trickling header bytes (or a branch that lost power mid-upgrade) held the stop for minutes.
    this.http?.closeAllConnections?.();
    this.unauthenticated.destroyAll();
    // Sessions have a few seconds to answer their close frame; then they are cut (a branch that had stopped reading
    // held the stop for ws's 30 s).
    const cut = setTimeout(() => {
      for (const ch of open) ch.abort(new SnapferryError(ErrorCodes.CONNECTION_LOST, 'site shutting down'));
      this.http?.closeAllConnections?.();
    }, CLOSE_GRACE_MS);
    await closed;
    clearTimeout(cut);
    await this.poolInstance?.close();
    await Promise.all([...this.companies.values()].map((c) => c.store?.close()));
    this.stopMarkingStoreTmp?.();
    if (this.storeTmp) fs.rmSync(this.storeTmp, { recursive: true, force: true });
    // Only while it is still this site's: a cache folder removed while it ran may since hold another site's lock.
    if (this.cacheLock && lockOwnedHere(this.cacheLock)) fs.rmSync(this.cacheLock, { force: true });
    this.cacheLock = undefined;
  }

  /**
   * Refuses a --cache-dir, or without one the chunk store's temporary folder, at or inside a company's folder: the site
   * would serve its own cache (each write to it a change, so a new generation for ever, carried to every branch).
   * Checked before anything is made, on real paths (a folder not made yet by its nearest existing parent's).
   */
  private refuseCacheInCompany(): void {
    const cache = this.opts.cacheDir
      ? { dir: this.opts.cacheDir, what: `--cache-dir ${this.opts.cacheDir}`, fix: 'put it outside every company' }
      : this.opts.store !== false
        ? { dir: os.tmpdir(), what: `the chunk store's temporary folder ${os.tmpdir()} (TMPDIR)`, fix: 'give serve a --cache-dir outside every company, or --no-store' }
        : undefined;
    if (!cache) return;
    const holder = companyHolding(realPathOf(cache.dir), this.opts.companies);
    if (holder) fail(ErrorCodes.USAGE, `${cache.what} is inside company ${holder[0]}'s folder ${holder[1]}: the site would serve its own cache; ${cache.fix}`);
  }

  /**
   * Opens each company's chunk store. One that cannot be made (no room, no permission) is only logged: the site then
   * compresses on demand, as without a store.
   */
  private async openStores(): Promise<void> {
    const hasher = await loadHasher();
    // Checked here too: a --cache-dir given up for a full disk left the temporary folder unchecked (one inside a
    // company would be served, each write a new generation). Without --cache-dir, start() refused it already.
    const tmpInCompany = !this.cacheDirInUse && this.opts.cacheDir !== undefined && companyHolding(realPathOf(os.tmpdir()), this.opts.companies) !== undefined;
    for (const c of this.companies.values()) {
      try {
        let dir: string;
        if (this.cacheDirInUse) dir = path.join(this.cacheDirInUse, `${c.name}.chunks`);
        else {
          if (tmpInCompany) {
            this.log(`chunk store for ${c.name} not kept: the temporary folder ${os.tmpdir()} is inside a company's folder`);
            continue;
          }
          if (!this.storeTmp) {
            const t = makeTempStoreFolder(os.tmpdir());
            this.storeTmp = t.dir;
            this.stopMarkingStoreTmp = t.stop;
            this.sweptStoreFolders = t.removed;
          }
          // Named as in --cache-dir: a company called "owner" would otherwise be the folder's owner file.
          dir = path.join(this.storeTmp, `${c.name}.chunks`);
        }
        c.store = ChunkStore.open(dir, hasher);
      } catch (err) {
        this.log(`chunk store for ${c.name} not kept: ${(err as Error).message}`);
      }
    }
  }

  /**
   * Stores the chunks of a new generation in the background (once per generation; a newer one supersedes it) and logs
   * "stored NAME: generation G ..." when done, so an operator (and the bench) sees when pulls are only reads.
   */
  private fill(c: Company, g: Generation): void {
    if (!c.store) return;
    if (c.fillGeneration !== undefined && c.fillGeneration >= g.generation && !this.fillAgain(c, g)) return;
    c.fillCut = undefined;
    c.fillGeneration = g.generation;
    const store = c.store;
    const current = () => c.fillGeneration === g.generation;
    const work = async () => {
      if (!current()) return;
      const layout = this.layoutFor(c, g);
      const started = performance.now();
      const r = await fillStore(store, this.pool, g, layout, this.opts.storeLevel ?? 1, current);
      if (r.superseded) return;
      const secs = ((performance.now() - started) / 1000).toFixed(2);
      if (r.reserveKept !== undefined) {
        c.fillCut = { at: performance.now(), free: diskSpace(store.dir)?.free ?? 0 };
        this.log(`storing ${c.name} generation ${g.generation} stopped to keep ${formatBytes(r.reserveKept)} free on the disk of ${store.dir} (${r.chunks} chunks stored; pulls compress the others on demand)`);
      } else {
        this.log(`stored ${c.name}: generation ${g.generation}, ${r.chunks} chunks (${r.bytes} bytes) compressed in ${secs} s${r.stale ? ` (${r.stale} chunks of files changed since the scan left to the next generation)` : ''}; store ${store.size} chunks, ${store.bytes} bytes`);
      }
      // Chunks no longer in the newest generation are dropped once they weigh as much as those in it, so the store
      // stays within about twice the company's compressed size however many generations pass.
      if (!current()) return;
      const k = await store.compact(idWords(layout.id), layout.total);
      if (!k.compacted) return;
      if (k.reserveKept !== undefined) {
        this.log(`emptied ${c.name}'s chunk store (${k.chunksBefore} chunks, ${formatBytes(k.bytesBefore)}, half or more of no current generation): no room to compact it and keep ${formatBytes(k.reserveKept)} free on the disk of ${store.dir}; storing generation ${g.generation} again`);
      } else {
        this.log(`compacted ${c.name}'s chunk store: ${k.chunksBefore} -> ${k.chunksAfter} chunks, ${formatBytes(k.bytesBefore)} -> ${formatBytes(k.bytesAfter)}`);
      }
      // The segments it deleted may include those the workers append to: their descriptors would hold the disk.
      await this.pool.runOnEach({ kind: 'releaseSegment' });
      if (k.reserveKept !== undefined && current()) {
        c.fillGeneration = undefined;
        this.fill(c, g);
      }
    };
    c.storeWork = (c.storeWork ?? Promise.resolve()).then(work).catch((err) => {
      if (current()) c.fillCut = { at: performance.now() };
      this.logFailure(`storing ${c.name} generation ${g.generation} failed (pulls compress on demand): ${toSnapferryError(err).message}`);
    });
  }

  /**
   * Whether a pull of generation `g`, whose fill was cut short, should try it again: FILL_RETRY_MS after it, and for a
   * fill stopped at the disk's reserve only once the disk has FILL_RETRY_ROOM more free (not a log line a minute).
   */
  private fillAgain(c: Company, g: Generation): boolean {
    const cut = c.fillCut;
    if (!cut || c.fillGeneration !== g.generation || performance.now() - cut.at < FILL_RETRY_MS) return false;
    if (cut.free === undefined) return true;
    const free = diskSpace(c.store!.dir)?.free;
    return free !== undefined && free >= cut.free + FILL_RETRY_ROOM;
  }

  /** Cache statistics (fan-out). */
  get cacheStats(): { hits: number; misses: number } {
    return { hits: this.cache.hits, misses: this.cache.misses };
  }

  /** Logs closing unauthenticated connections for newer ones: the first at once, then at most once a minute. */
  private noteEvicted(budget: number): void {
    this.evicted++;
    const now = performance.now();
    if (now - this.evictedLoggedAt < 60_000) return;
    this.log(`closed ${this.evicted} connection(s) that had not authenticated, the oldest of the address holding the most, to make room for newer ones (${budget} at once)`);
    this.evicted = 0;
    this.evictedLoggedAt = now;
  }

  /**
   * Logs the end of a connection that never authenticated: the first REFUSALS_LOGGED_PER_MINUTE of a minute one by one,
   * the rest counted and said in one line when the minute is over (or the site stops). One line per refusal let a peer
   * without the secret write the log as fast as it could open connections.
   */
  private noteRefusal(line: string): void {
    const r = this.refusals;
    // The minute on the monotonic clock (a wall clock stepped back an hour held the count back an hour); its start on
    // the wall clock only to be said.
    const now = performance.now();
    if (now - r.since >= 60_000) {
      this.sayUnsaidRefusals();
      r.since = now;
      r.sinceWall = Date.now();
      r.logged = 0;
    }
    if (r.logged < REFUSALS_LOGGED_PER_MINUTE) {
      r.logged++;
      this.log(line);
      return;
    }
    r.unsaid++;
    r.timer ??= setTimeout(() => this.sayUnsaidRefusals(), r.since + 60_000 - now).unref();
  }

  /** Says how many refusals noteRefusal counted without logging them, if any. */
  private sayUnsaidRefusals(): void {
    const r = this.refusals;
    clearTimeout(r.timer);
    r.timer = undefined;
    if (r.unsaid === 0) return;
    this.log(`${r.unsaid} more connection(s) that did not authenticate were refused or ended since ${new Date(r.sinceWall).toISOString()} (${REFUSALS_LOGGED_PER_MINUTE} a minute are logged one by one)`);
    r.unsaid = 0;
  }

  private readonly refusals: { since: number; sinceWall: number; logged: number; unsaid: number; timer?: NodeJS.Timeout } = { since: -Infinity, sinceWall: 0, logged: 0, unsaid: 0 };

  private onConnection(ws: WebSocket, socket: net.Socket): void {
    // A peer that stops reading ends its session after the idle timeout, and one that sends without waiting for
    // answers is cut off: a puller never has more than its 64 requests in flight (GETs of at most 32 KiB) unread.
    const channel = new Channel(ws, { highWater: 4 << 20, drainTimeoutMs: this.opts.idleTimeoutMs ?? 120_000, maxQueuedMessages: 256, maxQueuedBytes: 8 << 20 });
    this.sessions.add(channel);
    channel.onClose = () => {
      this.sessions.delete(channel);
      this.authenticated.delete(channel);
      this.following.delete(channel);
    };
    const remote = (ws as unknown as { _socket?: { remoteAddress?: string } })._socket?.remoteAddress ?? '?';
    let authenticated = false;
    accept(channel, this.opts.secretFor, this.opts.handshakeTimeoutMs ?? 10_000)
      .then((session) => {
        authenticated = true;
        // Out of the unauthenticated budget (it cannot be closed for a newcomer any more), into maxConnections.
        this.unauthenticated.delete(socket);
        if (!channel.isClosed) this.authenticated.add(channel);
        return this.serveSession(session);
      })
      .catch((err) => {
        const e = toSnapferryError(err);
        let line: string | undefined;
        if (e.code === ErrorCodes.AUTH) line = `refused ${remote}: authentication failed`;
        else if (e.code !== ErrorCodes.CONNECTION_LOST) line = `session from ${remote} ended: ${e.message}`;
        if (line) authenticated ? this.log(line) : this.noteRefusal(line);
      })
      // A peer that never authenticated gets no graceful close (it would hold the socket for ws's 30 s close timeout).
      .finally(() => (authenticated ? channel.close() : setTimeout(() => channel.abort(new SnapferryError(ErrorCodes.AUTH, 'not authenticated')), 100)));
  }

  private layoutFor(company: Company, gen: Generation): Layout {
    let l = company.layouts.get(gen);
    if (!l) {
      l = layoutOf(gen.manifest);
      company.layouts.set(gen, l);
    }
    return l;
  }

  /** One authenticated session: OPEN, then GET/PATCH_GET until BYE. */
  private async serveSession(session: SecureSession): Promise<void> {
    const idle = this.opts.idleTimeoutMs ?? 120_000;
    let gen: Generation | undefined;
    let company: Company | undefined;
    let inFlight = 0;
    const maxInFlight = 64;
    const answers = new ByteGate(ANSWER_BUDGET_BYTES, maxInFlight);
    let failure: SnapferryError | undefined;
    const work: Array<Promise<void>> = [];
    let reading: { c: Company; root: string } | undefined;
    /** The session's one pending follow (a new FOLLOW replaces it), and the companies it has scanned for. */
    let follow: (() => void) | undefined;
    const followScans = new Map<Company, Promise<boolean>>();
    const stopReading = () => {
      if (!reading) return;
      const n = (reading.c.readers.get(reading.root) ?? 1) - 1;
      if (n <= 0) reading.c.readers.delete(reading.root);
      else reading.c.readers.set(reading.root, n);
      reading = undefined;
    };
    try {
      for (;;) {
        if (failure) throw failure;
        const msg = await session.recv(idle);
        switch (msg[0]) {
          case MsgType.OPEN: {
            // A session that pulls counts as one whatever it followed before.
            this.following.delete(session.channel);
            const open = decodeJson<OpenMsg>(msg);
            company = this.companies.get(textOf(open.company));
            if (!company) {
              const e = new SnapferryError(ErrorCodes.UNKNOWN_COMPANY, `this site serves no company named ${JSON.stringify(textOf(open.company).slice(0, 100))}`);
              await session.sendError(e);
              return;
            }
            try {
              // The watcher's generation when it can vouch that nothing changed since; otherwise a scan (of what changed).
              gen = (await company.watcher?.settledGeneration()) ?? (await company.scanner.scan({ settleTimeoutMs: this.opts.settleTimeoutMs }));
            } catch (err) {
              const e = toSnapferryError(err);
              // What the site refuses to offer (a special file, a link out, a copy's state folder) is the site's to fix.
              if (e.code === ErrorCodes.UNSAFE_TREE) this.log(`cannot offer ${company.name}: ${e.message}`);
              await session.sendError(e);
              return;
            }
            this.fill(company, gen);
            stopReading();
            reading = { c: company, root: gen.rootHash };
            company.readers.set(gen.rootHash, (company.readers.get(gen.rootHash) ?? 0) + 1);
            await this.sendManifest(session, company.name, gen, open.have);
            break;
          }
          case MsgType.GET:
          case MsgType.PATCH_GET: {
            if (!gen || !company) fail(ErrorCodes.PROTOCOL, 'request before OPEN');
            if (inFlight >= maxInFlight) fail(ErrorCodes.PROTOCOL, 'too many requests in flight');
            inFlight++;
            const g = gen;
            const c = company;
            const p = (msg[0] === MsgType.GET ? this.answerGet(session, c, g, msg, answers) : this.answerPatch(session, c, g, msg, answers))
              .catch((err) => {
                // A company file the site may no longer read (made mode 000 since the scan) is the site's I/O error,
                // not the branch's "folder not writable" (the code a permission error carries otherwise).
                failure ??= siteReadError(err);
                // The peer is told in any case; a fault of the site's own is worth its log too.
                if (failure.code === ErrorCodes.INTERNAL || failure.code === ErrorCodes.IO) this.log(`answering ${printable(session.peerId)} failed: ${failure.message}`);
                session.sendError(failure).finally(() => session.close());
              })
              .finally(() => inFlight--);
            work.push(p);
            if (work.length > 256) work.splice(0, 128);
            break;
          }
          case MsgType.FOLLOW: {
            const f = decodeJson<{ company?: unknown; have?: unknown }>(msg);
            const c = this.companies.get(textOf(f.company));
            if (!c) {
              await session.sendError(new SnapferryError(ErrorCodes.UNKNOWN_COMPANY, `this site serves no company named ${JSON.stringify(textOf(f.company).slice(0, 100))}`));
              return;
            }
            follow?.();
            // One scan per company and session, as a single follower causes: later FOLLOWs compare with its result.
            let scanned = followScans.get(c);
            if (!scanned) {
              scanned = c.scanner.scan({ settleTimeoutMs: this.opts.settleTimeoutMs }).then(() => true, () => false);
              followScans.set(c, scanned);
            }
            follow = this.followerOf(c, session, textOf(f.have ?? ''), scanned);
            // A waiting follower holds a socket and little else: counted apart, within its own bound.
            if (this.following.size < (this.opts.maxConnections ?? 256) * FOLLOWERS_PER_CONNECTION) this.following.add(session.channel);
            break;
          }
          case MsgType.PING:
            await session.send(Buffer.from([MsgType.PONG]));
            break;
          case MsgType.BYE:
            await Promise.allSettled(work);
            return;
          default:
            fail(ErrorCodes.PROTOCOL, `unexpected message type ${msg[0]}`);
        }
      }
    } finally {
      stopReading();
      follow?.();
      this.following.delete(session.channel);
    }
  }

  /** Logs a generation once, whichever of the first scan and the watcher finds it first. */
  private sayIndexed(c: Company, g: Generation): void {
    if (c.saidGeneration === g.generation) return;
    c.saidGeneration = g.generation;
    // The chunk size is named when it is not the default: a large company's (chunkParamsFor), which its deltas show.
    const avg = g.manifest.params.avgSize;
    const size = avg === DEFAULT_CHUNK_PARAMS.avgSize ? '' : `, chunks of ${formatBytes(avg)} on average`;
    this.log(`indexed ${c.name}: generation ${g.generation}, ${g.manifest.entries.length} entries, ${c.scanner.lastBytesRead} bytes read${size}`);
    this.fill(c, g);
  }

  /**
   * A follower waits for a generation other than the one it holds: told at once if the company already moved on,
   * otherwise as soon as the watcher announces one.
   */
  private watcherOf(c: Company): CompanyWatcher {
    if (!c.watcher) {
      c.watcher = new CompanyWatcher(c.scanner, { settleTimeoutMs: this.opts.settleTimeoutMs });
      c.watcher.on('error', (err) => this.logFailure(`watching ${c.name}: ${toSnapferryError(err).message}`));
      // Said the same way as the first index, so an operator (and the bench) sees when a change is ready to pull.
      c.watcher.on('generation', (g: Generation) => this.sayIndexed(c, g));
      c.watcher.setMaxListeners(0);
      c.watcher.start();
    }
    return c.watcher;
  }

  /**
   * Tells the session of the first generation other than `have`: the newest once `scanned` ended (the last good one if
   * it failed), or the next the watcher announces. Returns a function that stops it (the session ended or sent another FOLLOW).
   */
  private followerOf(c: Company, session: SecureSession, have: string, scanned: Promise<boolean>): () => void {
    const watcher = this.watcherOf(c);
    let told = false;
    const tell = (g: Generation | undefined) => {
      if (told || !g || g.rootHash === have) return;
      stop();
      session.sendJson(MsgType.CHANGED, { company: c.name, generation: g.generation, rootHash: g.rootHash }).catch(() => undefined);
    };
    const stop = () => {
      told = true;
      watcher.off('generation', tell);
    };
    watcher.on('generation', tell);
    // Told of the current generation even when the scan failed (a file that would not hold still): the watcher
    // announces only a tree unlike the one it announced last, so a follower that missed that announcement (away
    // while it came) and met a failed scan on its return would wait for ever at its old generation.
    void scanned.then(() => tell(c.scanner.current));
    return stop;
  }

  private readonly adaptive = new WeakMap<SecureSession, { step: number; sends: number; waits: number }>();

  /**
   * The session's zstd level: fixed by the operator, or adapted every 64 packs to the link. A link that held the data
   * back (sends waited for the socket) moves a step towards level 1, the best ratio on company data; one that never
   * did moves a step towards no compression, where CPU is the only cost (LAN, loopback).
   */
  private levelFor(session: SecureSession): number {
    if (this.opts.level !== undefined) return this.opts.level;
    let a = this.adaptive.get(session);
    if (!a) {
      a = { step: 0, sends: 0, waits: session.channel.waits };
      this.adaptive.set(session, a);
    }
    if (++a.sends >= 64) {
      const waited = session.channel.waits - a.waits;
      if (waited === 0) a.step = Math.min(LEVEL_LADDER.length - 1, a.step + 1);
      else if (waited >= 4) a.step = Math.max(0, a.step - 1);
      a.sends = 0;
      a.waits = session.channel.waits;
    }
    return LEVEL_LADDER[a.step]!;
  }

  private async sendManifest(session: SecureSession, name: string, gen: Generation, have: string | undefined): Promise<void> {
    const unchanged = have === gen.rootHash;
    const partSize = 1 << 20;
    const parts = unchanged ? 0 : Math.ceil(gen.encoded.length / partSize);
    const head: ManifestMsg & { unchanged: boolean } = {
      company: name,
      generation: gen.generation,
      rootHash: gen.rootHash,
      encodedSize: gen.encoded.length,
      parts,
      unchanged,
    };
    if (gen.heldBack) {
      head.heldBack = gen.heldBack.slice(0, MAX_HELD_NAMES);
      head.heldBackCount = gen.heldBack.length;
      this.log(`${name}: generation ${gen.generation} sent with ${heldBackText(head.heldBack, head.heldBackCount)}`);
    }
    await session.sendJson(MsgType.MANIFEST, head);
    const z = new Compressor();
    for (let i = 0; i < parts; i++) {
      const raw = gen.encoded.subarray(i * partSize, Math.min(gen.encoded.length, (i + 1) * partSize));
      const packed = z.compress(raw, 3);
      const hdr = Buffer.from([MsgType.MANIFEST_PART, packed ? 1 : 0, 0, 0, 0, 0]);
      hdr.writeUInt32BE(raw.length, 2);
      const part = packed ?? raw;
      // Within --bwlimit too: a large company's manifest is megabytes, sent at line speed before.
      if (!(await this.withinRate(session, part.length + hdr.length))) return;
      await session.send([hdr, part]);
    }
  }

  private async answerGet(session: SecureSession, company: Company, gen: Generation, msg: Buffer, answers: ByteGate): Promise<void> {
    const req = decodeGet(msg);
    const layout = this.layoutFor(company, gen);
    let n = 0;
    let bytes = 0;
    for (const [s, e] of req.ranges) {
      if (e > layout.total) fail(ErrorCodes.PROTOCOL, 'GET names chunks beyond the manifest');
      n += e - s;
      // Checked per chunk: a range may span the whole company, and refusing it need not walk it.
      for (let g = s; g < e; g++) {
        bytes += layout.len[g]!;
        if (bytes > MAX_GET_BYTES) fail(ErrorCodes.LIMIT, 'GET asks for too many bytes at once');
      }
    }
    await this.withinBudget(session, answers, bytes, () => this.sendPack(session, company, gen, layout, req, n, bytes));
  }

  /**
   * Makes and sends one answer of `bytes` chunk bytes within the session's answer budget; skipped when the session has
   * closed while it waited.
   */
  private async withinBudget(session: SecureSession, answers: ByteGate, bytes: number, answer: () => Promise<void>): Promise<void> {
    await answers.take(bytes);
    try {
      if (!session.channel.isClosed) await answer();
    } finally {
      answers.give(bytes);
    }
  }

  /** Tells the session a read found `absPath` changed since the scan, and has the scanner read it again next time. */
  private async answerStale(session: SecureSession, company: Company, reqId: number, absPath: string): Promise<void> {
    const rel = path.relative(company.scanner.root, absPath).split(path.sep).join('/');
    company.scanner.invalidate(rel);
    await session.sendJson(MsgType.STALE, { reqId, path: rel });
  }

  /** Answers a checked GET: stored frames where the store has them all, else a pack read and compressed now. */
  private async sendPack(session: SecureSession, company: Company, gen: Generation, layout: Layout, req: GetMsg, n: number, bytes: number): Promise<void> {
    // Stored frames are sent as they are: no reading of the company, no compression. Those of incompressible chunks
    // are a few bytes larger than the chunks (a frame's header, 3 bytes a block): sent too, within 1/256 of the raw
    // size (refused, such packs were read from the store, thrown away, then read and compressed again). A pack not
    // wholly stored (yet) is made as before.
    const stored = await company.store?.readFrames(idWords(layout.id), layout.len, req.ranges);
    if (stored && stored.length <= bytes + Math.ceil(bytes / 256) && stored.length + DATA_HEADER_ROOM <= MAX_MESSAGE) {
      await this.sendAnswer(session, [encodeDataHeader(req.reqId, true, bytes), stored], stored.length);
      noteGarbage(stored.length * 2, ANSWER_GARBAGE_EVERY);
      return;
    }
    const shared = (company.readers.get(gen.rootHash) ?? 0) > 1;
    // Shared packs are compressed once for every branch: at one level for all (so they match), the best ratio.
    // (The operator's --level holds for shared packs too: `none` or 19 had become 1 as soon as two branches pulled.)
    const level = shared ? (this.opts.level ?? LEVEL_LADDER[0]!) : this.levelFor(session);
    const key = `${gen.rootHash}:${level}:${req.ranges.map(([s, e]) => `${s}-${e}`).join(',')}`;
    const read = () => {
      const gs = new Uint32Array(n);
      let k = 0;
      for (const [s, e] of req.ranges) for (let g = s; g < e; g++) gs[k++] = g;
      const job: ReadPackJob = { kind: 'readPack', ...chunkSources(layout, gen.absPath, gs), level };
      return this.pool.run<ReadPackResult>(job);
    };
    const result = await (shared ? this.cache.get(key, read) : read());
    if ('stale' in result) return this.answerStale(session, company, req.reqId, result.stale);
    const payload = Buffer.from(result.payload.buffer, result.payload.byteOffset, result.payload.byteLength);
    await this.sendAnswer(session, [encodeDataHeader(req.reqId, result.compressed, result.rawLen), payload], payload.length);
    noteGarbage(payload.length * 2, ANSWER_GARBAGE_EVERY);
  }

  /**
   * Sends an answer within --bwlimit (`rated` bytes of it counted). The cap is shared by the sessions in turn (see
   * TokenBucket); a session gone while its answer was made or waited takes no share of it.
   */
  private async sendAnswer(session: SecureSession, parts: Buffer[], rated: number): Promise<void> {
    if (session.channel.isClosed) return;
    if (!(await this.withinRate(session, rated))) return;
    await session.send(parts);
  }

  /**
   * Waits for `session`'s turn to send `bytes` within --bwlimit (at once without one); false if the session went away
   * meanwhile (it then took nothing from the cap).
   */
  private async withinRate(session: SecureSession, bytes: number): Promise<boolean> {
    return !this.bucket || this.bucket.take(bytes, session, () => session.channel.isClosed);
  }

  private async answerPatch(session: SecureSession, company: Company, gen: Generation, msg: Buffer, answers: ByteGate): Promise<void> {
    const req = decodePatchGet(msg);
    const layout = this.layoutFor(company, gen);
    // The answer's header (a bitmap of the blocks per run) counts too: the answer must fit in one frame.
    let bytes = PATCH_HEADER_BYTES;
    const runs: MakePatchJob['runs'] = req.runs.map((r) => {
      const end = r.chunk + r.count;
      if (end > layout.total) fail(ErrorCodes.PROTOCOL, 'PATCH_GET names chunks beyond the manifest');
      bytes += 4 + Math.ceil(r.sigs.length / 8);
      for (let k = r.chunk; k < end; k++) {
        if (layout.entry[k] !== layout.entry[r.chunk]) fail(ErrorCodes.PROTOCOL, 'PATCH_GET run spans files');
        bytes += layout.len[k]!;
        if (bytes > MAX_GET_BYTES) fail(ErrorCodes.LIMIT, 'PATCH_GET asks for too many bytes at once');
      }
      return {
        path: gen.absPath(layout.entry[r.chunk]!),
        offset: layout.offset[r.chunk]!,
        lens: layout.len.slice(r.chunk, end),
        ids: layout.id.slice(r.chunk, end),
        sigs: r.sigs,
      };
    });
    await this.withinBudget(session, answers, bytes, () => this.sendPatch(session, company, layout, req, runs));
  }

  /** Answers a checked PATCH_GET. */
  private async sendPatch(session: SecureSession, company: Company, layout: Layout, req: PatchGetMsg, runs: MakePatchJob['runs']): Promise<void> {
    const job: MakePatchJob = { kind: 'makePatch', runs, blockSize: req.blockSize, level: this.levelFor(session) };
    // Not moved to the worker: the runs go again with stored frames if the files no longer hold their chunks.
    let result = await this.pool.run<MakePatchResult>(job, false);
    if ('stale' in result) {
      // A file held back (it kept changing) is offered as it last was: its chunks may be gone from it and still be in
      // the store. Made from there, the patch is sent as a pack of them would be (sendPack); else the file changed.
      const stored = await company.store?.readFrames(idWords(layout.id), layout.len, req.runs.map((r) => [r.chunk, r.chunk + r.count] as const));
      if (stored) result = await this.pool.run<MakePatchResult>({ ...job, stored });
      if ('stale' in result) return this.answerStale(session, company, req.reqId, result.stale);
    }
    const payload = Buffer.from(result.payload.buffer, result.payload.byteOffset, result.payload.byteLength);
    const header = encodePatchHeader(req.reqId, result.compressed, result.rawLen, result.bitmaps);
    await this.sendAnswer(session, [header, payload], payload.length + header.length);
  }
}

/**
 * Why --listen HOST:PORT cannot be bound, in words and with the operator's code: a port in use; a port that needs
 * privileges, an address that is not this machine's or a host name that resolves to none are what --listen was given
 * (before: a port below 1024 was 'permission denied' as SNAPFERRY_E_DIR_NOT_WRITABLE, exit 73, a folder's error, and
 * an unknown name 'site unreachable').
 */
function listenError(err: unknown, host: string, port: number): SnapferryError {
  const where = `cannot listen on ${host}:${port}`;
  switch ((err as NodeJS.ErrnoException)?.code) {
    case 'EACCES':
    case 'EPERM':
      return new SnapferryError(ErrorCodes.USAGE, `${where}: permission denied (a port below 1024 needs root or the CAP_NET_BIND_SERVICE capability)`, { cause: err });
    case 'EADDRNOTAVAIL':
      return new SnapferryError(ErrorCodes.USAGE, `${where}: ${host} is not an address of this machine`, { cause: err });
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new SnapferryError(ErrorCodes.USAGE, `${where}: no such host name`, { cause: err });
    default:
      return toSnapferryError(err, where);
  }
}

/**
 * The company (its name and folder as given) whose real folder is real path `real` or holds it; undefined for none. A
 * folder that cannot be resolved holds nothing here: the site refuses it by name.
 */
export function companyHolding(real: string, companies: ReadonlyMap<string, string>): [name: string, dir: string] | undefined {
  for (const [name, dir] of companies) {
    let company: string;
    try {
      company = fs.realpathSync(dir);
    } catch {
      continue;
    }
    if (real === company || real.startsWith(company.endsWith(path.sep) ? company : company + path.sep)) return [name, dir];
  }
  return undefined;
}

/** The real path `p` has or would have once made: its nearest existing ancestor's real path, then the rest as given. */
function realPathOf(p: string): string {
  const abs = path.resolve(p);
  const rest: string[] = [];
  for (let at = abs; ; at = path.dirname(at)) {
    try {
      return path.join(fs.realpathSync(at), ...rest.reverse());
    } catch {
      if (path.dirname(at) === at) return abs;
      rest.push(path.basename(at));
    }
  }
}
