/**
 * Verify a DIR against the generation snapfery last applied to it. Fast mode compares metadata; deep mode reads every
 * byte once (segments hashed on the worker pool, both cores) and checks every chunk id, reporting damaged byte ranges.
 * The result also tells repair which local chunks are still good.
 */
import fs from 'node:fs';
import path from 'node:path';
import { StatePaths, readApplied, recover, recordAuthentic, DirLock, Applied } from '../store/state.js';
import { WorkerPool, defaultPoolSize } from '../work/pool.js';
import { SharedRunner } from '../work/shared.js';
import type { HashChunksResult } from '../work/tasks.js';
import { Entry, comparePaths, appliedMode, entryPath, sameMtime } from '../manifest/manifest.js';
import { SnapferryError, ErrorCodes } from '../util/errors.js';

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
}

/** What verify found. */
export interface VerifyResult {
  intact: boolean;
  damaged: Damage[];
  bytesRead: number;
  seconds: number;
  company?: string;
  generation?: number;
  rootHash?: string;
  /** true/false when checked with the secret; null when no secret was given. */
  recordAuthenticated: boolean | null;
}

/** Per file entry index: one flag per chunk, 1 when the chunk on disk is good (deep mode). */
export type GoodChunks = Map<number, Uint8Array>;

/** Options of verify. */
export interface VerifyOptions {
  deep?: boolean;
  secret?: Buffer;
  pool?: WorkerPool;
  /** Bytes hashed per job (bounded memory). */
  segmentBytes?: number;
  /** The caller already holds DIR's lock (repair). */
  locked?: boolean;
}

/** Checks one DIR. Throws STATE when there is nothing trustworthy to check against. */
export async function verifyDir(dir: string, opts: VerifyOptions = {}): Promise<VerifyResult & { good: GoodChunks; applied: Applied }> {
  const started = performance.now();
  const paths = new StatePaths(dir);
  const lock = new DirLock(paths);
  if (!fs.existsSync(paths.state)) throw new SnapferryError(ErrorCodes.NOT_A_COPY, `${paths.dir} holds no generation applied by snapferry (no ${paths.state})`);
  if (!opts.locked) await lock.acquire(0);
  try {
    recover(paths);
    const applied = readApplied(paths);
    if (!applied) throw new SnapferryError(ErrorCodes.STATE, `the record of what ${paths.dir} holds is missing; run repair to re-establish it from a peer`);
    let recordAuthenticated: boolean | null = null;
    if (opts.secret) {
      recordAuthenticated = recordAuthentic(applied.record, opts.secret);
      if (!recordAuthenticated) throw new SnapferryError(ErrorCodes.STATE, `the record of what ${paths.dir} holds is not authentic (tampered, or made with another secret); run repair`);
    }
    const damaged: Damage[] = [];
    const good: GoodChunks = new Map();
    let bytesRead = 0;
    // This thread hashes too: one worker fewer than cores, and no wait for them to boot.
    const ownPool = opts.deep && !opts.pool && defaultPoolSize() > 1 ? new WorkerPool(defaultPoolSize() - 1) : undefined;
    const runner = opts.deep ? new SharedRunner(await SharedRunner.localContext(), opts.pool ?? ownPool) : undefined;
    try {
      const deepJobs: Array<Promise<void>> = [];
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
        } catch {
          damaged.push({ path: e.path, problem: 'missing' });
          if (e.kind === 'dir') notFolders.add(e.path);
          continue;
        }
        const kindOk = e.kind === 'dir' ? st.isDirectory() : e.kind === 'symlink' ? st.isSymbolicLink() : st.isFile();
        if (!kindOk) {
          damaged.push({ path: e.path, problem: 'kind-changed' });
          if (e.kind === 'dir') notFolders.add(e.path);
          continue;
        }
        if (e.kind === 'symlink') {
          if (fs.readlinkSync(abs) !== e.target) damaged.push({ path: e.path, problem: 'link-changed' });
          continue;
        }
        const mode = Number(st.mode & 0o7777n);
        if (mode !== appliedMode(e.mode)) {
          damaged.push({ path: e.path, problem: 'mode-changed', expectedMode: appliedMode(e.mode).toString(8), actualMode: mode.toString(8) });
        }
        if (e.kind === 'dir') continue;
        const size = Number(st.size);
        if (size !== e.size) {
          damaged.push({ path: e.path, problem: size < e.size ? 'truncated' : 'grown', expectedSize: e.size, actualSize: size });
        } else if (!sameMtime(st.mtimeNs, e.mtimeNs)) {
          // In deep mode too: the copy promises the mtime, and repair mends only what verify reports.
          damaged.push({ path: e.path, problem: 'mtime-changed' });
        }
        if (runner && e.size > 0) deepJobs.push(checkFile(runner, abs, e, i, opts.segmentBytes ?? 64 << 20, damaged, good).then((n) => void (bytesRead += n)));
      }
      await Promise.all(deepJobs);
      for (const extra of extras(paths.dir, entries)) damaged.push({ path: extra, problem: 'extra' });
    } finally {
      await ownPool?.close();
    }
    damaged.sort((a, b) => comparePaths(a.path, b.path));
    return {
      intact: damaged.length === 0,
      damaged,
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

/** Deep-checks one file in bounded segments; records good chunks and damaged ranges. Returns bytes read. */
async function checkFile(runner: SharedRunner, abs: string, e: Entry, idx: number, segmentBytes: number, damaged: Damage[], good: GoodChunks): Promise<number> {
  const lens = e.lens!;
  const ok = new Uint8Array(lens.length);
  const jobs: Array<Promise<{ first: number; r: HashChunksResult }>> = [];
  let first = 0;
  let offset = 0;
  while (first < lens.length) {
    let end = first;
    let bytes = 0;
    while (end < lens.length && (end === first || bytes + lens[end]! <= segmentBytes)) bytes += lens[end++]!;
    const f = first;
    jobs.push(runner.run<HashChunksResult>({ kind: 'hashChunks', path: abs, offset, lens: lens.slice(first, end) }).then((r) => ({ first: f, r })));
    offset += bytes;
    first = end;
  }
  let read = 0;
  for (const { first: f, r } of await Promise.all(jobs)) {
    read += r.readable;
    for (let k = 0; k < r.ids.length; k++) if (r.ids[k] === e.ids![f + k]) ok[f + k] = 1;
  }
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
  const sizeProblem = damaged.some((d) => d.path === e.path && (d.problem === 'truncated' || d.problem === 'grown'));
  if (ranges.length > 0 && !sizeProblem) damaged.push({ path: e.path, problem: 'content-changed', ranges });
  else if (ranges.length > 0) {
    const d = damaged.find((x) => x.path === e.path && (x.problem === 'truncated' || x.problem === 'grown'))!;
    d.ranges = ranges;
  }
  return read;
}

/** Paths in DIR that the generation does not have. */
function extras(root: string, entries: Entry[]): string[] {
  const known = new Set(entries.map((e) => e.path));
  const dirs = new Set(entries.filter((e) => e.kind === 'dir').map((e) => e.path));
  const out: string[] = [];
  const walk = (rel: string) => {
    let names: string[];
    try {
      names = fs.readdirSync(rel ? path.join(root, rel) : root);
    } catch {
      return;
    }
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      if (!known.has(r)) out.push(r);
      else if (dirs.has(r)) walk(r);
    }
  };
  walk('');
  return out;
}
