/**
 * DIR not writable, produced for real: the folder that would hold DIR is a read-only tmpfs the test mounts (as root
 * even EACCES by mode bits does not apply, so a read-only filesystem is the honest way). Skipped, with the reason,
 * where mounts are not allowed. Then a folder on procfs, which root may write but where mkdir answers ENOENT: the pull's
 * state folder, serve's --cache-dir and mkcompany's folder there spun at full CPU until killed (Node's recursive mkdir
 * looped).
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

const IS_ROOT = process.getuid?.() === 0;

describe.skipIf(!IS_ROOT || !fs.existsSync('/proc/self'))('a folder on procfs, which takes no new folders (as root)', () => {
  const own = tempDir('sf-procfs-');
  afterAll(() => own.cleanup());
  it('pull into /proc/NAME: one line, SNAPFERRY_E_DIR_NOT_WRITABLE, at once', async () => {
    const key = secretFile(own.dir, 'pull.key');
    // No site is needed: the state folder is made before the site is asked anything.
    const r = await runCli(['pull', 'ws://127.0.0.1:9', 'acme', `/proc/sf-ro-test-${process.pid}`, '--secret', key], { timeoutMs: 20_000 });
    expect(r.signal).toBeNull();
    expect(r.code).toBe(73);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/takes no new folders .*SNAPFERRY_E_DIR_NOT_WRITABLE/);
  }, 30_000);

  it('mkcompany /proc/NAME: one line and a non-zero exit, at once', async () => {
    const r = await runCli(['mkcompany', `/proc/sf-ro-test-${process.pid}`, '1'], { timeoutMs: 20_000 });
    expect(r.signal).toBeNull();
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/SNAPFERRY_E_/);
  }, 30_000);

  it('serve --cache-dir under /proc: one line, SNAPFERRY_E_USAGE, at once', async () => {
    const key = secretFile(own.dir, 'serve.key');
    const co = path.join(own.dir, 'empty-co');
    fs.mkdirSync(co, { recursive: true });
    const r = await runCli(['serve', '--listen', '127.0.0.1:0', '--secret', key, '--company', `acme=${co}`, '--cache-dir', `/proc/sf-ro-test-${process.pid}/cache`], { timeoutMs: 20_000 });
    expect(r.signal).toBeNull();
    expect(r.code).toBe(64);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/--cache-dir .* cannot be made: the filesystem there takes no new folders .*SNAPFERRY_E_USAGE/);
  }, 30_000);
});
