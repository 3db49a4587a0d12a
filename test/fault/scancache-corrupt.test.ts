/**
 * A scan cache file (serve --cache-dir) damaged on disk in a way that still decodes: one chunk length of a file's list
 * changed. The site must not trust it: a restarted site that took it served a manifest whose chunk lengths do not add
 * up to the file's size, which every branch refuses as hostile data (exit 65), and the site never healed (the file's
 * stats still matched the damaged row, so it was never read again).
 */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, waitFor, Served } from '../helpers.js';

describe('scan cache file damaged on disk', () => {
  const tmp = tempDir('sf-scancache-');
  let served: Served | undefined;
  afterAll(async () => {
    await served?.stop();
    tmp.cleanup();
  });

  it('is not trusted by a restarted site: the branch gets an exact copy, not a manifest it refuses', async () => {
    const key = secretFile(tmp.dir);
    const company = path.join(tmp.dir, 'head', 'acme');
    const cacheDir = path.join(tmp.dir, 'cache');
    fs.mkdirSync(company, { recursive: true });
    // One chunk: its list is one length (5000, varint 0x88 0x27) and one id.
    fs.writeFileSync(path.join(company, 'ledger.dat'), randomBytes(5000));
    fs.utimesSync(path.join(company, 'ledger.dat'), new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
    served = await startServe(['--secret', key, '--company', `acme=${company}`, '--cache-dir', cacheDir, '--no-store']);
    await waitFor(() => /indexed acme: generation 1/.test(served!.stderr()), 30_000);
    await served.stop();
    served = undefined;

    // The row: path, size (varint), mtime, ctime, inode (8 bytes each), chunk count (varint), then the first length.
    const file = path.join(cacheDir, 'acme.scan');
    const buf = fs.readFileSync(file);
    const at = buf.indexOf('ledger.dat') + 'ledger.dat'.length + 2 + 24 + 1;
    expect([buf[at], buf[at + 1]]).toEqual([0x88, 0x27]);
    buf[at] = 0x87; // 4999
    fs.writeFileSync(file, buf);

    served = await startServe(['--secret', key, '--company', `acme=${company}`, '--cache-dir', cacheDir, '--no-store']);
    const dest = path.join(tmp.dir, 'branch', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const r = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json', '--no-fsync'], { timeoutMs: 30_000 });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(fingerprintDiff(treeFingerprint(company), treeFingerprint(dest))).toEqual([]);
  }, 60_000);
});
