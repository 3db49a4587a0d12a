/**
 * Chunks that do not compress (scans, zips, encrypted backups in a company folder) are served from the site's chunk
 * store like any other. Found by a helper review: their stored frames are a few bytes larger than the chunks, and the
 * site refused any pack larger stored than raw, so it read each such pack from the store, threw it away, and read and
 * compressed the company's file again, as if there were no store.
 *
 * Produced with real processes: a site without the capabilities that override file permissions (setpriv, root only),
 * a company of random bytes stored at start, a pull held to 1 MiB/s, and the large file made mode 000 a second into it:
 * a site serving from its store never needs the file again; one reading the company fails the pull.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { tempDir, secretFile, runCli, startServe, waitFor, treeFingerprint, fingerprintDiff, NO_DAC_OVERRIDE } from '../helpers.js';

describe('incompressible chunks at a site with a chunk store', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir('sf-incompressible-');
  });
  afterAll(() => tmp?.cleanup());

  it.skipIf(NO_DAC_OVERRIDE.length === 0)('are sent from the store, not read from the company again', async () => {
    const key = secretFile(tmp.dir);
    const company = path.join(tmp.dir, 'site', 'acme');
    fs.mkdirSync(path.join(company, 'scans'), { recursive: true });
    const big = path.join(company, 'scans', 'archive.zip');
    fs.writeFileSync(big, randomBytes(6 << 20));
    fs.writeFileSync(path.join(company, 'ledger.txt'), 'ledger\n'.repeat(10_000));
    const before = treeFingerprint(company);
    const served = await startServe(['--secret', key, '--company', `acme=${company}`, '--cache-dir', path.join(tmp.dir, 'cache')], 30_000, undefined, NO_DAC_OVERRIDE);
    try {
      await waitFor(() => /stored acme: generation 1/.test(served.stderr()), 30_000);
      const dest = path.join(tmp.dir, 'branch', 'acme');
      fs.mkdirSync(path.dirname(dest));
      const pulling = runCli(['pull', served.url, 'acme', dest, '--secret', key, '--bwlimit', '1M'], { timeoutMs: 60_000 });
      await new Promise((r) => setTimeout(r, 1000));
      fs.chmodSync(big, 0);
      const r = await pulling;
      expect(r.code, r.stderr).toBe(0);
      fs.chmodSync(big, 0o644);
      expect(fingerprintDiff(before, treeFingerprint(dest))).toEqual([]);
    } finally {
      fs.chmodSync(big, 0o644);
      await served.stop();
    }
  }, 90_000);
});
