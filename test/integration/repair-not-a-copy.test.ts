/**
 * BUG (src/sync/pull.ts): `repair DIR URL NAME` on a path that holds no copy (a mistyped one, or an empty folder)
 * fetched the whole company there and said "repaired". The lock made the state folder before repair's check looked
 * for it, so the check ("re-establish a lost record only where the state folder shows snapferry made DIR") always
 * passed. Now refused in one line (SNAPFERRY_E_NOT_A_COPY, exit 73), with nothing made and nothing fetched.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir, secretFile, runCli, startServe, Served } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

describe('repair of a path that holds no copy', () => {
  let tmp: ReturnType<typeof tempDir>;
  let key: string;
  let served: Served;
  beforeAll(async () => {
    tmp = tempDir('sf-repair-nocopy-');
    key = secretFile(tmp.dir);
    const src = path.join(tmp.dir, 'src', 'acme');
    await makeCompany(src, 2, 7);
    served = await startServe(['--secret', key, '--company', `acme=${src}`]);
  }, 60_000);
  afterAll(async () => {
    await served?.stop();
    tmp?.cleanup();
  });

  it('a missing folder and an empty one are refused: nothing fetched, nothing made', async () => {
    const parent = path.join(tmp.dir, 'branch');
    fs.mkdirSync(parent);
    fs.mkdirSync(path.join(parent, 'empty'));
    for (const name of ['typo', 'empty']) {
      const before = fs.readdirSync(parent).sort();
      const r = await runCli(['repair', path.join(parent, name), served.url, 'acme', '--secret', key], { timeoutMs: 30_000 });
      expect(r.stdout).not.toMatch(/repaired/);
      expect(r.code, r.stderr).toBe(73);
      const lines = r.stderr.trim().split('\n');
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/no copy .*\[SNAPFERRY_E_NOT_A_COPY\]$/);
      expect(fs.readdirSync(parent).sort()).toEqual(before);
      expect(fs.readdirSync(path.join(parent, 'empty'))).toEqual([]);
    }
  }, 60_000);

  it('a copy whose record was lost is still re-established from the site', async () => {
    const dest = path.join(tmp.dir, 'b2', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const p = await runCli(['pull', served.url, 'acme', dest, '--secret', key]);
    expect(p.code, p.stderr).toBe(0);
    fs.rmSync(path.join(tmp.dir, 'b2', '.acme.snapferry', 'applied.json'));
    const r = await runCli(['repair', dest, served.url, 'acme', '--secret', key, '--json'], { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(0);
    const v = await runCli(['verify', '--deep', dest]);
    expect(v.code, v.stdout + v.stderr).toBe(0);
  }, 60_000);
});
