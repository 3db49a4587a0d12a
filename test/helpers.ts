/**
 * Test helpers over real parts: temp folders, the built CLI as a child process, a tree fingerprint.
 * Tests run against dist/ (npm test builds first), so what they exercise is what users run.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { expect } from 'vitest';
import { SnapferryError } from '../src/util/errors.js';
import { decodeJournal } from '../src/sync/journalfile.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
/** A module of the build (`rel` under dist/src), for tests that drive the built code as the CLI runs it. */
export const built = async <T>(rel: string): Promise<T> => (await import(pathToFileURL(path.join(ROOT, 'dist', 'src', rel)).href)) as T;

/** A fresh temp folder, removed by the returned cleanup. */
export function tempDir(prefix = 'sf-test-'): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Writes a random secret file and returns its path. */
export function secretFile(dir: string, name = 'site.key'): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  return p;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to completion (bounded by timeoutMs, then killed). */
export function runCli(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; wrap?: string[]; cwd?: string } = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    // `wrap`: a command that execs the rest (setpriv, to run without some privileges).
    const argv = [...(opts.wrap ?? []).slice(1), process.execPath, CLI, ...args];
    const child = spawn(opts.wrap?.[0] ?? argv.shift()!, argv, { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'], cwd: opts.cwd });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/**
 * As root, a prefix that runs a command without the capabilities that override file permissions (root reads and
 * writes anything: a permission fault is produced only without them); nothing otherwise.
 */
export const NO_DAC_OVERRIDE: string[] = process.getuid?.() === 0 ? ['setpriv', '--bounding-set=-dac_override,-dac_read_search'] : [];

/**
 * A port of 127.0.0.1 that is free now and lies outside the kernel's ephemeral range, for a test that stops a site and
 * starts it again on the same address (or needs an address where nothing listens): a port from `listen(0)` is one the
 * kernel also hands out as the local end of any new connection, so another test running meanwhile could take it.
 */
export async function quietPort(): Promise<number> {
  let [low, high] = [32768, 60999];
  try {
    [low, high] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number) as [number, number];
  } catch {
    /* not Linux: the usual range */
  }
  // Below the range where it leaves room, else above it; a range that spans every port leaves only listen(0)'s.
  const [from, to] = low >= 12_000 ? [low - 10_000, low] : high <= 64_535 ? [high + 1, 65_536] : [0, 0];
  const listening = (port: number) =>
    new Promise<number | undefined>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(undefined));
      s.listen(port, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
  for (let i = 0; i < 50 && to > from; i++) {
    const port = await listening(from + Math.floor(Math.random() * (to - from)));
    if (port !== undefined) return port;
  }
  const any = await listening(0);
  if (any === undefined) throw new Error('no free port on 127.0.0.1');
  return any;
}

/** A `snapferry serve` child process, resolved once it prints its URL. */
export interface Served {
  url: string;
  child: ChildProcess;
  stderr: () => string;
  stop: () => Promise<void>;
}

export function startServe(args: string[], timeoutMs = 30_000, env?: NodeJS.ProcessEnv, wrap: string[] = []): Promise<Served> {
  // `wrap`: a command that execs the rest (setpriv, to serve without some privileges).
  const argv = [...wrap.slice(1), process.execPath, CLI, 'serve', '--listen', '127.0.0.1:0', ...args];
  const child = spawn(wrap[0] ?? argv.shift()!, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  return servedOnceListening(child, 'serve', timeoutMs);
}

/** A site child process (stdout and stderr piped), resolved once it prints "listening on ws://…"; stop() ends it. */
export function servedOnceListening(child: ChildProcess, what: string, timeoutMs = 30_000): Promise<Served> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${what} did not start: ${err}`));
    }, timeoutMs);
    child.stderr!.on('data', (d) => (err += d));
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on (ws:\/\/\S+)/.exec(out);
      if (!m) return;
      clearTimeout(timer);
      resolve({
        url: m[1]!,
        child,
        stderr: () => err,
        stop: () =>
          new Promise<void>((r) => {
            if (child.exitCode !== null || child.signalCode !== null) return r();
            const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
            // 'close', not 'exit': what the site wrote as it stopped is read by then (both streams are consumed above).
            child.once('close', () => {
              clearTimeout(kill);
              r();
            });
            child.kill('SIGTERM');
          }),
      });
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited with ${code}: ${err}`));
    });
  });
}

/**
 * The chunk occurrences a puller's journal file records as verified (next.verified, or next.unsynced after its
 * `skip`-byte header), bases left out; none when the file is missing.
 */
export function journalRecords(file: string, skip = 0): Set<number> {
  const out = new Set<number>();
  const b = fs.existsSync(file) ? fs.readFileSync(file) : Buffer.alloc(0);
  // next.verified is in checked batches (src/sync/journalfile.ts); next.unsynced is bare records after its header.
  const records = skip === 0 ? decodeJournal(b) : Array.from({ length: Math.max(0, Math.floor((b.length - skip) / 4)) }, (_, i) => b.readUInt32LE(skip + i * 4));
  for (const v of records) if (!(v & 0x80000000)) out.add(v);
  return out;
}

/**
 * A fingerprint of a tree: every path with its kind, mode, mtime (µs) and content hash, sorted. Two trees with the
 * same fingerprint are the same generation.
 */
export function treeFingerprint(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string) => {
    const abs = rel ? path.join(root, rel) : root;
    for (const name of fs.readdirSync(abs).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const p = path.join(root, r);
      const st = fs.lstatSync(p, { bigint: true });
      const mtimeUs = st.mtimeNs / 1000n;
      const mode = (st.mode & 0o7777n).toString(8);
      if (st.isDirectory()) {
        out.set(r, `dir ${mode} ${mtimeUs}`);
        walk(r);
      } else if (st.isSymbolicLink()) {
        out.set(r, `link ${fs.readlinkSync(p)}`);
      } else {
        out.set(r, `file ${mode} ${mtimeUs} ${createHash('sha256').update(fs.readFileSync(p)).digest('hex')}`);
      }
    }
  };
  walk('');
  return out;
}

/** Differences between two fingerprints (for readable assertion failures); mtimes compared to the microsecond. */
export function fingerprintDiff(a: Map<string, string>, b: Map<string, string>): string[] {
  const diffs: string[] = [];
  const norm = (v: string | undefined) => v;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (w === undefined) diffs.push(`missing ${k}`);
    else if (v !== w) diffs.push(`differs ${k}: ${norm(v)} vs ${norm(w)}`);
  }
  for (const k of b.keys()) if (!a.has(k)) diffs.push(`extra ${k}`);
  return diffs;
}

/** Waits for a condition, bounded in time. */
/**
 * Asserts that a child's output as read so far (`read`) matches `re`, once it does or after `timeoutMs`: a line the
 * child wrote just before an event this process learns of through another pipe (a pull's exit, "listening on" on
 * stdout) may not be read yet.
 */
export async function expectOutput(read: () => string, re: RegExp, timeoutMs = 10_000): Promise<void> {
  await waitFor(() => re.test(read()), timeoutMs).catch(() => undefined);
  expect(read()).toMatch(re);
}

export async function waitFor(cond: () => boolean, timeoutMs: number, stepMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/** Runs fn, expects it to throw a SnapferryError with this code, and returns the error. */
export function expectCode(fn: () => unknown, code: string): SnapferryError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected a throw').toBeInstanceOf(SnapferryError);
  expect((caught as SnapferryError).code).toBe(code);
  return caught as SnapferryError;
}

/** Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
export function prng(n: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = s & 0xff;
  }
  return out;
}

/**
 * Why tmpfs mounts cannot be made here (not Linux, not root, mount refused), or undefined when they can: tests that
 * make real mounts (a full disk, a mount inside DIR) skip with this reason.
 */
export function tmpfsUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'tmpfs mounts need Linux';
  if (process.getuid?.() !== 0) return 'mounting a tmpfs needs root';
  const probe = fs.mkdtempSync('/tmp/sf-mountprobe-');
  try {
    const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', probe], { encoding: 'utf8' });
    if (r.status !== 0) return `mount -t tmpfs failed: ${(r.stderr || r.error?.message || '').trim()}`;
    spawnSync('umount', [probe]);
    return undefined;
  } finally {
    fs.rmSync(probe, { recursive: true, force: true });
  }
}

/**
 * A child process rewriting random 4 KiB pages of `file` in place every 3 ms, for at most 30 s. Its times (ms since the
 * epoch, a line per write) are appended to `log`, outside the company: a loaded runner can pause the writer itself for
 * long enough that the site finds the file quiet, which `expectWriterPaused` tells from the bug a test is for.
 */
export function pageWriter(file: string, log: string): ChildProcess {
  return spawn(
    process.execPath,
    ['-e', `const fs=require('fs'),c=require('crypto');const fd=fs.openSync(${JSON.stringify(file)},'r+');const lg=fs.openSync(${JSON.stringify(log)},'a');const n=fs.fstatSync(fd).size>>12;const end=Date.now()+30000;const t=setInterval(()=>{fs.writeSync(fd,c.randomBytes(4096),0,4096,c.randomInt(n)*4096);fs.writeSync(lg,Date.now()+'\\n');if(Date.now()>end)clearInterval(t)},3)`],
    { stdio: 'ignore' },
  );
}

/** The times a `pageWriter` logged to `log`. */
export function loggedTimes(log: string): number[] {
  return fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').filter(Boolean).map(Number) : [];
}

/**
 * Asserts that a writer paused for `quietMs` or more between its successive `times` (ascending, ms) from a second
 * before `since` until now (a writer stopped at this moment has paused since its last time). A file written without
 * pause that a site found quiet is then a loaded runner's doing, not the bug a test is for; otherwise it is the bug.
 */
export function expectWriterPaused(times: number[], since: number, quietMs: number, what: string): void {
  const from = [...times.filter((t) => t >= since - 1000), Date.now()];
  const longest = Math.max(0, ...from.slice(1).map((t, i) => t - from[i]!));
  expect(longest, `${what} was read as quiet while its writer never paused that long`).toBeGreaterThanOrEqual(quietMs);
}

/** Why a test cannot make and loop-mount a filesystem image with `mkfs` (from Debian package `pkg`); undefined if it can. */
export function loopMountUnavailable(mkfs: string, pkg: string): string | undefined {
  if (process.platform !== 'linux') return 'loop mounts need Linux';
  if (process.getuid?.() !== 0) return 'a loop mount needs root';
  const made = spawnSync(mkfs, ['-V'], { encoding: 'utf8' });
  if (made.error) return `${mkfs} not found (${pkg}): ${made.error.message}`;
  if (!fs.existsSync('/dev/loop-control')) return 'no loop devices here (/dev/loop-control)';
  return undefined;
}

/** Makes a sparse image of `bytes` at `image`, formats it with `mkfs ...args`, and loop-mounts it at a new folder `mnt`. */
export function mountNewImage(image: string, bytes: number, mkfs: string, args: string[], mnt: string): void {
  fs.writeFileSync(image, '');
  fs.truncateSync(image, bytes);
  const mk = spawnSync(mkfs, [...args, image], { encoding: 'utf8' });
  expect(mk.status, mk.stderr).toBe(0);
  fs.mkdirSync(mnt);
  const r = spawnSync('mount', ['-o', 'loop', image, mnt], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
}

/** Unmounts `mnt`, lazily if it is busy. */
export function unmountImage(mnt: string): void {
  const r = spawnSync('umount', [mnt]);
  if (r.status !== 0) spawnSync('umount', ['-l', mnt]);
}

/**
 * Writes random chunks into `file` at `rewritten` (flat [start, end) pairs), as a puller's workers do (through the page
 * cache), and returns what the file then holds: `old` with those chunks in it.
 */
export function writeChunks(file: string, old: Buffer, rewritten: number[]): Buffer {
  const expected = Buffer.from(old);
  const fd = fs.openSync(file, 'r+');
  try {
    for (let k = 0; k < rewritten.length; k += 2) {
      const chunk = randomBytes(rewritten[k + 1]! - rewritten[k]!);
      chunk.copy(expected, rewritten[k]!);
      fs.writeSync(fd, chunk, 0, chunk.length, rewritten[k]!);
    }
  } finally {
    fs.closeSync(fd);
  }
  return expected;
}
