/**
 * A branch copy pulled into the very company folder it is pulled from (DIR inside the served folder). Found by a
 * helper review: the site served the copy and its state folder (lock included) back to it, so every generation held
 * the last one, one level deeper each time; a follower of a 1 MiB company filled 68 MB in 10 s and never settled.
 *
 * Produced with real processes: a site over 127.0.0.1 and `pull --follow` as a child process, bounded to 23 s. What
 * must hold: the site refuses the generation that holds a copy's state folder, by name (logged; a pull is told in
 * one line, non-zero exit); no generation nests a copy inside a copy.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { tempDir, secretFile, runCli, startServe, CLI, waitFor } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

describe('a copy pulled into the company it is pulled from', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir('sf-copy-inside-');
  });
  afterAll(() => tmp?.cleanup());

  it('is refused by the site by name; a follower gets no generation holding a copy of itself', async () => {
    const key = secretFile(tmp.dir);
    const company = path.join(tmp.dir, 'site', 'acme');
    await makeCompany(company, 1, 5);
    const served = await startServe(['--secret', key, '--company', `acme=${company}`]);
    const dest = path.join(company, 'branch');
    try {
      // The follower may seed the generation indexed before its copy existed (the site vouching for it) or be refused
      // at once; either way no later generation is offered to it. Ended after the site has refused, or 20 s.
      const child = spawn(process.execPath, [CLI, 'pull', served.url, 'acme', dest, '--secret', key, '--follow', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr.on('data', (d) => (err += d));
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      try {
        await waitFor(() => child.exitCode !== null || /state folder of a snapferry copy/.test(served.stderr()), 20_000, 100);
        await new Promise((r) => setTimeout(r, 3000)); // time for a (wrong) next generation to be applied
      } finally {
        child.kill('SIGTERM');
      }
      await exited;
      expect(served.stderr()).toMatch(/refused \.branch\.snapferry: the state folder of a snapferry copy \(branch\) lies inside the company/);
      // No copy inside the copy, nor of its state.
      expect(fs.existsSync(path.join(dest, 'branch'))).toBe(false);
      expect(fs.existsSync(path.join(dest, '.branch.snapferry'))).toBe(false);
      // A pull now is refused by name, in one line.
      const r = await runCli(['pull', served.url, 'acme', dest, '--secret', key], { timeoutMs: 30_000 });
      expect(r.code, err).not.toBe(0);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/refused \.branch\.snapferry: the state folder of a snapferry copy \(branch\) lies inside the company.*SNAPFERRY_E_UNSAFE_TREE/);
    } finally {
      await served.stop();
    }
  }, 90_000);
});
