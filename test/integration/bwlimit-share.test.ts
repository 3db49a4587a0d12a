/**
 * `serve --bwlimit` is one cap for all branches, shared between them in turn. Before (found by a helper review), it
 * was one queue in arrival order: the first branch's whole request window (its 16 MiB of raw chunks, ~5 MB on the
 * wire) went before a byte of the second's, and the answers queued for a branch that had gone (killed, or timed out)
 * still spent the cap. On a 100k cap four branches starved each other into the 60 s timeout and three never finished.
 * Produced here with real CLI child processes on 127.0.0.1 against a site capped at 512 KiB/s: two pulls at once, and
 * a pull started right after another was killed, timed against a lone pull in the same test (ratios, not seconds).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, CLI, Served } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

describe('serve --bwlimit shares its cap between branches', () => {
  let tmp: ReturnType<typeof tempDir>;
  let key: string;
  let src: string;
  let small: string;
  let big: string;
  let served: Served;
  beforeAll(async () => {
    tmp = tempDir('sf-bwshare-');
    key = secretFile(tmp.dir);
    src = path.join(tmp.dir, 'acme');
    await makeCompany(src, 6, 71); // ~2 MB on the wire: ~4 s at the cap
    small = path.join(tmp.dir, 'small');
    await makeCompany(small, 2, 72); // ~0.65 MB on the wire
    big = path.join(tmp.dir, 'big');
    await makeCompany(big, 16, 73); // ~5 MB on the wire: a whole window of requests (16 MiB raw)
    served = await startServe(['--secret', key, '--bwlimit', '512k', '--company', `acme=${src}`, '--company', `small=${small}`, '--company', `big=${big}`]);
  });
  afterAll(async () => {
    await served?.stop();
    tmp?.cleanup();
  });

  const pull = async (name: string, company = 'acme'): Promise<{ seconds: number }> => {
    const r = await runCli(['pull', served.url, company, path.join(tmp.dir, name), '--secret', key, '--json'], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(fingerprintDiff(treeFingerprint(path.join(tmp.dir, company)), treeFingerprint(path.join(tmp.dir, name)))).toEqual([]);
    return JSON.parse(r.stdout) as { seconds: number };
  };

  it("a branch that comes while another pulls gets its share at once, not after the other's whole window", async () => {
    const alone = await pull('small-alone', 'small');
    const bigPull = pull('big-copy', 'big');
    await new Promise((r) => setTimeout(r, 1500)); // the big pull's window is queued at the site
    const during = await pull('small-during', 'small');
    await bigPull;
    // In turn: half the cap and no burst, ~2-3x a lone pull's time. One queue: after the big pull's queued megabytes.
    expect(during.seconds / alone.seconds).toBeLessThan(4);
  }, 90_000);

  it("a killed branch's queued answers do not hold up the next branch", async () => {
    const killed = spawn(process.execPath, [CLI, 'pull', served.url, 'acme', path.join(tmp.dir, 'killed'), '--secret', key], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 800)); // its window is asked for; little of it has been sent
    killed.kill('SIGKILL');
    await new Promise((r) => killed.once('exit', r));
    const after = await pull('after-kill');
    const alone = await pull('alone');
    // Before: the killed branch's ~1.5 MB went first, ~1.7x a lone pull's time. 1.5, not tighter: a loaded runner's
    // noise in one 4 s pull is a tenth of it either way.
    expect(after.seconds / alone.seconds).toBeLessThan(1.5);
  }, 90_000);
});
