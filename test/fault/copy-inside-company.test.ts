/**
 * A branch copy pulled into the very company folder it is pulled from (DIR inside the served folder). Found by a
 * helper review: the site served the copy and its state folder (lock included) back to it, so every generation held
 * the last one, one level deeper each time; a follower of a 1 MiB company filled 68 MB in 10 s and never settled.
 *
 * Produced with real processes: a site over 127.0.0.1 and `pull --follow` as a child process, bounded to 40 s. What
 * must hold: the site refuses the generation that holds a copy's state folder, by name; the follower ends on it with
 * one line and a non-zero exit; no generation nests a copy inside a copy.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir, secretFile, runCli, startServe } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

describe('a copy pulled into the company it is pulled from', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir('sf-copy-inside-');
  });
  afterAll(() => tmp?.cleanup());

  it('is refused by the site by name; a follower ends on it instead of nesting copies without end', async () => {
    const key = secretFile(tmp.dir);
    const company = path.join(tmp.dir, 'site', 'acme');
    await makeCompany(company, 1, 5);
    const served = await startServe(['--secret', key, '--company', `acme=${company}`]);
    const dest = path.join(company, 'branch');
    try {
      const r = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--follow', '--json'], { timeoutMs: 40_000 });
      expect(r.signal, 'the follower had to be killed: it never ended').toBeNull();
      expect(r.code).not.toBe(0);
      const lines = r.stderr.trim().split('\n');
      expect(lines.at(-1)).toMatch(/refused \.branch\.snapferry: the state folder of a snapferry copy \(branch\) lies inside the company.*SNAPFERRY_E_UNSAFE_TREE/);
      // At most the first generation (taken before the copy existed) was applied: no copy inside the copy.
      expect(fs.existsSync(path.join(dest, 'branch'))).toBe(false);
      expect(fs.existsSync(path.join(dest, '.branch.snapferry'))).toBe(false);
      expect(served.stderr()).toMatch(/state folder of a snapferry copy/);
    } finally {
      await served.stop();
    }
  }, 60_000);
});
