/**
 * Chunk size by company size (chunkParamsFor): a site that chooses a larger chunk for a large company, seen end to end.
 * A company of a few MiB stands for one 512 times larger: the site is a child process made with SnapferryServer's own
 * options and a policy that scales the company's size (a 4 GiB company in a test would take minutes); the branch is
 * the CLI. Over 127.0.0.1, real files in a temp folder.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { randomBytes } from 'node:crypto';
import { tempDir, secretFile, runCli, treeFingerprint, fingerprintDiff, waitFor, Served, ROOT, servedOnceListening } from '../helpers.js';
import { makeCompany, mutateCompany } from '../../src/gen/company.js';
import { readSecret } from '../../src/cli/secret.js';

const SCALE = 512;

/** A site whose companies count SCALE times their size when it chooses their chunk size. */
function startScaledSite(dir: string, secret: string, company: string): Promise<Served> {
  const url = (rel: string) => JSON.stringify(pathToFileURL(path.join(ROOT, 'dist', 'src', rel)).href);
  const script = path.join(dir, 'site.mjs');
  fs.writeFileSync(
    script,
    `
    import { SnapferryServer } from ${url('sync/server.js')};
    import { chunkParamsFor } from ${url('chunk/chunker.js')};
    const site = new SnapferryServer({ host: '127.0.0.1', port: 0, secretFor: () => Buffer.from(process.env.SF_SECRET, 'hex'),
      companies: new Map([['co', process.env.SF_COMPANY]]), chunkParams: (bytes, current) => chunkParamsFor(bytes * ${SCALE}, current),
      log: (l) => process.stderr.write(l + '\\n') });
    process.stdout.write('listening on ' + (await site.start()) + '\\n');
    process.once('SIGTERM', () => site.close().then(() => process.exit(0)));
  `,
  );
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SF_SECRET: readSecret(secret).toString('hex'), SF_COMPANY: company } });
  return servedOnceListening(child, 'site');
}

describe('chunk size by company size', () => {
  let tmp: ReturnType<typeof tempDir>;
  let site: Served | undefined;
  beforeAll(() => {
    tmp = tempDir('sf-levels-');
  });
  afterAll(async () => {
    site?.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 200));
    tmp.cleanup();
  });

  it('a large company is served in larger chunks; seed, delta and a change of size level are exact, and no delta costs a seed', async () => {
    const src = path.join(tmp.dir, 'src');
    const dst = path.join(tmp.dir, 'dst');
    const secret = secretFile(tmp.dir);
    await makeCompany(src, 8, 5);
    site = await startScaledSite(tmp.dir, secret, src);
    const pull = async (into: string) => {
      const r = await runCli(['pull', site!.url, 'co', into, '--secret', secret, '--json', '--no-fsync'], { timeoutMs: 60_000 });
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(into))).toEqual([]);
      return JSON.parse(r.stdout) as { generation: number; bytesOnWire: number; chunksFetched: number; chunksPatched: number; files: number };
    };
    // 8 MiB stands for 4 GiB: 64 KiB chunks, so about a quarter of the chunks a 16 KiB level would make.
    const seed = await pull(dst);
    expect(site.stderr()).toMatch(/indexed co: generation 1, .*chunks of 64\.0 KiB on average/);
    expect(seed.chunksFetched).toBeLessThan((8 << 20) / (32 << 10));
    // A working day's change: patched against the branch's chunks, a small fraction of the seed.
    await mutateCompany(src, 2);
    const delta = await pull(dst);
    expect(delta.generation).toBeGreaterThan(seed.generation);
    expect(delta.bytesOnWire).toBeLessThan(seed.bytesOnWire / 4);
    // Grown past twice the 64 KiB level's bound (34 MiB stands for 17 GiB): every chunk is cut anew at 256 KiB. The
    // existing files come by patches against the branch's own bytes; the new file is zeros (one chunk on the wire).
    fs.writeFileSync(path.join(src, 'Archive.900'), Buffer.alloc(26 << 20));
    const fd = fs.openSync(path.join(src, 'Archive.900'), 'r+');
    fs.writeSync(fd, randomBytes(4096), 0, 4096, 1 << 20);
    fs.closeSync(fd);
    const changed = await pull(dst);
    await waitFor(() => /chunks of 256\.0 KiB on average/.test(site!.stderr()), 10_000);
    expect(changed.chunksPatched).toBeGreaterThan(0);
    // A fresh seed of the same generation, for the price of the change (issue 3: a delta never costs more).
    const fresh = await pull(path.join(tmp.dir, 'fresh'));
    expect(fresh.generation).toBe(changed.generation);
    expect(changed.bytesOnWire).toBeLessThan(fresh.bytesOnWire / 2);
  });
});
