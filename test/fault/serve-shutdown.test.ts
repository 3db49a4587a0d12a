/**
 * `serve` ended by SIGINT or SIGTERM while it indexes or stores its company in the background ends cleanly: exit 0,
 * no temporary chunk-store folder left, and no failure reported. Before, the work it was itself stopping said it had
 * failed: "indexing acme failed: worker pool closed", "watching acme: worker pool closed", "storing acme generation 1
 * failed (pulls compress on demand): worker pool closed", as if something had gone wrong. Produced for real: a
 * company large enough that indexing and storing take a moment, the signal sent at several points of them. Also a
 * signal sent the moment serve says it listens (what a supervisor may do at once) must find it ready to end cleanly.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { tempDir, secretFile, CLI } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

describe('serve ended by a signal while it indexes and stores', () => {
  let tmp: ReturnType<typeof tempDir>;
  let key: string;
  let company: string;
  let tmpdir: string;
  beforeAll(async () => {
    tmp = tempDir('sf-serve-stop-');
    key = secretFile(tmp.dir);
    company = path.join(tmp.dir, 'acme');
    await makeCompany(company, 48, 3);
    tmpdir = path.join(tmp.dir, 'tmp');
    fs.mkdirSync(tmpdir);
  });
  afterAll(() => tmp?.cleanup());

  /** Starts serve, sends `signal` once `when` matches its output (then after `delayMs`), and returns how it ended. */
  function stopAt(when: RegExp, delayMs: number, signal: NodeJS.Signals): Promise<{ code: number | null; stderr: string; sentAt: string }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [CLI, 'serve', '--listen', '127.0.0.1:0', '--secret', key, '--company', `acme=${company}`], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, TMPDIR: tmpdir },
      });
      let out = '';
      let err = '';
      let sentAt = '';
      let armed = false;
      const kill = setTimeout(() => child.kill('SIGKILL'), 30_000);
      const check = () => {
        if (armed || !when.test(out + err)) return;
        armed = true;
        setTimeout(() => {
          sentAt = `${out}${err}`;
          child.kill(signal);
        }, delayMs);
      };
      child.stdout.on('data', (d) => ((out += d), check()));
      child.stderr.on('data', (d) => ((err += d), check()));
      child.on('close', (code, sig) => {
        clearTimeout(kill);
        resolve({ code, stderr: err + (sig ? `(ended by ${sig})` : ''), sentAt });
      });
    });
  }

  /**
   * A serve child on 127.0.0.1:0 with its own TMPDIR (stderr discarded, or closed at once with `closeStderr`), killed
   * after `killAfterMs` at the latest; `listening()` waits (up to 20 s) for its "listening on" line and answers its URL.
   */
  function siteChild(killAfterMs: number, closeStderr = false) {
    const child = spawn(process.execPath, [CLI, 'serve', '--listen', '127.0.0.1:0', '--secret', key, '--company', `acme=${company}`], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TMPDIR: tmpdir },
    });
    if (closeStderr) child.stderr.destroy();
    else child.stderr.resume();
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const ended = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    const kill = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    const listening = async (): Promise<string> => {
      const deadline = Date.now() + 20_000;
      while (!/listening on/.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      return /listening on (ws:\/\/\S+)/.exec(out)?.[1] ?? '';
    };
    return { child, ended, listening, out: () => out, clear: () => clearTimeout(kill) };
  }

  const points: Array<[string, RegExp, number, NodeJS.Signals, number?]> = [
    // The moment the line is read: before, the handlers were installed only after the line was written, and a signal
    // in between killed the site outright (no exit code, its temporary store folder left behind).
    ['the moment it says it listens', /listening on/, 0, 'SIGTERM', 3], // a race: tried three times
    ['while indexing', /listening on/, 100, 'SIGINT'],
    ['right after indexing (storing)', /indexed acme/, 0, 'SIGTERM'],
    ['while storing', /indexed acme/, 30, 'SIGINT'],
    // BUG (src/cli/main.ts, found by a helper review): SIGHUP (a terminal closed, an ssh session dropped) killed the
    // site outright, its temporary store left behind.
    ['while storing', /indexed acme/, 30, 'SIGHUP'],
  ];
  for (const [what, when, delayMs, signal, tries = 1] of points) {
    it(`${signal} ${what}: exit 0, no failure said, no store folder left`, async () => {
      for (let i = 0; i < tries; i++) await once();
    });
    const once = async () => {
      const r = await stopAt(when, delayMs, signal);
      expect(r.code, r.stderr).toBe(0);
      expect(r.sentAt, 'the signal was sent').not.toBe('');
      const after = r.stderr.split('\n').filter(Boolean);
      expect(after.filter((l) => !/ (indexed|stored) acme: generation 1,| shutting down$/.test(l)), r.stderr).toEqual([]);
      expect(fs.readdirSync(tmpdir)).toEqual([]);
    };
  }
  // BUG (src/cli/main.ts, found by a helper review): a log line that could not be written (stderr a pipe whose reader
  // went away: `serve 2>&1 | tee site.log`, tee restarted) ended the site with a stack trace and exit 1 at its next
  // line, every branch cut off and its temporary store left behind. Produced by closing the pipe's reading end at
  // once: the site indexes (and logs) meanwhile, then serves a stop signal cleanly.
  it('a closed stderr loses the log lines and nothing else: the site serves, then stops cleanly', async () => {
    const { child, ended, listening, out, clear } = siteChild(30_000, true);
    await listening();
    // Long enough for the indexing and storing lines to be written into the closed pipe.
    await new Promise((r) => setTimeout(r, 3000));
    child.kill('SIGTERM');
    const code = await ended;
    clear();
    expect(out()).toMatch(/listening on/);
    expect(code).toBe(0);
    expect(fs.readdirSync(tmpdir)).toEqual([]);
  });
  // BUG (src/sync/server.ts close, found by a helper review): the stop waited for every HTTP connection to end before
  // closing them, and once close has begun Node no longer times out a request still arriving: a peer sending a header
  // line every second held a SIGTERM'd site up for as long as it went on (195 s measured), its store left behind when
  // a supervisor then killed it. Produced with such a peer (bounded: 40 lines), the stop timed from the signal.
  it('a stop is not held up by a peer trickling an upgrade request', async () => {
    const { child, ended, listening, clear } = siteChild(60_000);
    const port = Number(/127\.0\.0\.1:(\d+)/.exec(await listening())![1]);
    const peer = net.connect(port, '127.0.0.1');
    peer.on('error', () => undefined);
    await new Promise((r) => peer.once('connect', r));
    peer.write('GET / HTTP/1.1\r\nHost: x\r\n');
    let lines = 0;
    const trickle = setInterval(() => (++lines > 40 || peer.destroyed ? clearInterval(trickle) : peer.write(`X-${lines}: y\r\n`)), 1000);
    await new Promise((r) => setTimeout(r, 1500));
    const sent = Date.now();
    child.kill('SIGTERM');
    const code = await ended;
    const tookMs = Date.now() - sent;
    clearInterval(trickle);
    clear();
    peer.destroy();
    expect(code).toBe(0);
    expect(tookMs).toBeLessThan(15_000);
    expect(fs.readdirSync(tmpdir)).toEqual([]);
  }, 70_000);
  // BUG (src/sync/server.ts close, found by a review of the fix above): the cut of sessions that do not answer their
  // close frame went through the set of open sessions, which a session leaves as soon as its close frame is sent: a
  // follower that had stopped reading (SIGSTOP, a hung machine) still held the stop for ws's 30 s. Produced with a
  // real follower stopped once it has applied its first generation.
  it('a stop is not held up by a follower that stopped reading', async () => {
    const { child, ended, listening, clear } = siteChild(90_000);
    const dest = path.join(tmp.dir, 'stopped-follower', 'acme');
    fs.mkdirSync(path.dirname(dest));
    let follower: ReturnType<typeof spawn> | undefined;
    try {
      const url = await listening();
      expect(url).toMatch(/^ws:/);
      follower = spawn(process.execPath, [CLI, 'pull', url, 'acme', dest, '--secret', key, '--follow', '--json'], { stdio: ['ignore', 'pipe', 'ignore'] });
      let lines = '';
      follower.stdout!.on('data', (d) => (lines += d));
      const until = Date.now() + 60_000;
      while (!lines.includes('\n') && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      expect(lines).toMatch(/"generation"/);
      follower.kill('SIGSTOP');
      const sent = Date.now();
      child.kill('SIGTERM');
      const code = await ended;
      expect(code).toBe(0);
      expect(Date.now() - sent).toBeLessThan(15_000);
      expect(fs.readdirSync(tmpdir)).toEqual([]);
    } finally {
      clear();
      follower?.kill('SIGCONT');
      follower?.kill('SIGKILL');
    }
  }, 120_000);
});
