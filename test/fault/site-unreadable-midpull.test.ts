/**
 * A company file the site can no longer read while a pull fetches it (made mode 000 after the scan). Found by a helper
 * review: the branch was told SNAPFERRY_E_DIR_NOT_WRITABLE (exit 73, "permission denied" with the site's path), the
 * code of its own folder not writable, and the site logged nothing.
 *
 * Produced with real processes: a site without the capabilities that override file permissions (setpriv, root only)
 * and without a chunk store (--no-store: packs are read from the files as pulls ask), a pull held to 500 kB/s, and the
 * largest file made mode 000 a second into it.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir, secretFile, runCli, startServe, expectOutput, NO_DAC_OVERRIDE } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

describe('a company file the site can no longer read during a pull', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir('sf-site-unreadable-');
  });
  afterAll(() => tmp?.cleanup());

  it.skipIf(NO_DAC_OVERRIDE.length === 0)("is the site's I/O error, named and logged; the branch gets no copy", async () => {
    const key = secretFile(tmp.dir);
    const company = path.join(tmp.dir, 'site', 'acme');
    await makeCompany(company, 8, 5);
    const served = await startServe(['--secret', key, '--company', `acme=${company}`, '--no-store'], 30_000, undefined, NO_DAC_OVERRIDE);
    const dest = path.join(tmp.dir, 'branch', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const largest = fs
      .readdirSync(company)
      .map((n) => path.join(company, n))
      .filter((p) => fs.statSync(p).isFile())
      .sort((a, b) => fs.statSync(b).size - fs.statSync(a).size)[0]!;
    try {
      const pull = runCli(['pull', served.url, 'acme', dest, '--secret', key, '--bwlimit', '500K', '--retries', '0'], { timeoutMs: 90_000 });
      await new Promise((r) => setTimeout(r, 1000));
      fs.chmodSync(largest, 0o000);
      const r = await pull;
      expect(r.code).not.toBe(0);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/site cannot read its company: .*SNAPFERRY_E_IO/);
      expect(fs.existsSync(dest)).toBe(false);
      // The site's log line may reach this process after the pull's exit (another pipe).
      await expectOutput(served.stderr, /failed: the site cannot read its company/);
    } finally {
      fs.chmodSync(largest, 0o644);
      await served.stop();
    }
  });
});
