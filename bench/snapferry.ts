/**
 * snapferry itself, driven through its CLI as child processes (dist/src/cli/main.js), the way users run it:
 *   serve --listen HOST:PORT --secret FILE --company NAME=DIR   (serving side; "listening on ws://..." when ready)
 *   pull URL NAME DIR --secret FILE --json                       (branch side; seed, then delta into the same DIR)
 *   repair DIR URL NAME --secret FILE --json, verify DIR --deep --json  (skipped if the CLI does not have them yet)
 * Bytes on the wire = the puller's own `bytesOnWire` (every byte it received on the socket, handshake included).
 */
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import { Server, runTimed, startTimed, failure, RunResult } from './measure.js';
import { Link } from './netns.js';
import { Transfer, failed } from './peers.js';

export const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

export function cliAvailable(): boolean {
  return fs.existsSync(CLI);
}

/** Summary printed by `pull --json` / `repair --json`. */
export interface PullJson {
  company: string;
  generation: number | string;
  rootHash: string;
  files: number;
  bytes: number;
  bytesOnWire: number;
  chunksFetched: number;
  chunksReused: number;
  seconds: number;
  [k: string]: unknown;
}

/** Parses the last JSON object line of stdout. */
export function lastJson<T>(stdout: string): T | undefined {
  const lines = stdout.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('{'));
  for (let i = lines.length - 1; i >= 0; i--) {
    try {
      return JSON.parse(lines[i]!) as T;
    } catch {
      /* not JSON */
    }
  }
  return undefined;
}

export function isUnknownCommand(r: RunResult): boolean {
  return r.code !== 0 && /unknown command|unknown subcommand|too many arguments/i.test(r.stderr);
}

export function keygen(file: string): void {
  const r = spawnSync(process.execPath, [CLI, 'keygen', file], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`snapferry keygen failed: ${(r.stderr || r.error?.message || '').trim()}`);
}

export async function startServe(
  companies: Record<string, string>,
  secret: string,
  link: Link,
  port: number,
  timeoutMs: number,
): Promise<{ server: Server; url: string }> {
  const args = [CLI, 'serve', '--listen', `${link.srcAddr}:${port}`, '--secret', secret];
  for (const [name, dir] of Object.entries(companies)) args.push('--company', `${name}=${dir}`);
  const server = await Server.start('snapferry serve', process.execPath, args, { ns: link.srcNs, readyLine: /listening on ws:\/\/\S+/, timeoutMs });
  const m = /listening on (ws:\/\/\S+)/.exec(server.stdout);
  return { server, url: m ? m[1]! : `ws://${link.srcAddr}:${port}` };
}

/**
 * Waits until the site logs "stored NAME: generation G" with G > after (serve logs each generation it indexes, at
 * start and as the company changes, then again once its chunks are in the chunk store, or that storing failed); seconds
 * counted from the call, so the site's index includes compressing the new chunks into its store.
 */
export async function waitIndexed(server: Server, after: number, timeoutMs: number): Promise<{ ok: boolean; seconds: number; generation: number }> {
  const t0 = performance.now();
  for (;;) {
    let gen = 0;
    for (const m of server.stderr.matchAll(/stor(?:ed \S+:|ing \S+) generation (\d+)/g)) gen = Math.max(gen, Number(m[1]));
    const seconds = (performance.now() - t0) / 1000;
    if (gen > after) return { ok: true, seconds, generation: gen };
    if (!server.alive || seconds * 1000 > timeoutMs) return { ok: false, seconds, generation: gen };
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * rsync and the tar pipeline do not flush to disk; neither does snapferry here unless the bench runs with --durable
 * (snapferry's default), so that the tools are compared at the same durability.
 */
function durability(): string[] {
  // Read at each call: --durable sets the variable after this module is loaded.
  return process.env.SNAPFERRY_BENCH_DURABLE ? [] : ['--no-fsync'];
}

function pullArgs(url: string, name: string, dir: string, secret: string): string[] {
  return [CLI, 'pull', url, name, dir, '--secret', secret, '--json', ...durability()];
}

/** A measured pull (or repair): the puller under /usr/bin/time, the server over a /proc window. */
export async function pull(
  server: Server,
  url: string,
  name: string,
  dir: string,
  secret: string,
  link: Link,
  timeoutMs: number,
  command: 'pull' | 'repair' = 'pull',
): Promise<Transfer & { json?: PullJson; unknownCommand?: boolean }> {
  const win = server.window();
  const args = command === 'pull' ? pullArgs(url, name, dir, secret) : [CLI, 'repair', dir, url, name, '--secret', secret, '--json', ...durability()];
  const r = await runTimed(process.execPath, args, { ns: link.dstNs, timeoutMs });
  const s = await win.stop(0);
  if (isUnknownCommand(r)) return { ...failed(`snapferry ${command}: unknown command`), unknownCommand: true };
  const json = lastJson<PullJson>(r.stdout);
  const err = failure(r) ?? (json ? undefined : 'no JSON summary on stdout');
  return {
    ok: !err,
    note: err ? `snapferry ${command}: ${err}` : undefined,
    seconds: r.seconds,
    bytesOnWire: typeof json?.bytesOnWire === 'number' ? json.bytesOnWire : null,
    src: { cpuSeconds: s.cpuSeconds, peakRssKiB: s.peakRssKiB },
    dst: { cpuSeconds: r.cpuSeconds, peakRssKiB: r.peakRssKiB },
    json,
    extra: json
      ? {
          generation: String(json.generation),
          chunksFetched: json.chunksFetched ?? null,
          chunksReused: json.chunksReused ?? null,
          reportedSeconds: json.seconds ?? null,
        }
      : undefined,
  };
}

/** Starts a pull without waiting (fan-out). */
/** `pull --follow --json` as a long-running process; ready once its first summary line (the seed) is out. */
export function startFollow(url: string, name: string, dir: string, secret: string, link: Link, timeoutMs: number): Promise<Server> {
  return Server.start('snapferry pull --follow', process.execPath, [...pullArgs(url, name, dir, secret), '--follow'], { ns: link.dstNs, readyLine: /"generation"/, timeoutMs });
}

export function startPull(url: string, name: string, dir: string, secret: string, link: Link, timeoutMs: number) {
  return startTimed(process.execPath, pullArgs(url, name, dir, secret), { ns: link.dstNs, timeoutMs });
}

export interface VerifyJson {
  intact: boolean;
  damaged: Array<{ path: string; problem: string }>;
  bytesRead?: number;
  seconds?: number;
}

/** `verify DIR --deep --json` (exit 1 = damaged, which is expected here). */
export async function verifyDeep(dir: string, timeoutMs: number): Promise<{ r: RunResult; json?: VerifyJson; unknownCommand: boolean }> {
  const r = await runTimed(process.execPath, [CLI, 'verify', dir, '--deep', '--json'], { timeoutMs });
  return { r, json: lastJson<VerifyJson>(r.stdout), unknownCommand: isUnknownCommand(r) };
}
