/**
 * A follower (`pull --follow`) meets what a branch office meets: another command holding DIR's lock, a site that
 * cannot hold a file still for a while, a wrong address, and a stop asked for at awkward moments. Real sites and
 * followers (CLI child processes on 127.0.0.1, or follow() in this process where the moment must be exact).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import { spawn, ChildProcess } from 'node:child_process';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, CLI, waitFor, pageWriter, loggedTimes, expectWriterPaused, quietPort, Served } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';
import { QUIET_MS } from '../../src/scan/scanner.js';
// From dist/, as the CLI runs it: the worker threads are started from the built files.
import { follow } from '../../dist/src/sync/follow.js';
import { readSecret } from '../../src/cli/secret.js';
import { FaultProxy, ProxyConn, Hook, sleep } from './netfault.js';

describe('follow under trouble', () => {
  let tmp: ReturnType<typeof tempDir>;
  let key: string;
  let n = 0;
  beforeAll(() => {
    tmp = tempDir('sf-follow-');
    key = secretFile(tmp.dir);
  });
  afterAll(() => tmp?.cleanup());

  async function site(mib: number, extra: string[] = []): Promise<{ src: string; served: Served; dest: string }> {
    const src = path.join(tmp.dir, `s${++n}`, 'acme');
    await makeCompany(src, mib, 40 + n);
    const served = await startServe(['--secret', key, '--company', `acme=${src}`, ...extra]);
    const dest = path.join(tmp.dir, `d${n}`, 'acme');
    fs.mkdirSync(path.dirname(dest));
    return { src, served, dest };
  }

  function follower(url: string, dest: string, extra: string[] = []): { child: ChildProcess; lines: () => string[]; err: () => string; exited: Promise<number | null> } {
    const child = spawn(process.execPath, [CLI, 'pull', url, 'acme', dest, '--secret', key, '--follow', '--json', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    // 'close', not 'exit': its last lines on stdout and stderr are read by then (asserted after it).
    const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
    return { child, lines: () => out.split('\n').filter(Boolean), err: () => err, exited };
  }

  async function stop(f: { child: ChildProcess; exited: Promise<number | null> }): Promise<void> {
    if (f.child.exitCode === null && f.child.signalCode === null) f.child.kill('SIGKILL');
    await f.exited;
  }

  // BUG (src/sync/follow.ts): DIR_LOCKED is final for a one-shot pull, and the follower took it so too: a nightly
  // verify --deep or a repair holding the lock when a generation came ended the follower for good (exit 75).
  // Produced: DIR's lock file naming a live process (a sleeping child) while the site changes.
  it('outlives DIR lock held by another command, and applies the generation once it is free', async () => {
    const { src, served, dest } = await site(4);
    const f = follower(served.url, dest);
    const holder = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      await waitFor(() => f.lines().length >= 1, 20_000);
      const lock = path.join(path.dirname(dest), '.acme.snapferry', 'lock');
      await waitFor(() => !fs.existsSync(lock), 10_000); // the spare preparation lets go when there is nothing to prepare
      fs.writeFileSync(lock, `${holder.pid}\n`);
      fs.writeFileSync(path.join(src, 'masters', 'while-locked.xml'), '<new/>\n');
      await waitFor(() => /in use by snapferry process/.test(f.err()), 20_000);
      expect(f.child.exitCode).toBeNull();
      holder.kill('SIGKILL');
      await waitFor(() => f.lines().length >= 2, 30_000, 100);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
      expect(f.child.exitCode).toBeNull();
    } finally {
      holder.kill('SIGKILL');
      await stop(f);
      await served.stop();
    }
  });

  // BUG (src/sync/follow.ts, left from a helper review): two followers of one DIR, of two sites each serving an
  // "acme" (a head office's old server and its new one, say), replaced each other's generation without end. Produced:
  // two sites of different data, a follower of the first, then one of the second on the same DIR; then the first
  // killed (its follow.lock left naming a dead process) and a follower started again.
  it('a second follower of the same DIR is refused while the first runs; a killed one\'s lock is taken over', async () => {
    const a = await site(2);
    const b = await site(2);
    const f1 = follower(a.served.url, a.dest, ['--no-spare']);
    let f2: ReturnType<typeof follower> | undefined;
    let f3: ReturnType<typeof follower> | undefined;
    try {
      await waitFor(() => f1.lines().length >= 1, 20_000);
      f2 = follower(b.served.url, a.dest, ['--no-spare']);
      const code = await Promise.race([f2.exited, sleep(15_000).then(() => 'still running')]);
      expect(code, f2.err()).toBe(75);
      expect(f2.err()).toMatch(/^snapferry: .*acme is followed already by snapferry process \d+; one follower per folder \[SNAPFERRY_E_DIR_LOCKED\]\n$/);
      expect(fingerprintDiff(treeFingerprint(a.src), treeFingerprint(a.dest))).toEqual([]);
      expect(f1.child.exitCode).toBeNull();
      await stop(f1);
      const followLock = path.join(path.dirname(a.dest), '.acme.snapferry', 'follow.lock');
      expect(fs.existsSync(followLock)).toBe(true); // SIGKILL: left behind, naming a dead process
      f3 = follower(b.served.url, a.dest, ['--no-spare']);
      await waitFor(() => f3!.lines().length >= 1 || f3!.child.exitCode !== null, 20_000);
      expect(f3.child.exitCode, f3.err()).toBeNull();
      expect(fingerprintDiff(treeFingerprint(b.src), treeFingerprint(a.dest))).toEqual([]);
      f3.child.kill('SIGTERM');
      expect(await f3.exited).toBe(0);
      expect(fs.existsSync(followLock)).toBe(false); // an orderly end lets go of it
    } finally {
      await stop(f1);
      if (f2) await stop(f2);
      if (f3) await stop(f3);
      await a.served.stop();
      await b.served.stop();
    }
  });

  // BUG (src/sync/follow.ts passing, found by a helper review): a follower started on a copy (restarted after a
  // reboot, say) while another command held DIR ended with exit 75: only a generation this process had applied
  // counted. Produced: DIR seeded by a one-shot pull, its lock naming a live process when the follower starts.
  it('started on a copy whose DIR another command holds, waits for it instead of ending', async () => {
    const { src, served, dest } = await site(2);
    const seeded = await runCli(['pull', served.url, 'acme', dest, '--secret', key]);
    expect(seeded.code, seeded.stderr).toBe(0);
    const holder = spawn('sleep', ['30'], { stdio: 'ignore' });
    const lock = path.join(path.dirname(dest), '.acme.snapferry', 'lock');
    fs.writeFileSync(lock, `${holder.pid}\n`);
    fs.writeFileSync(path.join(src, 'masters', 'while-locked.xml'), '<new/>\n');
    const f = follower(served.url, dest);
    try {
      await waitFor(() => /in use by snapferry process/.test(f.err()) || f.child.exitCode !== null, 20_000);
      expect(f.child.exitCode, f.err()).toBeNull();
      holder.kill('SIGKILL');
      await waitFor(() => f.lines().length >= 1, 30_000, 100);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    } finally {
      holder.kill('SIGKILL');
      await stop(f);
      await served.stop();
    }
  });

  // BUG (src/sync/server.ts, found by a helper review): a follower waiting for a change held one of the site's
  // --max-connections, so as many followers as slots kept every other branch out ("busy", exit 69) for as long as they
  // followed. Produced: a site with --max-connections 1, one follower waiting, then a one-shot pull of a new branch.
  it('a follower waiting for a change does not hold one of the site\'s --max-connections', async () => {
    const { src, served, dest } = await site(1, ['--max-connections', '1']);
    const f = follower(served.url, dest, ['--no-spare']);
    try {
      await waitFor(() => f.lines().length >= 1, 20_000);
      await sleep(1000); // the follower's wait is under way
      const other = path.join(tmp.dir, `other${n}`, 'acme');
      fs.mkdirSync(path.dirname(other));
      // Busy is retried (5 times, 15 s in all): before, every try met the follower's slot.
      const r = await runCli(['pull', served.url, 'acme', other, '--secret', key]);
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(other))).toEqual([]);
      expect(f.child.exitCode).toBeNull();
    } finally {
      await stop(f);
      await served.stop();
    }
  });

  // BUG (src/cli/main.ts, found by a helper review): with `--follow --json | reader`, the reader gone, the next
  // generation's line crashed the follower with an unhandled EPIPE stack trace (exit 1). Produced: the test closes its
  // end of the follower's stdout after the first line, then changes the company.
  it('ends cleanly when the reader of its JSON lines goes away', async () => {
    const { src, served, dest } = await site(1);
    const f = follower(served.url, dest, ['--no-spare']);
    try {
      await waitFor(() => f.lines().length >= 1, 20_000);
      f.child.stdout!.destroy();
      fs.writeFileSync(path.join(src, 'masters', 'unread.xml'), '<new/>\n');
      await waitFor(() => f.child.exitCode !== null, 20_000, 50);
      await f.exited; // 'close': its last line on stderr is read by then
      expect(f.child.exitCode, f.err()).toBe(0);
      expect(f.err()).toMatch(/the program reading the output went away; stopping/);
      expect(f.err()).not.toMatch(/EPIPE|throw/);
    } finally {
      await stop(f);
      await served.stop();
    }
  });

  // BUG (src/sync/follow.ts follow, found by a helper review): the backoff went back to its shortest only when a wait
  // ended in a change; a wait ended by a dropped link doubled it however long the link had been healthy, so after six
  // isolated drops every later one kept the branch away 30 s. Produced: a proxy between follower and site that cuts
  // the follower's connection seven times, each after 4 s of healthy link, then a change.
  it('a drop after a healthy wait is retried at once, however many drops came before', async () => {
    const { src, served, dest } = await site(1);
    const conns: ProxyConn[] = [];
    const record: Hook = (_u, c) => {
      if (!conns.includes(c)) conns.push(c);
      return undefined;
    };
    const proxy = await new FaultProxy(Number(new URL(served.url).port), () => ({ c2s: record })).start();
    const f = follower(proxy.url, dest, ['--no-spare']);
    try {
      await waitFor(() => f.lines().length >= 1, 20_000);
      for (let i = 0; i < 7; i++) {
        const seen = proxy.connections;
        await waitFor(() => proxy.connections > seen || i === 0, 40_000, 50);
        await sleep(4000); // past HEALTHY_MS (2 s) with room for a slow handshake
        conns.at(-1)!.cut();
      }
      const seen = proxy.connections;
      await waitFor(() => proxy.connections > seen, 40_000, 50);
      const t0 = Date.now();
      fs.writeFileSync(path.join(src, 'masters', 'after-drops.xml'), '<new/>\n');
      await waitFor(() => f.lines().length >= 2, 40_000, 50);
      expect(Date.now() - t0, f.err()).toBeLessThan(10_000);
      expect(f.err()).not.toMatch(/trying again in (4|8|16|30)\.0 s/);
    } finally {
      await stop(f);
      await proxy.close();
      await served.stop();
    }
  }, 120_000);

  // BUG (src/util/errors.ts, found by a helper review): a one-shot pull from a site that could not hold a file still
  // exited 1, the code verify gives a damaged copy, though the site says "try again when it is idle": now 75
  // (EX_TEMPFAIL), as for a folder in use. Since a busy file is held back as it last was, this is the case where that
  // state cannot be sent: the ledger's pages rewritten in place (the last state's chunks gone from the file) and no
  // chunk store to send them from. Produced: random 4 KiB pages rewritten every 3 ms (bounded: 30 s) against a site
  // with --no-store and --settle-timeout 1. A pull that finds the file quiet (and succeeds) must have met a pause of the
  // writer itself of QUIET_MS or more (its times are logged): then the case was not produced, and is again into a new
  // folder (at most 3 times). Found quiet while the writer never paused is the bug.
  it('a one-shot pull from a site that cannot send a busy file as it last was exits 75, try again later', async () => {
    const { src, served, dest } = await site(4, ['--settle-timeout', '1', '--no-store']);
    await waitFor(() => /indexed acme: generation 1/.test(served.stderr()), 20_000);
    const log = path.join(tmp.dir, 'pages-exit75.log');
    const writer = pageWriter(path.join(src, 'Manager.900'), log);
    try {
      await new Promise((r) => setTimeout(r, 300));
      for (let attempt = 1; ; attempt++) {
        const to = attempt === 1 ? dest : `${dest}-${attempt}`;
        const t0 = Date.now();
        const r = await runCli(['pull', served.url, 'acme', to, '--secret', key]);
        if (r.code === 0 && attempt < 3) {
          expectWriterPaused(loggedTimes(log), t0, QUIET_MS, 'Manager.900');
          continue;
        }
        expect(r.stderr).toMatch(/Manager\.900 kept changing .*SNAPFERRY_E_UNSTABLE_FILE/);
        expect(r.code).toBe(75);
        expect(fs.existsSync(to)).toBe(false);
        break;
      }
    } finally {
      writer.kill('SIGKILL');
      await served.stop();
    }
  });

  // BUG (src/sync/follow.ts): a site that could not hold a file still past its settle timeout (a long posting run)
  // answered UNSTABLE_FILE, and the follower ended (exit 1) although the site itself says "try again when idle".
  // Produced: bursts of appends to the journal against a site with --settle-timeout 1.
  it('waits out a file the site cannot hold still, then applies its final content', async () => {
    const { src, served, dest } = await site(4, ['--settle-timeout', '1']);
    const f = follower(served.url, dest);
    try {
      await waitFor(() => f.lines().length >= 1, 20_000);
      const journal = path.join(src, 'Journal.log');
      // Bursts of 1.5 s with 300 ms pauses: a generation settles in a pause, and the pull it announces finds the next
      // burst under way at the site.
      for (let burst = 0, i = 0; burst < 4; burst++) {
        const until = Date.now() + 1500;
        while (Date.now() < until && i < 1000) {
          fs.appendFileSync(journal, `VCH-${i++}|posting run|${'x'.repeat(200)}\n`);
          await new Promise((r) => setTimeout(r, 30));
        }
        await new Promise((r) => setTimeout(r, 300));
      }
      await waitFor(() => fingerprintDiff(treeFingerprint(src), treeFingerprint(dest)).length === 0, 40_000, 200);
      expect(f.child.exitCode, f.err()).toBeNull();
    } finally {
      await stop(f);
      await served.stop();
    }
  });

  // BUG (src/sync/follow.ts): the give-up test compared the capped backoff with its cap, so it never held: a follower
  // given a wrong address retried for ever where a one-shot pull says "site unreachable" at once.
  it('given an address where nothing listens, says so after a few tries and exits 69', async () => {
    // Below the ephemeral range: no other test's site or connection takes it meanwhile (see quietPort).
    const port = await quietPort();
    const dest = path.join(tmp.dir, 'nowhere', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const r = await runCli(['pull', `ws://127.0.0.1:${port}`, 'acme', dest, '--secret', key, '--follow'], { timeoutMs: 30_000 });
    expect(r.signal, 'still retrying after 30 s').toBeNull();
    expect(r.code, r.stderr).toBe(69);
    expect(r.stderr.trim().split('\n').pop()).toMatch(/site unreachable.*SNAPFERRY_E_UNREACHABLE/);
    expect(fs.readdirSync(path.dirname(dest))).toEqual([]);
  });

  // BUG (src/sync/follow.ts): the follower took "no generation applied yet" for "never reached the site", so a site
  // that went down in the middle of the seed (a head office restarting) ended the follower with exit 69 about 19 s
  // later (4 s here with --retries 1): each later pull, never connected itself, failed at once. Produced: the site
  // killed once the seed has begun, and brought back on the same address after the follower's 4th try.
  it('a site lost in the middle of the seed is waited for: the follower keeps trying and finishes the seed once it is back', async () => {
    // A port no other test's connection can take while the site is down (see quietPort).
    const port = await quietPort();
    const { src, served, dest } = await site(16, ['--bwlimit', '1M', '--listen', `127.0.0.1:${port}`]);
    const f = follower(served.url, dest, ['--retries', '1']);
    let again: ChildProcess | undefined;
    try {
      // The seed has begun: the pull reached the site and planned the generation.
      await waitFor(() => fs.existsSync(path.join(path.dirname(dest), '.acme.snapferry', 'next')), 20_000);
      served.child.kill('SIGKILL');
      await new Promise((r) => served.child.once('exit', r));
      // A follower that never reached its site ends at the 4th failed try; this one must go on past it.
      const tries = () => (f.err().match(/trying again in/g) ?? []).length;
      await waitFor(() => tries() >= 5 || f.child.exitCode !== null, 40_000, 100);
      expect(f.child.exitCode, f.err()).toBeNull();
      again = spawn(process.execPath, [CLI, 'serve', '--listen', `127.0.0.1:${port}`, '--secret', key, '--company', `acme=${src}`], { stdio: 'ignore' });
      await waitFor(() => f.lines().length >= 1 || f.child.exitCode !== null, 60_000, 100);
      expect(f.lines().length, f.err()).toBe(1);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    } finally {
      again?.kill('SIGTERM');
      await stop(f);
      await served.stop();
    }
  });

  // BUG (src/sync/session.ts, found by a helper review): a proxy's 502 (nginx in front of a site that restarts) was
  // "not a snapferry site", a final error: the follower ended for good (exit 76). Produced: a TCP proxy in this process
  // that answers 502 when the site refuses it, the site killed under a follower and brought back on its port once the
  // follower has met a 502, then a change.
  it('a follower behind a proxy outlives its site restarting (HTTP 502 meanwhile)', async () => {
    const port = await quietPort();
    const { src, served, dest } = await site(2, ['--listen', `127.0.0.1:${port}`]);
    const proxy = net.createServer((c) => {
      const up = net.connect(port, '127.0.0.1');
      let joined = false;
      up.once('connect', () => {
        joined = true;
        c.pipe(up).pipe(c);
      });
      up.on('error', () => (joined ? c.destroy() : c.end('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')));
      c.on('error', () => up.destroy());
    });
    const sockets = new Set<net.Socket>();
    proxy.on('connection', (c) => sockets.add(c));
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const f = follower(`ws://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`, dest, ['--no-spare']);
    let again: ChildProcess | undefined;
    try {
      await waitFor(() => f.lines().length >= 1, 20_000);
      served.child.kill('SIGKILL');
      await new Promise((r) => served.child.once('exit', r));
      await waitFor(() => /answered HTTP 502/.test(f.err()) || f.child.exitCode !== null, 20_000, 100);
      expect(f.child.exitCode, f.err()).toBeNull();
      again = spawn(process.execPath, [CLI, 'serve', '--listen', `127.0.0.1:${port}`, '--secret', key, '--company', `acme=${src}`], { stdio: 'ignore' });
      fs.writeFileSync(path.join(src, 'masters', 'after-restart.xml'), '<new/>\n');
      await waitFor(() => f.lines().length >= 2 || f.child.exitCode !== null, 60_000, 100);
      expect(f.lines().length, f.err()).toBe(2);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    } finally {
      again?.kill('SIGTERM');
      await stop(f);
      await served.stop();
      for (const c of sockets) c.destroy();
      await new Promise((r) => proxy.close(r));
    }
  });

  // BUG (src/sync/follow.ts waitForChange): a stop asked for while the follower connected after a pull (the abort
  // event had fired before its listener was added) was lost until the site next changed. Produced in this process:
  // the stop comes 1 ms after a generation is applied, while the follower reconnects.
  it('a stop asked for right after a generation is applied ends follow at once', async () => {
    const { served, dest } = await site(2);
    const ac = new AbortController();
    try {
      const t0 = Date.now();
      let applied = 0;
      const done = follow({ url: served.url, company: 'acme', dir: dest, secret: readSecret(key), durable: false, signal: ac.signal, pingMs: 60_000 }, () => {
        applied++;
        setTimeout(() => ac.abort(), 1);
      });
      const outcome = await Promise.race([done, new Promise((r) => setTimeout(() => r('hung'), 20_000))]);
      expect(outcome).toBe('stopped');
      expect(applied).toBe(1);
      expect(Date.now() - t0).toBeLessThan(15_000);
    } finally {
      ac.abort();
      await served.stop();
    }
  });

  // BUG (src/cli/main.ts, src/sync/follow.ts): SIGTERM only stopped follow between pulls: a seed over a thin link
  // went on to its end (minutes or hours) before the follower stopped. Produced: SIGTERM 1.5 s into a seed paced at
  // 256 KB/s; DIR must stay absent, and the next pull resume.
  it('SIGTERM in the middle of a pull ends the follower at once; the next pull resumes', async () => {
    const { src, served, dest } = await site(8);
    const f = follower(served.url, dest, ['--bwlimit', '256K']);
    try {
      // Once the seed is writing (not a fixed wait: under load a SIGTERM could land before the handlers are set).
      await waitFor(() => fs.existsSync(path.join(path.dirname(dest), '.acme.snapferry', 'next')), 20_000);
      await new Promise((r) => setTimeout(r, 500));
      expect(f.child.exitCode).toBeNull();
      const t0 = Date.now();
      f.child.kill('SIGTERM');
      // The bug held the follower until the seed's paced transfer ended (8 MiB company at 256 KB/s).
      const code = await Promise.race([f.exited, new Promise<string>((r) => setTimeout(() => r('still running'), 5000))]);
      expect(code, f.err()).toBe(0);
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(fs.existsSync(dest)).toBe(false);
      const r = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    } finally {
      await stop(f);
      await served.stop();
    }
  });

  // BUG (src/sync/follow.ts, src/sync/session.ts connect): a stop was heard only once a connection was made, so a
  // follower reconnecting through a link that takes TCP but never completes the upgrade ended 14 s after SIGINT (the
  // upgrade's timeout), where the README says at once. Produced with a proxy that passes the seed's connection and
  // holds every later one before its upgrade.
  it('SIGINT while the follower reconnects through a link that never upgrades ends it at once', async () => {
    const { served, dest } = await site(2);
    const port = Number(new URL(served.url).port);
    let connections = 0;
    const held: net.Socket[] = [];
    const proxy = net.createServer((client) => {
      if (connections++ > 0) {
        held.push(client); // taken, never answered
        client.on('error', () => undefined);
        return;
      }
      const up = net.connect(port, '127.0.0.1');
      for (const sock of [client, up]) sock.on('error', () => undefined);
      client.pipe(up).pipe(client);
      client.on('close', () => up.destroy());
      up.on('close', () => client.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
    const f = follower(`ws://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`, dest);
    try {
      await waitFor(() => f.lines().length >= 1, 20_000); // the seed is applied
      await waitFor(() => connections >= 2, 10_000); // the follower's connection, held before its upgrade
      await new Promise((r) => setTimeout(r, 300));
      const t0 = Date.now();
      f.child.kill('SIGINT');
      // Before: 14 s (the upgrade's timeout). 8 s allowed: clear of the bug, and of a loaded runner's slow exits.
      const code = await Promise.race([f.exited, new Promise<string>((r) => setTimeout(() => r('still running'), 10_000))]);
      expect(code, f.err()).toBe(0);
      expect(Date.now() - t0).toBeLessThan(8000);
    } finally {
      await stop(f);
      for (const sock of held) sock.destroy();
      proxy.close();
      await served.stop();
    }
  });
});
