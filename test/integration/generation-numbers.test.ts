/**
 * A site's generation numbers never go back. Found by a helper review: the counter lived only in the scan cache
 * (`--cache-dir`/NAME.scan), so a cache lost, damaged or not saved (a full disk) started the numbers again at 1: a
 * branch's pull said "already holds generation 1" where its verify said 5, a follower printed 1, 2, 3, 4, 2, and one
 * number came to name two trees. Produced with real processes: a site with --cache-dir, two changes, the scan cache
 * deleted between two runs of the site.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir, secretFile, runCli, startServe, waitFor } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

describe('generation numbers across a lost scan cache', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir('sf-gennum-');
  });
  afterAll(() => tmp?.cleanup());

  it('go on from the last one, not from 1', async () => {
    const key = secretFile(tmp.dir);
    const company = path.join(tmp.dir, 'site', 'acme');
    const cache = path.join(tmp.dir, 'cache');
    await makeCompany(company, 2, 3);
    const dest = path.join(tmp.dir, 'branch', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const pull = async (url: string) => {
      const r = await runCli(['pull', url, 'acme', dest, '--secret', key, '--json']);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { generation: number }).generation;
    };
    const first = await startServe(['--secret', key, '--company', `acme=${company}`, '--cache-dir', cache]);
    try {
      expect(await pull(first.url)).toBe(1);
      for (const n of [2, 3]) {
        fs.writeFileSync(path.join(company, 'masters', `change-${n}.xml`), `<n>${n}</n>\n`);
        expect(await pull(first.url)).toBe(n);
      }
    } finally {
      await first.stop();
    }
    fs.rmSync(path.join(cache, 'acme.scan'));
    const second = await startServe(['--secret', key, '--company', `acme=${company}`, '--cache-dir', cache]);
    try {
      await waitFor(() => /indexed acme: generation \d+/.test(second.stderr()), 30_000);
      expect(second.stderr()).toMatch(/indexed acme: generation 3,/); // the same tree: the same number
      expect(await pull(second.url)).toBe(3);
      fs.writeFileSync(path.join(company, 'masters', 'change-4.xml'), '<n>4</n>\n');
      expect(await pull(second.url)).toBe(4);
    } finally {
      await second.stop();
    }
  }, 90_000);
});
