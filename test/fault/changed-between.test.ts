/**
 * A seed cut by the link, then the company changed at the site before the next attempt: the resumed pull meets
 * another generation. Real site and puller (CLI child processes), a fault proxy on 127.0.0.1 that cuts the first
 * connection after 1.5 MB.
 * What must hold: what the first attempt verified is copied, not fetched again; the copy is exactly the new generation;
 * nothing of the first attempt is left once it is committed.
 */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, waitFor, journalRecords } from '../helpers.js';
import { makeCompany, mutateCompany } from '../../src/gen/company.js';
import { decodeManifest } from '../../src/manifest/manifest.js';
import { layoutOf } from '../../src/manifest/layout.js';
import { FaultProxy, afterBytes } from './netfault.js';

/** Ids of the chunks an interrupted attempt recorded as verified (its next.verified, by its next.manifest). */
function verifiedIds(state: string): Set<bigint> {
  const L = layoutOf(decodeManifest(fs.readFileSync(path.join(state, 'next.manifest'))));
  const ids = new Set<bigint>();
  for (const g of journalRecords(path.join(state, 'next.verified'))) if (g < L.total) ids.add(L.id[g]!);
  return ids;
}

/** Chunk occurrences of the committed generation (applied.manifest) whose id is among `ids`: what could be copied. */
function occurrencesAmong(state: string, ids: ReadonlySet<bigint>): number {
  const L = layoutOf(decodeManifest(fs.readFileSync(path.join(state, 'applied.manifest'))));
  let n = 0;
  for (let g = 0; g < L.total; g++) if (ids.has(L.id[g]!)) n++;
  return n;
}

describe('the company changed between two attempts of a pull', () => {
  const tmp = tempDir('sf-changed-between-');
  afterAll(() => tmp.cleanup());

  // BUG (src/sync/pull.ts plan): a next/ built for another generation was deleted whole, so a seed over a flaky link
  // of a company in use started from nothing after every drop that met a change (461 chunks fetched again of 461).
  it('a seed cut mid-transfer, then a change at the site: the resumed pull copies what it had verified', async () => {
    const key = secretFile(tmp.dir);
    const src = path.join(tmp.dir, 'site', 'acme');
    await makeCompany(src, 8, 71);
    const site = await startServe(['--secret', key, '--company', `acme=${src}`]);
    const proxy = await new FaultProxy(Number(new URL(site.url).port), (i) => (i === 0 ? { s2c: afterBytes('s2c', 1_500_000, 'cut') } : {})).start();
    try {
      const dest = path.join(tmp.dir, 'branch', 'acme');
      fs.mkdirSync(path.dirname(dest));
      const cut = await runCli(['pull', proxy.url, 'acme', dest, '--secret', key, '--retries', '0']);
      expect(cut.code).not.toBe(0);
      const state = path.join(tmp.dir, 'branch', '.acme.snapferry');
      const verified = journalRecords(path.join(state, 'next.verified')).size;
      expect(verified, 'the first attempt verified some chunks').toBeGreaterThan(20);
      const ids = verifiedIds(state);
      await mutateCompany(src, 72);
      // The site sees the change and indexes a second generation (bounded).
      await waitFor(() => /indexed acme: generation 2/.test(site.stderr()), 20_000);
      const r = await runCli(['pull', proxy.url, 'acme', dest, '--secret', key, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout) as { chunksFetched: number; chunksReused: number; generation: number };
      expect(j.generation).toBe(2);
      // Every chunk of the new generation whose id the first attempt verified is copied: exactly, whatever the load.
      const reusable = occurrencesAmong(state, ids);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
      // A fresh seed of the same generation, for comparison.
      const fresh = path.join(tmp.dir, 'fresh', 'acme');
      fs.mkdirSync(path.dirname(fresh));
      const f = await runCli(['pull', site.url, 'acme', fresh, '--secret', key, '--json']);
      expect(f.code, f.stderr).toBe(0);
      const all = JSON.parse(f.stdout).chunksFetched as number;
      // How much of what was verified the new generation still has depends on which packs arrived before the cut
      // (the site answers them as its workers finish): the mutation deletes every small file (all 39 of their chunks)
      // and rewrites pages densest in the smaller big files. 90-96% here when the cut falls in the big files, 80-84%
      // when the small files' pack came early, 78% once on a loaded CI runner (199 of 254); every time, every chunk
      // that could be copied was. The code before reused none.
      const msg = `${j.chunksFetched} fetched, ${j.chunksReused} reused (${reusable} could be), against ${all} for a fresh seed; ${verified} verified`;
      expect(j.chunksReused, msg).toBeGreaterThanOrEqual(reusable);
      expect(reusable, msg).toBeGreaterThan(verified * 0.5);
      expect(j.chunksFetched, msg).toBeLessThan(all - verified * 0.5);
      expect(fs.readdirSync(state).sort()).toEqual(['applied.json', 'applied.manifest', 'applied.stats']);
    } finally {
      await proxy.close();
      await site.stop();
    }
  }, 90_000);
});
