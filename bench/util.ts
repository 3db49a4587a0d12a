/**
 * Shared helpers of the bench: options, child-process bookkeeping and cleanup, temp dirs, small formatting helpers.
 *
 * Every child the bench starts is spawned in its own process group and registered here, so that a normal end, an
 * error, SIGINT or SIGTERM kills the whole group (pipelines, rsync's forked helpers, `ip netns exec` children).
 * Synchronous cleanups (network namespaces, temp dirs) run from the process 'exit' handler, so they also run when
 * the bench is interrupted.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// ---------------------------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------------------------

export const ALL_SCENARIOS = ['micro', 'seed', 'delta', 'unchanged', 'verify', 'repair', 'small', 'fanout', 'memory', 'follow'] as const;
export type ScenarioName = (typeof ALL_SCENARIOS)[number];
export const ALL_TOOLS = ['snapferry', 'rsync', 'tar'] as const;
export type ToolName = (typeof ALL_TOOLS)[number];
export type LinkName = 'loopback' | 'shaped';

export interface Options {
  quick: boolean;
  json?: string;
  only: Set<ScenarioName>;
  tools: Set<ToolName>;
  links: Set<LinkName>;
  runs: number;
  /** Company size for the loopback link, MiB. */
  sizeMiB: number;
  /** Company size for the shaped link, MiB. */
  shapedSizeMiB: number;
  /** Company size for fan-out on the shaped link, MiB (10 copies cross a 100 Mbit/s link). */
  shapedFanoutSizeMiB: number;
  smallFiles: number;
  fanout: number;
  /** Data size for the micro benchmarks (and the worker pool scaling), MiB. */
  microMiB: number;
  /** Per-step timeout, ms. */
  stepTimeoutMs: number;
  /** Whole-bench budget, ms: once spent, remaining steps are skipped with a note. */
  budgetMs: number;
  tmp?: string;
  keep: boolean;
  /** Where the SVG chart goes (default bench/results/ratios.svg). */
  chart?: string;
}

export const USAGE = `usage: node dist/bench/main.js [--quick] [--json FILE] [--only SCENARIOS] [--runs N] [--size MIB]
       [--tools snapferry,rsync,tar] [--links loopback,shaped] [--shaped-size MIB] [--small-files N]
       [--fanout N] [--micro-size MIB] [--budget SECONDS] [--tmp DIR] [--keep] [--durable] [--chart FILE]

  SCENARIOS (comma-separated): ${ALL_SCENARIOS.join(', ')}, or e2e (= seed,delta,unchanged,verify,repair)
  --quick   small data, 1 run: every scenario in under 2 minutes on 2 cores (CI smoke, no thresholds)
  defaults: full = 1024 MiB company, 100000 small files, 10 fan-out pulls, 3 runs;
            quick = 64 MiB (16 MiB on the shaped link), 5000 small files, 3 fan-out pulls, 1 run
  memory: seeds of the company and of one 4x its size (4 GiB in full mode), each --runs times, peak RSS of each side
  follow: pull --follow on the company; seconds from an edit at the site to the branch's JSON line for it`;

export class UsageError extends Error {}

function list<T extends string>(v: string, allowed: readonly T[], what: string): Set<T> {
  const out = new Set<T>();
  for (const raw of v.split(',').map((s) => s.trim()).filter(Boolean)) {
    if (what === 'scenario' && raw === 'e2e') {
      for (const s of ['seed', 'delta', 'unchanged', 'verify', 'repair']) out.add(s as T);
      continue;
    }
    if (!allowed.includes(raw as T)) throw new UsageError(`unknown ${what} '${raw}' (one of: ${allowed.join(', ')})`);
    out.add(raw as T);
  }
  if (out.size === 0) throw new UsageError(`empty ${what} list`);
  return out;
}

function num(v: string | undefined, name: string, min: number): number {
  const n = Number(v);
  if (v === undefined || !Number.isFinite(n) || n < min) throw new UsageError(`${name} needs a number >= ${min}`);
  return n;
}

export function parseArgs(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const o: Options = {
    quick,
    only: new Set(ALL_SCENARIOS),
    tools: new Set(ALL_TOOLS),
    links: new Set<LinkName>(['loopback', 'shaped']),
    runs: quick ? 1 : 3,
    sizeMiB: quick ? 64 : 1024,
    shapedSizeMiB: quick ? 16 : 1024,
    shapedFanoutSizeMiB: quick ? 16 : 128,
    smallFiles: quick ? 5000 : 100_000,
    fanout: quick ? 3 : 10,
    microMiB: quick ? 32 : 256,
    stepTimeoutMs: quick ? 90_000 : 20 * 60_000,
    budgetMs: quick ? 170_000 : 6 * 3600_000,
    keep: false,
  };
  let shapedSizeGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--quick':
        break;
      case '--json':
        o.json = val();
        break;
      case '--chart':
        o.chart = val();
        break;
      case '--only':
        o.only = list(val(), ALL_SCENARIOS, 'scenario');
        break;
      case '--tools':
        o.tools = list(val(), ALL_TOOLS, 'tool');
        break;
      case '--links':
        o.links = list(val(), ['loopback', 'shaped'] as const, 'link');
        break;
      case '--runs':
        o.runs = Math.floor(num(val(), a, 1));
        break;
      case '--size':
        o.sizeMiB = num(val(), a, 1);
        break;
      case '--shaped-size':
        o.shapedSizeMiB = num(val(), a, 1);
        shapedSizeGiven = true;
        break;
      case '--small-files':
        o.smallFiles = Math.floor(num(val(), a, 1));
        break;
      case '--fanout':
        o.fanout = Math.floor(num(val(), a, 2));
        break;
      case '--micro-size':
        o.microMiB = num(val(), a, 1);
        break;
      case '--budget':
        o.budgetMs = num(val(), a, 1) * 1000;
        break;
      case '--tmp':
        o.tmp = val();
        break;
      case '--durable':
        // Read by bench/snapferry.ts: snapferry then flushes to disk before each commit, as it does by default.
        process.env.SNAPFERRY_BENCH_DURABLE = '1';
        break;
      case '--keep':
        o.keep = true;
        break;
      case '-h':
      case '--help':
        throw new UsageError('');
      default:
        throw new UsageError(`unknown option ${a}`);
    }
  }
  if (!shapedSizeGiven) o.shapedSizeMiB = quick ? Math.min(16, o.sizeMiB) : o.sizeMiB;
  o.shapedFanoutSizeMiB = Math.min(o.shapedFanoutSizeMiB, o.shapedSizeMiB);
  o.microMiB = Math.min(o.microMiB, Math.max(o.sizeMiB, 8));
  return o;
}

// ---------------------------------------------------------------------------------------------------------------
// Children and cleanup
// ---------------------------------------------------------------------------------------------------------------

const children = new Set<ChildProcess>();
const syncCleanups: Array<{ name: string; fn: () => void }> = [];

/** Registers a child spawned with `detached: true` (own process group): killed with its group on exit. */
export function track(cp: ChildProcess): void {
  if (cp.pid === undefined) return;
  children.add(cp);
  cp.once('close', () => children.delete(cp));
}

/** Signals a child's whole process group (it was spawned detached, so the group id is its pid). */
export function killGroup(cp: ChildProcess, sig: NodeJS.Signals): void {
  if (cp.pid === undefined || cp.exitCode !== null || cp.signalCode !== null) {
    // The leader is gone but members of its group may not be.
    if (cp.pid !== undefined) {
      try {
        process.kill(-cp.pid, sig);
      } catch {
        /* group empty */
      }
    }
    return;
  }
  try {
    process.kill(-cp.pid, sig);
  } catch {
    try {
      cp.kill(sig);
    } catch {
      /* already gone */
    }
  }
}

export function killAllChildren(sig: NodeJS.Signals): void {
  for (const cp of children) killGroup(cp, sig);
}

/** Adds a synchronous cleanup run at exit (also on SIGINT/SIGTERM/uncaught errors); returns a remover. */
export function atExit(name: string, fn: () => void): () => void {
  const entry = { name, fn };
  syncCleanups.push(entry);
  return () => {
    const i = syncCleanups.indexOf(entry);
    if (i >= 0) syncCleanups.splice(i, 1);
  };
}

let exiting = false;
/** Kills every child group and runs the registered cleanups (each once). */
export function runExitCleanups(): void {
  if (exiting) return;
  exiting = true;
  try {
    killAllChildren('SIGKILL');
    for (const c of syncCleanups.splice(0).reverse()) {
      try {
        c.fn();
      } catch (err) {
        process.stderr.write(`bench: cleanup '${c.name}' failed: ${(err as Error).message}\n`);
      }
    }
  } finally {
    exiting = false;
  }
}

let handlersInstalled = false;
export function installExitHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', runExitCleanups);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, stopping children and cleaning up\n`);
      killAllChildren('SIGTERM');
      // Give children a moment to exit on SIGTERM; the exit handler SIGKILLs whatever is left.
      setTimeout(() => process.exit(sig === 'SIGINT' ? 130 : 143), 300).unref();
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Temp dirs and files
// ---------------------------------------------------------------------------------------------------------------

/** Makes the bench's temp root; removed at exit unless keep. */
export function makeTempRoot(base: string | undefined, keep: boolean): string {
  const parent = base ?? os.tmpdir();
  fs.mkdirSync(parent, { recursive: true });
  const dir = fs.mkdtempSync(path.join(parent, 'sfbench-'));
  if (!keep) atExit(`remove ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export async function rmrf(p: string): Promise<void> {
  await fs.promises.rm(p, { recursive: true, force: true, maxRetries: 3 });
}

/**
 * Deferred deletion. On ext4, creating files soon after many files were deleted costs CPU (the inode allocator
 * skips "recently deleted" inodes, ext4 recently_deleted(), for 60-300 s): a bench that deleted the last run's
 * 100,000-file copy just before the next measured run would time the filesystem, not the tool. So finished
 * copies are moved here and deleted at the end, or earlier only when free disk space runs short.
 */
export class Trash {
  private seq = 0;
  private used = false;
  constructor(private readonly dir: string) {}

  /** Moves p out of the way (a rename: cheap, no inode freed). */
  async put(p: string): Promise<void> {
    if (!fs.existsSync(p)) return;
    await fs.promises.mkdir(this.dir, { recursive: true });
    try {
      await fs.promises.rename(p, path.join(this.dir, `${++this.seq}-${path.basename(p)}`));
      this.used = true;
    } catch {
      await rmrf(p);
    }
  }

  /** Empties the trash if the filesystem has less than `needBytes` free. */
  async ensureFree(needBytes: number): Promise<void> {
    if (!this.used) return;
    let free = Infinity;
    try {
      const st = fs.statfsSync(this.dir);
      free = st.bavail * st.bsize;
    } catch {
      return;
    }
    if (free >= needBytes) return;
    log(`emptying the bench's trash (${(free / 2 ** 30).toFixed(1)} GiB free, ${(needBytes / 2 ** 30).toFixed(1)} GiB wanted)`);
    await this.purge();
  }

  async purge(): Promise<void> {
    await rmrf(this.dir);
    this.used = false;
  }
}

/** The repository root (dist/bench/util.js -> ../..; also works from bench/util.ts under tsx). */
export function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    dir = path.dirname(dir);
  }
  return process.cwd();
}

// ---------------------------------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------------------------------

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1 (for the loopback link; namespaces have their own port space). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** Quotes a string for a POSIX shell. */
export function shq(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const a = [...xs].sort((x, y) => x - y);
  const m = a.length >> 1;
  return a.length % 2 ? a[m]! : (a[m - 1]! + a[m]!) / 2;
}

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round((p / 100) * (sorted.length - 1))));
  return sorted[i]!;
}

const t0 = performance.now();
export function log(msg: string): void {
  const s = ((performance.now() - t0) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[${s}s] ${msg}\n`);
}

/** Last non-empty line of a text (for one-line error notes). */
export function lastLine(s: string): string {
  const lines = s.split('\n').map((l) => l.trim()).filter(Boolean);
  return (lines[lines.length - 1] ?? '').slice(0, 200);
}

/** Whole-bench time budget. */
export class Budget {
  private readonly end: number;
  constructor(ms: number) {
    this.end = performance.now() + ms;
  }
  get spent(): boolean {
    return performance.now() > this.end;
  }
}
