/**
 * A branch copy on disks the test makes itself: ext4 images, loop-mounted (root only; skipped with the reason
 * otherwise), a site over 127.0.0.1 and the CLI as child processes. Both cases found by a helper review:
 *
 * - A branch on a filesystem that keeps whole seconds (ext4 with 128-byte inodes): every file's mtime was compared to
 *   the microsecond with what snapferry had set, so every pull of an unchanged company fetched it all, and verify
 *   called a fresh copy damaged (58 "mtime-changed").
 * - Bit rot in a copy's file (a data block changed on the disk, inode and ctime untouched; made here by writing into
 *   the unmounted image at the block debugfs names): repair mended it, but the damaged file became the spare of its
 *   path with a stamp that still matched, and the next delta built the new version on it: the damage came back with
 *   exit 0.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

function cannotMount(): string | undefined {
  if (process.platform !== 'linux') return 'loop mounts need Linux';
  if (process.getuid?.() !== 0) return 'a loop mount needs root';
  for (const tool of ['mkfs.ext4', 'debugfs']) if (spawnSync(tool, ['-V']).error) return `${tool} not found (e2fsprogs)`;
  if (!fs.existsSync('/dev/loop-control')) return 'no loop devices here (/dev/loop-control)';
  return undefined;
}

const skipReason = cannotMount();
if (skipReason) console.warn(`branch-disk-images.test.ts skipped: ${skipReason}`);

describe.skipIf(skipReason !== undefined)('a branch copy on ext4 images the test mounts', () => {
  let tmp: ReturnType<typeof tempDir>;
  let key: string;
  const mounted: string[] = [];

  beforeAll(() => {
    tmp = tempDir('sf-branch-images-');
    key = secretFile(tmp.dir);
  });
  afterAll(() => {
    for (const m of mounted) if (spawnSync('umount', [m]).status !== 0) spawnSync('umount', ['-l', m]);
    tmp?.cleanup();
  });

  /** A new ext4 image of `mib` MiB (mkfs options `extra`), mounted; returns the image and the mount point. */
  function image(name: string, mib: number, extra: string[] = []): { img: string; mnt: string } {
    const img = path.join(tmp.dir, `${name}.img`);
    fs.writeFileSync(img, '');
    fs.truncateSync(img, mib << 20);
    const mk = spawnSync('mkfs.ext4', ['-q', '-F', ...extra, img], { encoding: 'utf8' });
    expect(mk.status, mk.stderr).toBe(0);
    const mnt = path.join(tmp.dir, name);
    fs.mkdirSync(mnt);
    mount(img, mnt);
    return { img, mnt };
  }
  function mount(img: string, mnt: string): void {
    const r = spawnSync('mount', ['-o', 'loop', img, mnt], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    mounted.push(mnt);
  }
  function umount(mnt: string): void {
    expect(spawnSync('umount', [mnt]).status).toBe(0);
    mounted.splice(mounted.indexOf(mnt), 1);
  }

  it('on whole-second timestamps: a re-pull is unchanged and verify calls the copy intact', async () => {
    const src = path.join(tmp.dir, 'site-coarse', 'acme');
    await makeCompany(src, 2, 31);
    const served = await startServe(['--secret', key, '--company', `acme=${src}`]);
    try {
      const { mnt } = image('coarse', 48, ['-I', '128']);
      const dest = path.join(mnt, 'acme');
      let r = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const v = await runCli(['verify', dest]);
      expect(v.code, v.stdout).toBe(0);
      r = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ unchanged: true, chunksFetched: 0 });
    } finally {
      await served.stop();
    }
  }, 90_000);

  it('a file repair mended from bit rot does not come back damaged with the next delta', async () => {
    const src = path.join(tmp.dir, 'site-rot', 'acme');
    await makeCompany(src, 4, 32);
    const served = await startServe(['--secret', key, '--company', `acme=${src}`]);
    try {
      const { img, mnt } = image('rot', 64, ['-b', '4096']);
      const dest = path.join(mnt, 'acme');
      let r = await runCli(['pull', served.url, 'acme', dest, '--secret', key]);
      expect(r.code, r.stderr).toBe(0);
      // Rot in the first block of the ledger, written into the unmounted image: no inode or ctime changes.
      umount(mnt);
      const block = Number(spawnSync('debugfs', ['-R', 'bmap /acme/Company.900 0', img], { encoding: 'utf8' }).stdout.trim());
      expect(block).toBeGreaterThan(0);
      const fd = fs.openSync(img, 'r+');
      fs.writeSync(fd, Buffer.alloc(4096, 0x52), 0, 4096, block * 4096);
      fs.closeSync(fd);
      mount(img, mnt);
      expect((await runCli(['verify', dest, '--deep'])).code).toBe(1);
      r = await runCli(['repair', dest, served.url, 'acme', '--secret', key]);
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
      // A page of the ledger rewritten at the site, away from the rotten block.
      const ledger = path.join(src, 'Company.900');
      const wfd = fs.openSync(ledger, 'r+');
      fs.writeSync(wfd, Buffer.alloc(4096, 0x33), 0, 4096, 2 << 20);
      fs.closeSync(wfd);
      r = await runCli(['pull', served.url, 'acme', dest, '--secret', key]);
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
      expect((await runCli(['verify', dest, '--deep'])).code).toBe(0);
    } finally {
      await served.stop();
    }
  }, 90_000);
});
