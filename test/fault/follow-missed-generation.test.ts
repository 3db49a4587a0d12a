/**
 * A follower away while its site moved on, coming back while a file there will not hold still: the scan its FOLLOW
 * causes fails (the file past --settle-timeout), and the file then settles back to exactly what it was. Real site and
 * follower (CLI child processes) through a fault proxy on 127.0.0.1 that cuts the follower's link and refuses it for a
 * while.
 * What must hold: the follower is told of the generation it lacks and applies it, though the watcher has no new
 * generation to announce (the tree is the one it announced while the follower was away).
 */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { tempDir, secretFile, startServe, treeFingerprint, fingerprintDiff, CLI, waitFor } from '../helpers.js';
import { FaultProxy, sleep, type ProxyConn } from './netfault.js';

describe('a follower back while a file will not hold still', () => {
  const tmp = tempDir('sf-follow-missed-');
  afterAll(() => tmp.cleanup());

  // BUG (src/sync/server.ts followerOf): a FOLLOW whose scan failed was never told of the site's current generation,
  // only of the next one the watcher announced; the watcher announces only a tree unlike the one it announced last,
  // so a follower that came back during a posting run that left the tree as it was waited at its old generation for
  // ever.
  it('is told of the generation it lacks once the scan its FOLLOW caused failed, and applies it', async () => {
    const key = secretFile(tmp.dir);
    const src = path.join(tmp.dir, 'site', 'acme');
    fs.mkdirSync(src, { recursive: true });
    const ledger = path.join(src, 'ledger.dat');
    const ledgerBytes = randomBytes(64 << 10);
    fs.writeFileSync(ledger, ledgerBytes);
    // Whole seconds, so that putting the time back makes the file exactly as it was.
    fs.utimesSync(ledger, 1_700_000_000, 1_700_000_000);
    fs.writeFileSync(path.join(src, 'vouchers.txt'), 'v1\n');
    const site = await startServe(['--secret', key, '--company', `acme=${src}`, '--settle-timeout', '1']);
    const conns: ProxyConn[] = [];
    let refusing = false;
    const proxy = await new FaultProxy(Number(new URL(site.url).port), () =>
      refusing
        ? 'refuse'
        : {
            s2c: (_u, c) => {
              if (!conns.includes(c)) conns.push(c);
              return undefined;
            },
          },
    ).start();
    const dest = path.join(tmp.dir, 'branch', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const child = spawn(process.execPath, [CLI, 'pull', proxy.url, 'acme', dest, '--secret', key, '--follow', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    const lines = () => out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { generation: number });
    let writing: NodeJS.Timeout | undefined;
    try {
      await waitFor(() => lines().length >= 1, 20_000);
      expect(lines()[0]!.generation).toBe(1);
      // Away: the link cut, and refused while the site moves on to generation 2.
      refusing = true;
      for (const c of conns.splice(0)) c.cut();
      fs.writeFileSync(path.join(src, 'vouchers.txt'), 'v1\nv2\n');
      await waitFor(() => /indexed acme: generation 2/.test(site.stderr()), 20_000);
      // A posting run on the ledger, then the follower may come back: its FOLLOW's scan meets the ledger changing.
      writing = setInterval(() => fs.writeFileSync(ledger, randomBytes(64 << 10)), 20);
      const before = proxy.connections;
      refusing = false;
      await waitFor(() => proxy.connections > before, 40_000);
      // Past the settle timeout (1 s) of the scan that FOLLOW caused, then the ledger exactly as it was.
      await sleep(2500);
      clearInterval(writing);
      writing = undefined;
      fs.writeFileSync(ledger, ledgerBytes);
      fs.utimesSync(ledger, 1_700_000_000, 1_700_000_000);
      await waitFor(() => lines().length >= 2, 30_000, 100);
      // 2, or a later number when the posting run held still long enough (on a loaded machine its 20 ms timer slips
      // past the 100 ms a file must be quiet) for a scan to index it as it was then: what counts is the tree applied.
      expect(lines()[1]!.generation).toBeGreaterThanOrEqual(2);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    } catch (e) {
      throw new Error(`${(e as Error).message}\nfollower stderr:\n${err}\nsite stderr:\n${site.stderr()}`);
    } finally {
      if (writing) clearInterval(writing);
      child.kill('SIGKILL');
      await proxy.close();
      await site.stop();
    }
  }, 120_000);
});
