/**
 * kill -9 of a pull, produced for real: the puller is a child process killed with SIGKILL mid-transfer (when its
 * journal shows progress) or at named points of the commit (SNAPFERRY_FAULT_KILL_AT). Afterwards DIR is the old
 * generation or the new one, never a mix, and the next pull fetches nothing already verified.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, Served, CLI, waitFor } from '../helpers.js';
import { makeCompany, mutateCompany } from '../../src/gen/company.js';

/**
 * Starts a pull into `dest` on a slow link (--bwlimit, so that the kill lands mid-transfer) and kills it with SIGKILL
 * once its journal shows progress. Returns the journal's path.
 */
async function killMidTransfer(url: string, dest: string, key: string, rate: string): Promise<string> {
  fs.mkdirSync(path.dirname(dest));
  const journal = path.join(path.dirname(dest), `.${path.basename(dest)}.snapferry`, 'next.journal');
  const child = spawn(process.execPath, [CLI, 'pull', url, 'acme', dest, '--secret', key, '--bwlimit', rate], { stdio: 'ignore' });
  await waitFor(() => fs.existsSync(journal) && fs.statSync(journal).size >= 40, 30_000);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  return journal;
}

describe('resume and atomic commit under kill -9', () => {
  let tmp: ReturnType<typeof tempDir>;
  let company: string;
  let key: string;
  let served: Served;

  beforeAll(async () => {
    tmp = tempDir();
    company = path.join(tmp.dir, 'head', 'acme');
    await makeCompany(company, 24, 3);
    key = secretFile(tmp.dir);
    served = await startServe(['--secret', key, '--company', `acme=${company}`]);
  });

  afterAll(async () => {
    await served?.stop();
    tmp?.cleanup();
  });

  it('a seed killed mid-transfer leaves no DIR, and the next pull fetches only what was not verified', async () => {
    const dest = path.join(tmp.dir, 'b1', 'acme');
    const journal = await killMidTransfer(served.url, dest, key, '2M');
    expect(fs.existsSync(dest)).toBe(false);
    const journaled = fs.statSync(journal).size / 4;
    const r = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.chunksReused).toBeGreaterThanOrEqual(journaled);
    const full = await runCli(['pull', served.url, 'acme', path.join(tmp.dir, 'b1', 'fresh'), '--secret', key, '--json']);
    const total = JSON.parse(full.stdout).chunksFetched;
    expect(j.chunksFetched).toBeLessThanOrEqual(total - journaled);
    expect(fingerprintDiff(treeFingerprint(company), treeFingerprint(dest))).toEqual([]);
  });

  it('a seed killed before a symlink target was written resumes (the link it made dangles in next/ meanwhile)', async () => {
    const src = path.join(tmp.dir, 'src-link', 'acme');
    await makeCompany(src, 8, 13);
    fs.writeFileSync(path.join(src, 'zz-last.bin'), 'the target\n');
    fs.symlinkSync('zz-last.bin', path.join(src, 'A-link'));
    const local = await startServe(['--secret', key, '--company', `acme=${src}`]);
    try {
      const dest = path.join(tmp.dir, 'd-link', 'acme');
      fs.mkdirSync(path.dirname(dest));
      // Killed once planned: next/ holds its links and symlinks, and no file data yet.
      const killed = await runCli(['pull', local.url, 'acme', dest, '--secret', key], { env: { SNAPFERRY_FAULT_KILL_AT: 'planned' } });
      expect(killed.signal).toBe('SIGKILL');
      const next = path.join(path.dirname(dest), '.acme.snapferry', 'next');
      expect(fs.lstatSync(path.join(next, 'A-link')).isSymbolicLink()).toBe(true);
      expect(fs.existsSync(path.join(next, 'zz-last.bin'))).toBe(false);
      const r = await runCli(['pull', local.url, 'acme', dest, '--secret', key, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    } finally {
      await local.stop();
    }
  });

  for (const point of ['plan', 'commit', 'before-intent', 'intent', 'swap', 'swapped', 'committed']) {
    it(`a delta killed at "${point}" leaves the old or the new generation, and the next pull completes`, async () => {
      const src = path.join(tmp.dir, `src-${point}`, 'acme');
      // 16 MiB: enough small files that some stay unchanged (and are hard-linked) through the mutation.
      await makeCompany(src, 16, 11);
      const local = await startServe(['--secret', key, '--company', `acme=${src}`]);
      try {
        const dest = path.join(tmp.dir, `d-${point}`, 'acme');
        fs.mkdirSync(path.dirname(dest));
        expect((await runCli(['pull', local.url, 'acme', dest, '--secret', key])).code).toBe(0);
        const oldGen = treeFingerprint(dest);
        await mutateCompany(src, 5);
        const newGen = treeFingerprint(src);
        const killed = await runCli(['pull', local.url, 'acme', dest, '--secret', key], { env: { SNAPFERRY_FAULT_KILL_AT: point } });
        expect(killed.signal).toBe('SIGKILL');
        // Between the two renames of the swap DIR is briefly absent; any later snapferry run rolls it forward.
        if (point !== 'swap') {
          const now = treeFingerprint(dest);
          const isOld = fingerprintDiff(oldGen, now).length === 0;
          const isNew = fingerprintDiff(newGen, now).length === 0;
          expect(isOld || isNew, `DIR is a mix after a kill at ${point}`).toBe(true);
          // Until the swap DIR is untouched; the roll-forward happens on the next run.
          expect(isNew).toBe(['swapped', 'committed'].includes(point));
        }
        const r = await runCli(['pull', local.url, 'acme', dest, '--secret', key, '--json']);
        expect(r.code, r.stderr).toBe(0);
        expect(fingerprintDiff(newGen, treeFingerprint(dest))).toEqual([]);
        // From the commit point on, everything was verified: nothing is fetched again (the unchanged files the killed
        // attempt hard-linked are trusted although the link changed their ctime).
        if (point !== 'plan') expect(JSON.parse(r.stdout).chunksFetched).toBe(0);
        const state = path.join(path.dirname(dest), '.acme.snapferry');
        // The files the delta replaced stay as the spare generation, for the next delta to rewrite.
        expect(fs.readdirSync(state).sort()).toEqual(['applied.json', 'applied.manifest', 'applied.stats', 'spare', 'spare.manifest', 'spare.stats']);
      } finally {
        await local.stop();
      }
    });
  }

  it('a second pull into the same DIR at once is refused while the first runs', async () => {
    const dest = path.join(tmp.dir, 'lock', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const first = spawn(process.execPath, [CLI, 'pull', served.url, 'acme', dest, '--secret', key, '--bwlimit', '4M'], { stdio: 'ignore' });
    const lock = path.join(path.dirname(dest), '.acme.snapferry', 'lock');
    await waitFor(() => fs.existsSync(lock), 20_000);
    const second = await runCli(['pull', served.url, 'acme', dest, '--secret', key]);
    expect(second.code).not.toBe(0);
    expect(second.stderr).toMatch(/in use by snapferry process \d+.*SNAPFERRY_E_DIR_LOCKED/);
    const code = await new Promise((r) => first.once('exit', r));
    expect(code).toBe(0);
    expect(fingerprintDiff(treeFingerprint(company), treeFingerprint(dest))).toEqual([]);
  });
});
