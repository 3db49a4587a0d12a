/**
 * kill -9 at seeded random moments: trials alternate a seed and a delta; each kills the PULLER or the SERVER (both
 * real CLI child processes) either after a random delay within the transfer (made to last ~1-2 s with --bwlimit) or,
 * for the puller, at a named point of the commit (SNAPFERRY_FAULT_KILL_AT). Every other delta runs with --no-fsync.
 *
 * After each kill: DIR is exactly the old generation (absent, for a seed) or exactly the new one — except the
 * documented instant between the two renames of the swap, when DIR is absent and the state holds a commit intent that
 * the next run rolls forward; the state folder is consistent (the record matches its manifest and DIR, nothing
 * unknown in it). Then the next pull completes exactly, and fetches no chunk the killed one had journaled as verified.
 *
 * Replay a failure with SNAPFERRY_FAULT_SEED=<seed printed in the message>; SNAPFERRY_FAULT_TRIALS sets the count.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, Served, CLI, journalRecords } from '../helpers.js';
import { makeCompany, mutateCompany } from '../../src/gen/company.js';
import { decodeManifest } from '../../src/manifest/manifest.js';
import { layoutOf } from '../../src/manifest/layout.js';
import { prng, sleep, errorCodeOf } from './netfault.js';

const SEED = Number(process.env.SNAPFERRY_FAULT_SEED ?? 0x5eed_2026);
const TRIALS = Math.max(20, Number(process.env.SNAPFERRY_FAULT_TRIALS ?? 22));
const COMMIT_POINTS = ['plan', 'commit', 'before-intent', 'intent', 'exchanged', 'swapped', 'spare-kept', 'committed'];
const STATE_NAMES = /^(lock|lock\.stale\.\d+|applied\.json|applied\.manifest|applied\.stats|next|next\.json|next\.verified|next\.unsynced|next\.links|next\.manifest|spare|spare\.manifest|spare\.stats|spare\.drop|commit\.json|old|pending\.json|pending\.manifest|[a-z.]+\.tmp)$/;

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** What the state folder said right after the kill (checked once the new root hash is known). */
interface StateSnapshot {
  names: string[];
  appliedRoot?: string;
  appliedManifestHash?: string;
  commitRoot?: string;
  nextRoot?: string;
  journal: Set<number>;
}

function snapshot(state: string): StateSnapshot {
  const names = fs.existsSync(state) ? fs.readdirSync(state).sort() : [];
  const read = (n: string) => (names.includes(n) ? fs.readFileSync(path.join(state, n)) : undefined);
  const applied = read('applied.json');
  const manifest = read('applied.manifest');
  const commit = read('commit.json');
  const next = read('next.json');
  // What the killed pull recorded as verified: next.verified (flushed) and next.unsynced (written as soon as the data
  // is, after its 28-byte header naming the page cache's life, which a kill -9 leaves as it was).
  const journal = new Set([...journalRecords(path.join(state, 'next.verified')), ...journalRecords(path.join(state, 'next.unsynced'), 28)]);
  return {
    names,
    appliedRoot: applied ? JSON.parse(applied.toString()).rootHash : undefined,
    appliedManifestHash: manifest ? sha256(manifest) : undefined,
    commitRoot: commit ? JSON.parse(commit.toString()).rootHash : undefined,
    nextRoot: next ? JSON.parse(next.toString()).rootHash : undefined,
    journal,
  };
}

describe('kill -9 of the puller or the site at seeded random moments', () => {
  let tmp: ReturnType<typeof tempDir>;
  let key: string;
  let src: string;
  let site: Served;
  const rnd = prng(SEED);

  async function restartSite(): Promise<void> {
    site = await startServe(['--secret', key, '--company', `acme=${src}`]);
  }

  beforeAll(async () => {
    tmp = tempDir('sf-kill9-');
    key = secretFile(tmp.dir);
    src = path.join(tmp.dir, 'head', 'acme');
    await makeCompany(src, 12, 51);
    await restartSite();
  });

  afterAll(async () => {
    await site?.stop();
    tmp?.cleanup();
  });

  it(`${TRIALS} trials keep DIR whole and resume without re-fetching (seed ${SEED})`, { timeout: 150_000 }, async () => {
    const t0 = Date.now();
    // The branch the deltas go to, seeded once.
    const deltaDest = path.join(tmp.dir, 'delta', 'acme');
    fs.mkdirSync(path.dirname(deltaDest));
    const first = await runCli(['pull', site.url, 'acme', deltaDest, '--secret', key, '--json']);
    expect(first.code, first.stderr).toBe(0);
    let deltaRoot: string = JSON.parse(first.stdout).rootHash;
    let deltaFp = treeFingerprint(deltaDest);
    const tally = { pullerKills: 0, serverKills: 0, serverKillsThatBrokeAPull: 0, commitPointKills: 0, midTransfer: 0, dirAbsentAtSwap: 0, resumedWithJournal: 0, oldLeftBehind: 0 };

    for (let trial = 0; trial < TRIALS; trial++) {
      const kind = trial % 2 === 0 ? 'seed' : 'delta';
      const victim = rnd() < 0.5 ? 'puller' : 'server';
      const point = victim === 'puller' && rnd() < 0.4 ? COMMIT_POINTS[Math.floor(rnd() * COMMIT_POINTS.length)]! : undefined;
      // Transfers are paced to ~1.5 s (12 MiB seed ~4 MB on the wire at 2.5M/s; a delta ~0.4 MB at 256K/s), plus start-up.
      const delayMs = Math.floor(100 + rnd() * 1700);
      // Every other delta without fsync: its base copies are made as new files (a resumed one replaces a partial copy).
      const durability = kind === 'delta' && trial % 4 === 3 ? ['--no-fsync'] : [];
      const what = `trial ${trial} (SNAPFERRY_FAULT_SEED=${SEED}): ${kind}, kill -9 of the ${victim} ${point ? `at "${point}"` : `after ${delayMs} ms`}`;

      let dest: string;
      let oldFp: Map<string, string> | undefined;
      let oldRoot: string | undefined;
      if (kind === 'seed') {
        dest = path.join(tmp.dir, `seed${trial}`, 'acme');
        fs.mkdirSync(path.dirname(dest));
      } else {
        dest = deltaDest;
        oldFp = deltaFp;
        oldRoot = deltaRoot;
        await mutateCompany(src, 100 + trial);
      }
      const newFp = treeFingerprint(src);
      const state = path.join(path.dirname(dest), '.acme.snapferry');

      const child = spawn(
        process.execPath,
        [CLI, 'pull', site.url, 'acme', dest, '--secret', key, '--retries', '0', '--bwlimit', kind === 'seed' ? '2560K' : '256K', ...durability],
        { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, SNAPFERRY_FAULT_KILL_AT: point ?? '' } },
      );
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('close', (code, signal) => r({ code, signal })));
      const guard = setTimeout(() => child.kill('SIGKILL'), 30_000);
      if (!point) {
        await Promise.race([sleep(delayMs), exited]);
        if (victim === 'puller') child.kill('SIGKILL');
        else site.child.kill('SIGKILL');
      }
      const end = await exited;
      clearTimeout(guard);
      if (victim === 'server') {
        tally.serverKills++;
        await site.stop();
        // The puller was not killed: it either finished or failed with one clean line (no retries were allowed).
        expect(end.signal, what).toBeNull();
        if (end.code !== 0) tally.serverKillsThatBrokeAPull++;
        if (end.code !== 0) expect(['SNAPFERRY_E_CONNECTION_LOST', 'SNAPFERRY_E_UNREACHABLE'], `${what}: ${stderr}`).toContain(errorCodeOf(stderr));
        await restartSite();
      } else {
        tally.pullerKills++;
        if (point) {
          // A point the run never reaches (a seed has no old tree to move aside at "swap") lets it finish.
          if (end.signal === 'SIGKILL') tally.commitPointKills++;
          else expect(end.code, `${what}: ${stderr}`).toBe(0);
        }
      }
      if (!point && end.signal === 'SIGKILL') tally.midTransfer++;

      // DIR: exactly old or exactly new; absent only for a seed not yet committed or at the documented swap instant.
      const snap = snapshot(state);
      let dirIs: 'absent' | 'old' | 'new';
      if (!fs.existsSync(dest)) {
        dirIs = 'absent';
        if (kind === 'delta') {
          tally.dirAbsentAtSwap++;
          expect(snap.commitRoot, `${what}: DIR vanished without a commit intent to roll forward`).toBeDefined();
          expect(snap.names, what).toContain('next');
        }
      } else {
        const now = treeFingerprint(dest);
        const isNew = fingerprintDiff(newFp, now).length === 0;
        const isOld = oldFp !== undefined && fingerprintDiff(oldFp, now).length === 0;
        expect(isOld || isNew, `${what}: DIR is neither the old nor the new generation: ${fingerprintDiff(oldFp ?? newFp, now).slice(0, 5).join('; ')}`).toBe(true);
        dirIs = isNew && !isOld ? 'new' : 'old';
      }
      for (const n of snap.names) expect(n, `${what}: unknown file in the state folder`).toMatch(STATE_NAMES);
      if (snap.appliedRoot !== undefined && snap.commitRoot === undefined) {
        expect(snap.appliedManifestHash, `${what}: applied.json and applied.manifest disagree`).toBe(snap.appliedRoot);
      }

      // The next pull completes exactly.
      const r = await runCli(['pull', site.url, 'acme', dest, '--secret', key, '--json', ...durability], { timeoutMs: 60_000 });
      expect(r.code, `${what}: the next pull failed: ${r.stderr}`).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(fingerprintDiff(newFp, treeFingerprint(dest)), what).toEqual([]);
      // After the next pull the state holds exactly the record of the new generation (recovery rewrites the stats
      // and reclaims a previous generation whose removal was cut short), beside the spare generation a delta keeps.
      const left = fs.readdirSync(state).sort();
      if (left.includes('old')) tally.oldLeftBehind++;
      const spare = ['spare', 'spare.manifest', 'spare.stats'];
      expect(left.filter((n) => !spare.includes(n)), what).toEqual(['applied.json', 'applied.manifest', 'applied.stats']);
      const newRoot: string = j.rootHash;
      expect(sha256(fs.readFileSync(path.join(state, 'applied.manifest'))), what).toBe(newRoot);

      // The state after the kill agreed with DIR.
      if (snap.commitRoot !== undefined) {
        expect(snap.commitRoot, `${what}: a commit intent for another generation`).toBe(newRoot);
      } else if (dirIs === 'new') {
        expect(snap.appliedRoot, `${what}: DIR is new but the record is not`).toBe(newRoot);
      } else {
        expect(snap.appliedRoot, `${what}: DIR is old but the record is not`).toBe(kind === 'seed' ? undefined : oldRoot);
      }

      // No verified chunk fetched again: the resumed pull fetched at most the distinct chunks not journaled.
      if (snap.nextRoot === newRoot && snap.journal.size > 0 && !j.unchanged) {
        tally.resumedWithJournal++;
        const L = layoutOf(decodeManifest(fs.readFileSync(path.join(state, 'applied.manifest'))));
        const notJournaled = new Set<bigint>();
        for (let g = 0; g < L.total; g++) if (!snap.journal.has(g)) notJournaled.add(L.id[g]!);
        expect(j.chunksFetched, `${what}: re-fetched verified chunks (${snap.journal.size} journaled)`).toBeLessThanOrEqual(notJournaled.size);
        expect(j.chunksReused, what).toBeGreaterThanOrEqual([...snap.journal].filter((g) => g < L.total).length);
      }

      if (kind === 'seed') {
        fs.rmSync(path.dirname(dest), { recursive: true, force: true });
      } else {
        deltaFp = newFp;
        deltaRoot = newRoot;
      }
    }
    const seconds = (Date.now() - t0) / 1000;
    console.log(`kill9-random seed ${SEED}: ${TRIALS} trials in ${seconds.toFixed(1)} s`, tally);
    // The trials covered both victims, the transfer and the commit.
    expect(tally.pullerKills).toBeGreaterThan(0);
    expect(tally.serverKillsThatBrokeAPull).toBeGreaterThan(0);
    expect(tally.commitPointKills).toBeGreaterThan(0);
    expect(tally.midTransfer).toBeGreaterThan(0);
  });

  // BUG (src/store/state.ts recover()/rollForward() and src/sync/pull.ts run()): applied.stats (inode:ctime of every
  // file, what makes "DIR is intact" trustworthy) is written by pull() only after a commit it finished itself. A
  // commit rolled forward by recovery after kill -9 (at "intent", "swap" or "swapped") leaves it missing (seed) or
  // stale (delta, ignored for its old root hash), and the next pulls of the same generation return "unchanged"
  // without writing it. From then on a local change that keeps size and mtime is never detected nor repaired.
  // Fix: writeStats() after a roll-forward (in recover(), or in pull() when recover() returned true or the stats do
  // not match the applied root hash and DIR is otherwise intact).
  it('after a commit recovered from kill -9, a local change that keeps size and mtime is still repaired', async () => {
    const dest = path.join(tmp.dir, 'recovered', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const killed = await runCli(['pull', site.url, 'acme', dest, '--secret', key], { env: { SNAPFERRY_FAULT_KILL_AT: 'intent' } });
    expect(killed.signal).toBe('SIGKILL');
    const recovered = await runCli(['pull', site.url, 'acme', dest, '--secret', key, '--json']);
    expect(recovered.code, recovered.stderr).toBe(0);
    expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    // Local tampering that keeps size and mtime.
    const victim = path.join(dest, 'Journal.log');
    const st = fs.statSync(victim, { bigint: true });
    const fd = fs.openSync(victim, 'r+');
    fs.writeSync(fd, Buffer.from('TAMPERED'), 0, 8, 100);
    fs.closeSync(fd);
    // Restore the mtime to the nanosecond (utimes through a float would drift).
    const ns = st.mtimeNs;
    const r = spawnSync('touch', ['-m', '-d', `@${ns / 1_000_000_000n}.${String(ns % 1_000_000_000n).padStart(9, '0')}`, victim]);
    expect(r.status).toBe(0);
    expect(fs.statSync(victim, { bigint: true }).mtimeNs).toBe(ns);
    const again = await runCli(['pull', site.url, 'acme', dest, '--secret', key, '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(fs.readFileSync(victim).equals(fs.readFileSync(path.join(src, 'Journal.log'))), 'the tampered file was not repaired').toBe(true);
  });

  // BUG (src/store/state.ts rollForward()/recover()): the last step of a commit removes the previous generation
  // (old/) after commit.json is gone. A kill -9 during that removal leaves old/ half-removed, and recover() only acts
  // when commit.json exists, so the space stays taken until the next commit happens to clear it (seen in the random
  // trials as a state folder holding "old"). This reproduces that state exactly: the record of the new generation
  // in place, no commit intent, old/ partly removed.
  // Fix: in recover(), remove old/ whenever there is no commit.json (it is garbage then), e.g. at the start of pull().
  it('a kill -9 while the commit removes the previous generation: the next pull reclaims old/', async () => {
    const dest = path.join(tmp.dir, 'cleanup', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const r0 = await runCli(['pull', site.url, 'acme', dest, '--secret', key]);
    expect(r0.code, r0.stderr).toBe(0);
    const state = path.join(path.dirname(dest), '.acme.snapferry');
    const old = path.join(state, 'old');
    fs.cpSync(dest, old, { recursive: true });
    for (const name of fs.readdirSync(old).filter((_, i) => i % 2 === 0)) fs.rmSync(path.join(old, name), { recursive: true, force: true });
    const r = await runCli(['pull', site.url, 'acme', dest, '--secret', key, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    expect(fs.readdirSync(state).sort()).toEqual(['applied.json', 'applied.manifest', 'applied.stats']);
  });
});
