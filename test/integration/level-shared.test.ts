/**
 * `serve --level` holds whoever pulls. Found by a helper review: packs pulled by two branches at once are compressed
 * once for both (the shared cache), and those were always made at level 1: a site told `--level none` (to spare its
 * CPU) compressed them all the same as soon as a second branch came. Produced with real processes: a site with
 * `--level none` (no store: packs are made as pulls ask) and three pulls of one company at once.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

describe('serve --level with branches pulling at once', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir('sf-level-shared-');
  });
  afterAll(() => tmp?.cleanup());

  it('--level none sends every pull its chunks uncompressed, shared packs included', async () => {
    const key = secretFile(tmp.dir);
    const company = path.join(tmp.dir, 'site', 'acme');
    await makeCompany(company, 8, 9); // company data compresses ~3x
    const served = await startServe(['--secret', key, '--company', `acme=${company}`, '--level', 'none']);
    try {
      const pulls = [1, 2, 3].map(async (i) => {
        const dest = path.join(tmp.dir, `b${i}`, 'acme');
        fs.mkdirSync(path.dirname(dest));
        const r = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json', '--no-fsync'], { timeoutMs: 60_000 });
        expect(r.code, r.stderr).toBe(0);
        expect(fingerprintDiff(treeFingerprint(company), treeFingerprint(dest))).toEqual([]);
        return JSON.parse(r.stdout) as { bytes: number; bytesOnWire: number };
      });
      for (const j of await Promise.all(pulls)) expect(j.bytesOnWire).toBeGreaterThan(j.bytes); // before: ~0.35x
    } finally {
      await served.stop();
    }
  }, 90_000);
});
