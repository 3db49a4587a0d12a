/**
 * A folder of the company replaced by a symbolic link to a folder outside it, after the site's scan listed it and
 * before the scan read the files in it. Found by a helper review: the scan opened the listed paths through the link
 * (O_NOFOLLOW guards the last name only), took what it read for a change of the files, and served a file from outside
 * the company (a root-only file, the site running as root) to the branch, with exit 0.
 *
 * Produced with real processes: a site over 127.0.0.1, the CLI as child processes. The moment is made wide by giving
 * the file a whole-second mtime (the scan waits ~2 s before reading such a file: it could still change within the
 * same second), and the swap is made one second into that wait.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir, secretFile, runCli, startServe } from '../helpers.js';

const SECRET = 'root-only secret outside the company\n';

describe('a company folder swapped for a link to outside while the site scans it', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir('sf-swapped-');
  });
  afterAll(() => tmp?.cleanup());

  /** Every file under `dir` whose bytes are SECRET. */
  function holdingSecret(dir: string): string[] {
    if (!fs.existsSync(dir)) return [];
    return fs
      .readdirSync(dir, { recursive: true, withFileTypes: true })
      .filter((d) => d.isFile())
      .map((d) => path.join(d.parentPath ?? d.path, d.name))
      .filter((f) => fs.readFileSync(f, 'utf8') === SECRET);
  }

  it('never serves the file it finds through the link; the branch keeps a generation of the company', async () => {
    const key = secretFile(tmp.dir);
    const outside = path.join(tmp.dir, 'outside');
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(outside, 'leak.txt'), SECRET, { mode: 0o600 });
    const company = path.join(tmp.dir, 'site', 'acme');
    fs.mkdirSync(path.join(company, 'zz'), { recursive: true });
    fs.writeFileSync(path.join(company, 'zz', 'leak.txt'), 'inside\n');
    fs.writeFileSync(path.join(company, 'ledger.dat'), 'ledger\n');
    const served = await startServe(['--secret', key, '--company', `acme=${company}`]);
    const dest = path.join(tmp.dir, 'branch', 'acme');
    fs.mkdirSync(path.dirname(dest));
    try {
      const seed = await runCli(['pull', served.url, 'acme', dest, '--secret', key]);
      expect(seed.code, seed.stderr).toBe(0);
      // A change the site sees, stamped on a whole second: its read waits, and the swap falls in the wait.
      const now = Math.floor(Date.now() / 1000);
      fs.utimesSync(path.join(company, 'zz', 'leak.txt'), now, now);
      const pull = runCli(['pull', served.url, 'acme', dest, '--secret', key], { timeoutMs: 60_000 });
      await new Promise((r) => setTimeout(r, 1000));
      fs.renameSync(path.join(company, 'zz'), path.join(company, 'zz.orig'));
      fs.symlinkSync(outside, path.join(company, 'zz'));
      const r = await pull;
      expect(r.signal).toBeNull();
      expect(holdingSecret(dest)).toEqual([]);
      // Whatever the site offers next refuses the link by name; the branch never gets the outside file.
      const again = await runCli(['pull', served.url, 'acme', dest, '--secret', key]);
      expect(again.code).not.toBe(0);
      expect(again.stderr).toMatch(/zz.*symlink/);
      expect(holdingSecret(dest)).toEqual([]);
    } finally {
      await served.stop();
    }
  });
});
