/**
 * What a pull's progress reports say during a first delta: the bytes a base copy brings count as done when the copy
 * lands, not when the plan queues it. A real site (CLI child) over 127.0.0.1; the pull in-process (built, its workers
 * load from dist/) so that its reports are at hand.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff } from '../helpers.js';
import { makeCompany, mutateCompany } from '../../src/gen/company.js';
import { readSecret } from '../../src/cli/secret.js';
import type { pull as pullFn, PullProgress } from '../../src/sync/pull.js';

/** Path -> size of every regular file under `root`. */
function fileSizes(root: string, rel = ''): Map<string, number> {
  const out = new Map<string, number>();
  for (const d of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
    const r = path.join(rel, d.name);
    if (d.isDirectory()) for (const [k, v] of fileSizes(root, r)) out.set(k, v);
    else if (d.isFile()) out.set(r, fs.statSync(path.join(root, r)).size);
  }
  return out;
}

describe('progress of a delta', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => (tmp = tempDir()));
  afterAll(() => tmp?.cleanup());

  // Found in review: the plan credited every chunk a changed file's base copy would hold as done, so a first delta
  // showed ~99 % (and an ETA of a second or less) before its largest work, the copies of the changed files, began.
  // Produced by a 16 MiB company, its working-day mutation and a first delta (no spare exists after a seed).
  it('credits the chunks of a base copy when the copy lands, and ends at the generation\'s bytes', async () => {
    const key = secretFile(tmp.dir);
    const src = path.join(tmp.dir, 'src', 'acme');
    await makeCompany(src, 16, 31);
    const served = await startServe(['--secret', key, '--company', `acme=${src}`]);
    try {
      const dest = path.join(tmp.dir, 'dst', 'acme');
      fs.mkdirSync(path.dirname(dest));
      const seed = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json']);
      expect(seed.code, seed.stderr).toBe(0);
      const before = fileSizes(src);
      const beforePrint = treeFingerprint(src);
      await mutateCompany(src, 7);
      const after = fileSizes(src);
      const afterPrint = treeFingerprint(src);
      // Files kept at their path with other bytes: each is a base copy of DIR's version before its chunks are patched.
      let copied = 0;
      for (const [p, size] of after) if (before.has(p) && size > 0 && beforePrint.get(p) !== afterPrint.get(p)) copied += size;
      expect(copied).toBeGreaterThan(1 << 20);

      const { pull } = (await import(pathToFileURL(path.join(ROOT, 'dist', 'src', 'sync', 'pull.js')).href)) as { pull: typeof pullFn };
      const reports: PullProgress[] = [];
      const r = await pull({
        url: served.url,
        company: 'acme',
        dir: dest,
        secret: readSecret(key),
        durable: false,
        spare: false,
        timeoutMs: 30_000,
        onProgress: (p) => reports.push({ ...p }),
      });
      expect(r.unchanged).toBe(false);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);

      const transfer = reports.filter((p) => p.phase === 'transfer');
      expect(transfer.length).toBeGreaterThan(1);
      // When the transfer begins, none of the changed files' bytes is counted yet.
      expect(transfer[0]!.bytesDone).toBeLessThanOrEqual(transfer[0]!.bytesTotal - copied);
      // Counted once each: never going back, never past the total, and all of it by the commit.
      for (let i = 1; i < reports.length; i++) expect(reports[i]!.bytesDone).toBeGreaterThanOrEqual(reports[i - 1]!.bytesDone);
      const last = reports[reports.length - 1]!;
      expect(last.phase).toBe('commit');
      expect(last.bytesDone).toBe(last.bytesTotal);
      expect(last.bytesTotal).toBe(r.bytes);
    } finally {
      await served.stop();
    }
  }, 120_000);
});
