/**
 * The disk holding a served company goes away (a NAS or USB disk unmounted at the head office). Found by a helper
 * review: the site offered the empty mount point left at the company's path as a generation of 0 files, and every
 * branch applied it (its files only in the spare generation until the next delta).
 *
 * Produced with a real tmpfs mounted at the company's path (root only; skipped with the reason otherwise), a site
 * over 127.0.0.1 and the CLI as child processes. What must hold: the site refuses to offer the company while its
 * disk is gone (one line at the branch, non-zero exit), the branch keeps its copy, and once the disk is back the
 * company is offered again.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, tmpfsUnavailable } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

const skipReason = tmpfsUnavailable();
if (skipReason) console.warn(`site-disk-unmounted.test.ts skipped: ${skipReason}`);

describe.skipIf(skipReason !== undefined)('the disk of a served company unmounted', () => {
  let tmp: ReturnType<typeof tempDir>;
  let mounted: string | undefined;
  beforeAll(() => {
    tmp = tempDir('sf-disk-gone-');
  });
  afterAll(() => {
    if (mounted) spawnSync('umount', ['-l', mounted]);
    tmp?.cleanup();
  });

  it('is not offered as an empty company: the branch keeps its copy; the disk back, pulls resume', async () => {
    const key = secretFile(tmp.dir);
    const company = path.join(tmp.dir, 'site', 'acme');
    fs.mkdirSync(company, { recursive: true });
    const disk = path.join(tmp.dir, 'disk-image');
    const mount = () => {
      const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', company], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      mounted = company;
    };
    mount();
    await makeCompany(company, 2, 9);
    const served = await startServe(['--secret', key, '--company', `acme=${company}`]);
    const dest = path.join(tmp.dir, 'branch', 'acme');
    fs.mkdirSync(path.dirname(dest));
    try {
      let r = await runCli(['pull', served.url, 'acme', dest, '--secret', key]);
      expect(r.code, r.stderr).toBe(0);
      const copy = treeFingerprint(dest);
      // Kept aside to mount again: the same files, as a disk brought back holds them.
      fs.cpSync(company, disk, { recursive: true, preserveTimestamps: true });
      expect(spawnSync('umount', [company]).status).toBe(0);
      mounted = undefined;
      expect(fs.readdirSync(company)).toEqual([]);
      r = await runCli(['pull', served.url, 'acme', dest, '--secret', key]);
      expect(r.code).not.toBe(0);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/no longer on the filesystem it was on/);
      expect(fingerprintDiff(copy, treeFingerprint(dest))).toEqual([]);
      mount();
      fs.cpSync(disk, company, { recursive: true, preserveTimestamps: true });
      r = await runCli(['pull', served.url, 'acme', dest, '--secret', key]);
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(company), treeFingerprint(dest))).toEqual([]);
    } finally {
      await served.stop();
    }
  }, 90_000);
});
