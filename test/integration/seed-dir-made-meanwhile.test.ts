/**
 * A folder the user makes at DIR, with files in it, while a seed into DIR runs is not snapferry's: the seed must not
 * replace it. Before, DIR was checked only when the pull began (absent then); the commit took the user's folder for
 * the generation being replaced, moved it into the state folder's spare/ (which the next delta rewrites or deletes)
 * and put the company in its place: the user's file vanished from DIR with exit 0.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { tempDir, secretFile, runCli, startServe, waitFor, treeFingerprint, fingerprintDiff, CLI, Served } from '../helpers.js';
import { makeCompany, mutateCompany } from '../../src/gen/company.js';

/** A 4 MiB company served on 127.0.0.1 for the cases of one describe (made before them, stopped and removed after). */
function servedCompany(prefix: string, seed: number): { tmp: ReturnType<typeof tempDir>; company: string; key: string; served: Served } {
  const f = {} as { tmp: ReturnType<typeof tempDir>; company: string; key: string; served: Served };
  beforeAll(async () => {
    f.tmp = tempDir(prefix);
    f.company = path.join(f.tmp.dir, 'head', 'acme');
    await makeCompany(f.company, 4, seed);
    f.key = secretFile(f.tmp.dir);
    f.served = await startServe(['--secret', f.key, '--company', `acme=${f.company}`]);
  });
  afterAll(async () => {
    await f.served?.stop();
    f.tmp?.cleanup();
  });
  return f;
}

describe('a folder made at DIR while a seed runs', () => {
  const site = servedCompany('sf-made-meanwhile-', 13);

  it('is refused by name at the commit and kept whole; moved away, the next pull completes the seed', async () => {
    const branch = path.join(site.tmp.dir, 'branch');
    fs.mkdirSync(branch);
    const dest = path.join(branch, 'acme');
    // A capped seed (about 1.3 MB on the wire at 256 KiB/s: some seconds), so that the folder is made while it runs.
    const child = spawn(process.execPath, [CLI, 'pull', site.served.url, 'acme', dest, '--secret', site.key, '--bwlimit', '256K'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const kill = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const ended = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
    // Once the seed is writing its next generation beside DIR.
    await waitFor(() => fs.existsSync(path.join(branch, '.acme.snapferry', 'next')), 20_000, 20);
    fs.mkdirSync(dest);
    fs.writeFileSync(path.join(dest, 'mine.txt'), 'the user\'s own\n');
    const code = await ended;
    clearTimeout(kill);
    expect(code, err).toBe(73);
    expect(err.trim().split('\n'), err).toHaveLength(1);
    expect(err).toMatch(/acme.*not made by snapferry.*SNAPFERRY_E_DIR_FOREIGN/);
    expect(fs.readdirSync(dest)).toEqual(['mine.txt']);
    expect(fs.readFileSync(path.join(dest, 'mine.txt'), 'utf8')).toBe('the user\'s own\n');

    // The user moves the folder away: the next pull completes the seed, exactly.
    fs.renameSync(dest, path.join(branch, 'mine'));
    const again = await runCli(['pull', site.served.url, 'acme', dest, '--secret', site.key, '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(fingerprintDiff(treeFingerprint(site.company), treeFingerprint(dest))).toEqual([]);
    expect(fs.readFileSync(path.join(branch, 'mine', 'mine.txt'), 'utf8')).toBe('the user\'s own\n');
  });
});

describe('a folder put at DIR in place of the copy while a delta runs', () => {
  const site = servedCompany('sf-swapped-meanwhile-', 17);

  it('is refused by name at the commit and kept whole (before, it was moved into spare/ and the delta put in its place)', async () => {
    const branch = path.join(site.tmp.dir, 'branch');
    fs.mkdirSync(branch);
    const dest = path.join(branch, 'acme');
    const seed = await runCli(['pull', site.served.url, 'acme', dest, '--secret', site.key]);
    expect(seed.code, seed.stderr).toBe(0);
    await mutateCompany(site.company, 5);
    await waitFor(() => (site.served.stderr().match(/indexed acme/g) ?? []).length >= 2, 20_000);
    // A capped delta (a few hundred KB at 64 KiB/s: seconds), so that the swap happens while it transfers.
    const child = spawn(process.execPath, [CLI, 'pull', site.served.url, 'acme', dest, '--secret', site.key, '--bwlimit', '64K'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const kill = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const ended = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
    await waitFor(() => fs.existsSync(path.join(branch, '.acme.snapferry', 'next.verified')), 20_000, 20);
    fs.renameSync(dest, path.join(branch, 'acme.moved'));
    fs.mkdirSync(dest);
    fs.writeFileSync(path.join(dest, 'mine.txt'), 'the user\'s own\n');
    const code = await ended;
    clearTimeout(kill);
    expect(code, err).toBe(73);
    expect(err.trim().split('\n'), err).toHaveLength(1);
    expect(err).toMatch(/SNAPFERRY_E_DIR_FOREIGN/);
    expect(fs.readdirSync(dest)).toEqual(['mine.txt']);
  });
});
