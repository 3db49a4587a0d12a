/**
 * Measuring child processes: wall time, CPU seconds and peak RSS of each side of a transfer.
 *
 * - A one-shot command (a pull, an rsync client, one half of the tar pipeline) runs under `/usr/bin/time -f`, which
 *   reports the user+system CPU of the command and of every descendant it waited for, and the largest single
 *   process's max RSS (getrusage of children). While it runs, a /proc poller sums the RSS of all processes of its
 *   tree (a pipeline's four processes are resident at once); peak RSS = max(poller's peak sum, time's %M).
 * - A long-lived server (snapferry serve, the rsync daemon) is measured per step from /proc: CPU = change in
 *   utime+stime+cutime+cstime summed over the server and its live descendants (children it reaped are in its
 *   cutime/cstime); peak RSS = max over the step of the tree's summed VmRSS and of each process's VmHWM, after the
 *   high-water marks were reset (`echo 5 > /proc/PID/clear_refs`) at the start of the step.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { track, killGroup, sleep, lastLine } from './util.js';

const CLK_TCK = (() => {
  try {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    const n = Number(r.stdout.trim());
    return Number.isFinite(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();

export const TIME_BIN = '/usr/bin/time';
export const haveGnuTime = fs.existsSync(TIME_BIN);

// ---------------------------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------------------------

interface ProcStat {
  pid: number;
  ppid: number;
  state: string;
  /** utime + stime, ticks */
  self: number;
  /** cutime + cstime (waited-for children), ticks */
  children: number;
}

function readStat(pid: number): ProcStat | undefined {
  let s: string;
  try {
    s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  const r = s.lastIndexOf(')');
  if (r < 0) return undefined;
  const f = s.slice(r + 2).split(' ');
  // f[0]=state f[1]=ppid ... f[11]=utime f[12]=stime f[13]=cutime f[14]=cstime
  return {
    pid,
    ppid: Number(f[1]),
    state: f[0] ?? '?',
    self: Number(f[11]) + Number(f[12]),
    children: Number(f[13]) + Number(f[14]),
  };
}

/** VmRSS and VmHWM in KiB (0 for a zombie or a vanished process). */
function readMem(pid: number): { rss: number; hwm: number } {
  let s: string;
  try {
    s = fs.readFileSync(`/proc/${pid}/status`, 'latin1');
  } catch {
    return { rss: 0, hwm: 0 };
  }
  const rss = /VmRSS:\s+(\d+)/.exec(s);
  const hwm = /VmHWM:\s+(\d+)/.exec(s);
  return { rss: rss ? Number(rss[1]) : 0, hwm: hwm ? Number(hwm[1]) : 0 };
}

function allStats(): Map<number, ProcStat> {
  const out = new Map<number, ProcStat>();
  let names: string[];
  try {
    names = fs.readdirSync('/proc');
  } catch {
    return out;
  }
  for (const n of names) {
    if (n.charCodeAt(0) < 48 || n.charCodeAt(0) > 57) continue;
    const st = readStat(Number(n));
    if (st) out.set(st.pid, st);
  }
  return out;
}

/** The root and all its descendants, from one snapshot of /proc. */
function treeOf(root: number, stats: Map<number, ProcStat>): ProcStat[] {
  const kids = new Map<number, number[]>();
  for (const st of stats.values()) {
    const l = kids.get(st.ppid);
    if (l) l.push(st.pid);
    else kids.set(st.ppid, [st.pid]);
  }
  const out: ProcStat[] = [];
  const rootSt = stats.get(root);
  if (!rootSt) return out;
  const queue = [root];
  const seen = new Set<number>();
  while (queue.length && out.length < 10_000) {
    const p = queue.shift()!;
    if (seen.has(p)) continue;
    seen.add(p);
    const st = stats.get(p);
    if (!st) continue;
    out.push(st);
    for (const c of kids.get(p) ?? []) queue.push(c);
  }
  return out;
}

function treeTicks(tree: ProcStat[]): number {
  let t = 0;
  for (const st of tree) t += st.self + st.children;
  return t;
}

/** Resets the peak RSS (VmHWM) of a process to its current RSS (Linux >= 4.0; root or same user). */
function resetHwm(pid: number): void {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    /* not allowed or gone: the peak then covers the process's whole life */
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Tree monitor (one shared poller)
// ---------------------------------------------------------------------------------------------------------------

const POLL_MS = 40;
const active = new Set<TreeMonitor>();
let timer: NodeJS.Timeout | undefined;

function pollAll(): void {
  if (active.size === 0) return;
  const stats = allStats();
  for (const m of active) m.observe(stats);
}

function startPolling(m: TreeMonitor): void {
  active.add(m);
  if (!timer) {
    timer = setInterval(pollAll, POLL_MS);
    timer.unref();
  }
}

function stopPolling(m: TreeMonitor): void {
  active.delete(m);
  if (active.size === 0 && timer) {
    clearInterval(timer);
    timer = undefined;
  }
}

export interface TreeUsage {
  cpuSeconds: number;
  peakRssKiB: number;
}

/** Watches a process tree: CPU used and peak resident memory between start() and stop(). */
export class TreeMonitor {
  private baseTicks = 0;
  private basePids = new Set<number>();
  private peakSum = 0;
  private peakSingle = 0;
  private lastTicks = 0;

  constructor(
    private readonly root: number,
    /** Leave the root out of the RSS figures (a /usr/bin/time wrapper). */
    private readonly excludeRoot = false,
  ) {}

  /** Begins a measurement window; resetPeak resets the high-water marks of the processes alive now. */
  start(resetPeak: boolean): this {
    const stats = allStats();
    const tree = treeOf(this.root, stats);
    this.basePids = new Set(tree.map((t) => t.pid));
    if (resetPeak) for (const t of tree) resetHwm(t.pid);
    this.baseTicks = treeTicks(tree);
    this.lastTicks = this.baseTicks;
    this.peakSum = 0;
    this.peakSingle = 0;
    this.observe(stats);
    startPolling(this);
    return this;
  }

  /** Called by the poller with a /proc snapshot. */
  observe(stats: Map<number, ProcStat>): ProcStat[] {
    const tree = treeOf(this.root, stats);
    if (tree.length) this.lastTicks = treeTicks(tree);
    let sum = 0;
    for (const st of tree) {
      if (this.excludeRoot && st.pid === this.root) continue;
      const m = readMem(st.pid);
      sum += m.rss;
      if (m.hwm > this.peakSingle) this.peakSingle = m.hwm;
    }
    if (sum > this.peakSum) this.peakSum = sum;
    return tree;
  }

  /**
   * Ends the window. With waitMs, first waits (bounded) until processes that appeared during the window have
   * exited (the rsync daemon's per-connection children), so that their CPU is in the root's cutime.
   */
  async stop(waitMs = 0): Promise<TreeUsage> {
    const deadline = performance.now() + waitMs;
    for (;;) {
      const tree = this.observe(allStats());
      const fresh = tree.filter((t) => !this.basePids.has(t.pid) && t.state !== 'Z');
      if (fresh.length === 0 || performance.now() >= deadline) break;
      await sleep(20);
    }
    this.observe(allStats());
    stopPolling(this);
    return { cpuSeconds: Math.max(0, this.lastTicks - this.baseTicks) / CLK_TCK, peakRssKiB: Math.max(this.peakSum, this.peakSingle) };
  }

  /** Ends polling without a result. */
  cancel(): void {
    stopPolling(this);
  }
}

/** Whole-life CPU seconds and VmHWM of a running process (fan-out: the server's total). */
export function processTotals(pid: number): { cpuSeconds: number; hwmKiB: number } | undefined {
  const st = readStat(pid);
  if (!st) return undefined;
  return { cpuSeconds: (st.self + st.children) / CLK_TCK, hwmKiB: readMem(pid).hwm };
}

// ---------------------------------------------------------------------------------------------------------------
// One-shot commands
// ---------------------------------------------------------------------------------------------------------------

export interface RunOptions {
  /** Run inside this network namespace (`ip netns exec`). */
  ns?: string;
  timeoutMs: number;
  cwd?: string;
  /** Keep at most this much stdout (bytes). */
  maxStdout?: number;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** Wall time from spawn to exit, seconds. */
  seconds: number;
  /** performance.now() at spawn and at exit. */
  startedAt: number;
  endedAt: number;
  /** user+system CPU of the command and its descendants (GNU time), seconds; NaN when unknown. */
  cpuSeconds: number;
  /** max(largest single process max RSS, peak summed RSS of the tree), KiB. */
  peakRssKiB: number;
  stdout: string;
  stderr: string;
}

let tfileSeq = 0;
let scratch = os.tmpdir();

/** Where /usr/bin/time writes its reports (the bench's temp root, removed at exit). */
export function setScratchDir(dir: string): void {
  scratch = dir;
}

function signalName(n: number): NodeJS.Signals | null {
  const e = Object.entries(os.constants.signals).find(([, v]) => v === n);
  return e ? (e[0] as NodeJS.Signals) : null;
}

/** `ip netns exec NS cmd ...` or just `cmd ...`. */
export function inNs(ns: string | undefined, cmd: string, args: string[]): [string, string[]] {
  return ns ? ['ip', ['netns', 'exec', ns, cmd, ...args]] : [cmd, args];
}

/** A running measured command; `done` resolves when it has exited. */
export interface Running {
  child: ChildProcess;
  done: Promise<RunResult>;
  kill(): void;
}

/** Starts a command under /usr/bin/time (when present) in its own process group, with a /proc RSS poller. */
export function startTimed(cmd: string, args: string[], opts: RunOptions): Running {
  const tfile = path.join(scratch, `time-${process.pid}-${++tfileSeq}.txt`);
  const [c0, a0] = inNs(opts.ns, cmd, args);
  const argv = haveGnuTime ? [TIME_BIN, '-f', '%e %U %S %M', '-o', tfile, c0, ...a0] : [c0, ...a0];
  const startedAt = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ['ignore', 'pipe', 'pipe'], cwd: opts.cwd });
  track(child);
  const mon = child.pid !== undefined ? new TreeMonitor(child.pid, haveGnuTime).start(false) : undefined;
  const maxOut = opts.maxStdout ?? 4 << 20;
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    if (stdout.length < maxOut) stdout += d;
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
    if (stderr.length > 256 << 10) stderr = stderr.slice(-(128 << 10));
  });
  let timedOut = false;
  const killer = setTimeout(() => {
    timedOut = true;
    killGroup(child, 'SIGTERM');
    setTimeout(() => killGroup(child, 'SIGKILL'), 3000).unref();
  }, opts.timeoutMs);
  killer.unref();
  const done = new Promise<RunResult>((resolve) => {
    const finish = async (code: number | null, signal: NodeJS.Signals | null, spawnErr?: Error): Promise<void> => {
      const endedAt = performance.now();
      clearTimeout(killer);
      const usage = mon ? await mon.stop(0) : { cpuSeconds: NaN, peakRssKiB: 0 };
      let cpu = NaN;
      let maxRss = 0;
      if (haveGnuTime) {
        try {
          const t = fs.readFileSync(tfile, 'utf8');
          fs.rmSync(tfile, { force: true });
          const m = /(\d+\.?\d*) (\d+\.?\d*) (\d+\.?\d*) (\d+)\s*$/.exec(t);
          if (m) {
            cpu = Number(m[2]) + Number(m[3]);
            maxRss = Number(m[4]);
          }
        } catch {
          /* killed before time wrote its report */
        }
      }
      if (Number.isNaN(cpu)) cpu = usage.cpuSeconds;
      // GNU time exits with the command's status; "Command terminated by signal N" when it was signalled.
      const sig = /Command terminated by signal (\d+)/.exec(stderr);
      resolve({
        code: spawnErr ? 127 : code,
        signal: signal ?? (sig ? signalName(Number(sig[1])) : null),
        timedOut,
        seconds: (endedAt - startedAt) / 1000,
        startedAt,
        endedAt,
        cpuSeconds: cpu,
        peakRssKiB: Math.max(maxRss, usage.peakRssKiB),
        stdout,
        stderr: spawnErr ? `${stderr}\n${spawnErr.message}` : stderr,
      });
    };
    child.once('error', (err) => void finish(null, null, err));
    child.once('close', (code, signal) => void finish(code, signal));
  });
  return { child, done, kill: () => killGroup(child, 'SIGTERM') };
}

export function runTimed(cmd: string, args: string[], opts: RunOptions): Promise<RunResult> {
  return startTimed(cmd, args, opts).done;
}

/** A one-line description of a failed run. */
export function failure(r: RunResult): string | undefined {
  if (r.timedOut) return `timed out after ${r.seconds.toFixed(0)} s`;
  if (r.code === 0) return undefined;
  const msg = lastLine(r.stderr.replace(/Command (exited with non-zero status|terminated by signal) \d+/g, ''));
  return `exit ${r.code ?? r.signal}${msg ? `: ${msg}` : ''}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Long-lived servers
// ---------------------------------------------------------------------------------------------------------------

/** Is something listening on TCP `port` in the network namespace of any process of root's tree? */
export function listeningIn(root: number, port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  for (const st of treeOf(root, allStats())) {
    for (const f of ['tcp', 'tcp6']) {
      let t: string;
      try {
        t = fs.readFileSync(`/proc/${st.pid}/net/${f}`, 'latin1');
      } catch {
        continue;
      }
      for (const line of t.split('\n')) {
        const cols = line.trim().split(/\s+/);
        if (cols[3] === '0A' && cols[1]?.endsWith(`:${hex}`)) return true;
      }
    }
  }
  return false;
}

export async function waitListening(root: number, port: number, timeoutMs: number, alive: () => boolean): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (listeningIn(root, port)) return true;
    if (!alive()) return false;
    await sleep(20);
  }
  return false;
}

export interface ServerOptions {
  ns?: string;
  /** Ready when a stdout line matches... */
  readyLine?: RegExp;
  /** ...or when this TCP port is listening. */
  readyPort?: number;
  timeoutMs: number;
}

/** A long-lived process measured per step from /proc. */
export class Server {
  private out = '';
  private err = '';
  private exited = false;
  readonly readySeconds: number = 0;
  private constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      if (this.out.length < 1 << 20) this.out += d;
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.err += d;
      if (this.err.length > 256 << 10) this.err = this.err.slice(-(128 << 10));
    });
    child.once('close', () => (this.exited = true));
  }

  get pid(): number {
    return this.child.pid!;
  }
  get alive(): boolean {
    return !this.exited;
  }
  get stdout(): string {
    return this.out;
  }
  get stderr(): string {
    return this.err;
  }

  static async start(name: string, cmd: string, args: string[], opts: ServerOptions): Promise<Server> {
    const [c, a] = inNs(opts.ns, cmd, args);
    const t0 = performance.now();
    const child = spawn(c, a, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    track(child);
    const s = new Server(name, child);
    const spawnError = new Promise<Error>((res) => child.once('error', res));
    const deadline = performance.now() + opts.timeoutMs;
    let ready = false;
    let failed: Error | undefined;
    void spawnError.then((e) => (failed = e));
    while (!ready && !failed && performance.now() < deadline) {
      if (opts.readyLine && opts.readyLine.test(s.out)) ready = true;
      else if (opts.readyPort !== undefined && child.pid !== undefined && listeningIn(child.pid, opts.readyPort)) ready = true;
      else if (!s.alive) break;
      else await sleep(20);
    }
    if (!ready) {
      await s.stop();
      const why = failed?.message ?? (s.alive ? `not ready after ${opts.timeoutMs / 1000} s` : `exited (${child.exitCode ?? child.signalCode})`);
      throw new Error(`${name} did not start: ${why}${lastLine(s.err) ? `: ${lastLine(s.err)}` : ''}`);
    }
    (s as { readySeconds: number }).readySeconds = (performance.now() - t0) / 1000;
    return s;
  }

  /** A per-step measurement window (resets the peak RSS of the server's processes). */
  window(): TreeMonitor {
    return new TreeMonitor(this.pid, false).start(true);
  }

  /** Whole-life CPU and VmHWM of the server process. */
  totals(): { cpuSeconds: number; hwmKiB: number } | undefined {
    return processTotals(this.pid);
  }

  /** SIGTERM, then SIGKILL to the group after 5 s. */
  async stop(): Promise<void> {
    if (this.exited) {
      killGroup(this.child, 'SIGKILL');
      return;
    }
    const closed = new Promise<void>((r) => this.child.once('close', () => r()));
    try {
      this.child.kill('SIGTERM');
    } catch {
      /* gone */
    }
    const t = setTimeout(() => killGroup(this.child, 'SIGKILL'), 5000);
    await closed;
    clearTimeout(t);
    killGroup(this.child, 'SIGKILL'); // leftovers of its group (rsync daemon children)
  }
}
