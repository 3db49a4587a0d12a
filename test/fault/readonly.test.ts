/**
 * DIR not writable, produced for real: the folder that would hold DIR is a read-only tmpfs the test mounts (as root
 * even EACCES by mode bits does not apply, so a read-only filesystem is the honest way). Skipped, with the reason,
 * where mounts are not allowed.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { tempDir, secretFile, runCli, startServe, Served } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

const tmp = tempDir('sf-ro-');
const mnt = path.join(tmp.dir, 'ro');
let mounted = false;
try {
  fs.mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', mnt], { stdio: 'ignore' });
  mounted = true;
} catch {
  mounted = false;
}

describe.skipIf(!mounted)('DIR on a read-only filesystem (needs root to mount a tmpfs)', () => {
  let served: Served;
  let key: string;
  beforeAll(async () => {
    const src = path.join(tmp.dir, 'src', 'acme');
    await makeCompany(src, 1, 51);
    key = secretFile(tmp.dir);
    served = await startServe(['--secret', key, '--company', `acme=${src}`]);
  });
  afterAll(async () => {
    await served?.stop();
    if (mounted) execFileSync('umount', [mnt], { stdio: 'ignore' });
    tmp.cleanup();
  });

  it('is refused with one line, SNAPFERRY_E_DIR_NOT_WRITABLE, and nothing written', async () => {
    const r = await runCli(['pull', served.url, 'acme', path.join(mnt, 'acme'), '--secret', key]);
    expect(r.code).toBe(73);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/cannot write into .*SNAPFERRY_E_DIR_NOT_WRITABLE/);
    expect(fs.readdirSync(mnt)).toEqual([]);
  });
});

if (!mounted) {
  describe('DIR on a read-only filesystem', () => {
    it.skip('skipped: cannot mount a tmpfs here (not root)', () => undefined);
  });
  afterAll(() => tmp.cleanup());
}
