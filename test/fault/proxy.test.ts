/**
 * A hostile or broken network between `pull` and `serve` (both real CLI child processes), produced by a TCP proxy on
 * 127.0.0.1 that cuts, stalls, flips, drops, duplicates, reorders and truncates bytes at exact protocol positions.
 *
 * What must hold: the pull either completes with an exact copy or fails with one line `snapferry: ... [SNAPFERRY_E_...]`
 * and a non-zero exit; corrupt data is never applied (no DIR after a failed seed, the old generation after a failed
 * delta); a dropped link resumes by itself within the bounded retries.
 *
 * Frame numbers (server -> client): 0 WELCOME, 1 READY, 2 MANIFEST, 3 the one MANIFEST_PART of these small
 * companies, 4+ answers (DATA / PATCH). Client -> server: 0 HELLO, 1 PROOF, 2 OPEN, 3+ requests.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, Served, CliResult } from '../helpers.js';
import { makeCompany, mutateCompany } from '../../src/gen/company.js';
import { FaultProxy, Plan, Hook, Unit, Action, ProxyConn, afterBytes, afterBytesOrMs, errorCodeOf, errorLines, sleep } from './netfault.js';

/** The first unit matching `match` gets `act`; everything else passes unchanged. */
function once(match: (u: Unit) => boolean, act: (u: Unit) => Action): Hook {
  let done = false;
  return (u) => {
    if (done || !match(u)) return undefined;
    done = true;
    return act(u);
  };
}

/** A server -> client answer frame (DATA or PATCH) with at least minPayload bytes of payload. */
const answer =
  (minPayload: number, skip = 0) =>
  (u: Unit): boolean =>
    u.kind === 'frame' && u.index >= 4 + skip && u.bytes.length - u.payloadOffset >= minPayload;

function flipPayloadByte(u: Unit): Action {
  const b = Buffer.from(u.bytes);
  const at = u.payloadOffset + Math.floor((b.length - u.payloadOffset) / 2);
  b[at]! ^= 0x01;
  return { out: [b] };
}

/** Only the first connection gets the hooks; later ones pass through. */
const firstOnly =
  (hooks: { s2c?: Hook; c2s?: Hook }): Plan =>
  (i) =>
    i === 0 ? hooks : {};

const ALLOWED_FAILURES = ['SNAPFERRY_E_PROTOCOL', 'SNAPFERRY_E_CONNECTION_LOST', 'SNAPFERRY_E_TIMEOUT', 'SNAPFERRY_E_BAD_CHUNK', 'SNAPFERRY_E_BAD_MANIFEST'];

describe('a faulty or hostile link between pull and serve', () => {
  let tmp: ReturnType<typeof tempDir>;
  let key: string;
  let seedSrc: string;
  let deltaSrc: string;
  let seedSite: Served;
  let deltaSite: Served;
  let seedFp: Map<string, string>;
  let oldFp: Map<string, string>;
  let newFp: Map<string, string>;
  const proxies: FaultProxy[] = [];
  const deltaDests: string[] = [];
  let n = 0;

  const sitePort = (s: Served) => Number(new URL(s.url).port);

  async function proxy(site: Served, plan: Plan): Promise<FaultProxy> {
    const p = await new FaultProxy(sitePort(site), plan).start();
    proxies.push(p);
    return p;
  }

  function freshDest(): string {
    const d = path.join(tmp.dir, `b${n++}`, 'acme');
    fs.mkdirSync(path.dirname(d));
    return d;
  }

  function pullVia(p: FaultProxy, dest: string, extra: string[] = [], timeoutMs = 40_000): Promise<CliResult> {
    return runCli(['pull', p.url, 'acme', dest, '--secret', key, '--json', ...extra], { timeoutMs });
  }

  function expectExact(r: CliResult, dest: string, want: Map<string, string>): void {
    expect(r.signal, 'pull hung and was killed').toBeNull();
    expect(r.code, r.stderr).toBe(0);
    expect(fingerprintDiff(want, treeFingerprint(dest))).toEqual([]);
  }

  /** One-line typed error, non-zero exit, not killed; returns the code. */
  function expectCleanFailure(r: CliResult): string {
    expect(r.signal, 'pull hung and was killed').toBeNull();
    expect(r.code, r.stdout).not.toBe(0);
    const lines = errorLines(r.stderr);
    expect(lines, r.stderr).toHaveLength(1);
    const code = errorCodeOf(r.stderr);
    expect(code).toMatch(/^SNAPFERRY_E_/);
    return code;
  }

  function expectSeedNotApplied(dest: string): void {
    expect(fs.existsSync(dest), 'a failed seed left DIR behind').toBe(false);
    expect(fs.existsSync(path.join(path.dirname(dest), '.acme.snapferry', 'applied.json'))).toBe(false);
  }

  function expectOldGeneration(dest: string): void {
    expect(fingerprintDiff(oldFp, treeFingerprint(dest)), 'a failed delta changed DIR').toEqual([]);
  }

  beforeAll(async () => {
    tmp = tempDir('sf-proxy-');
    key = secretFile(tmp.dir);
    seedSrc = path.join(tmp.dir, 'head', 'acme');
    deltaSrc = path.join(tmp.dir, 'head2', 'acme');
    await makeCompany(seedSrc, 8, 21);
    await makeCompany(deltaSrc, 4, 22);
    seedFp = treeFingerprint(seedSrc);
    seedSite = await startServe(['--secret', key, '--company', `acme=${seedSrc}`]);
    deltaSite = await startServe(['--secret', key, '--company', `acme=${deltaSrc}`]);
    // Branches holding the old generation, then a working day at the head: every delta test starts from here.
    for (let i = 0; i < 3; i++) {
      const d = freshDest();
      const r = await runCli(['pull', deltaSite.url, 'acme', d, '--secret', key]);
      expect(r.code, r.stderr).toBe(0);
      deltaDests.push(d);
    }
    oldFp = treeFingerprint(deltaDests[0]!);
    await mutateCompany(deltaSrc, 5);
    newFp = treeFingerprint(deltaSrc);
    expect(fingerprintDiff(oldFp, newFp).length).toBeGreaterThan(0);
  });

  afterAll(async () => {
    for (const p of proxies) await p.close();
    await seedSite?.stop();
    await deltaSite?.stop();
    tmp?.cleanup();
  });

  it('passes an untouched link through (the proxy itself is transparent)', async () => {
    const p = await proxy(seedSite, () => ({}));
    const dest = freshDest();
    expectExact(await pullVia(p, dest), dest, seedFp);
  });

  describe('cuts and stalls: the pull resumes by itself', () => {
    it('a connection cut mid-frame after 1 MiB is retried and the copy is exact', async () => {
      const p = await proxy(seedSite, firstOnly({ s2c: afterBytes('s2c', 1 << 20, 'cut') }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expectExact(r, dest, seedFp);
      expect(p.connections).toBeGreaterThanOrEqual(2);
      expect(r.stderr).toMatch(/retrying in [\d.]+ s/);
    });

    // BUG (src/sync/pull.ts pull, found by a helper review): after a dropped link, --json counted as fetched only
    // the last attempt's chunks, and the earlier attempts' ones as reused (a seed "reusing" data it had just fetched),
    // while bytesOnWire counted every attempt's bytes.
    it('a seed cut and retried counts every chunk this command fetched as fetched', async () => {
      const clean = await runCli(['pull', seedSite.url, 'acme', freshDest(), '--secret', key, '--json']);
      expect(clean.code, clean.stderr).toBe(0);
      const p = await proxy(seedSite, firstOnly({ s2c: afterBytes('s2c', 1 << 20, 'cut') }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expectExact(r, dest, seedFp);
      const a = JSON.parse(clean.stdout);
      const b = JSON.parse(r.stdout);
      expect(b.chunksFetched).toBeGreaterThanOrEqual(a.chunksFetched);
      expect(b.chunksReused).toBeLessThanOrEqual(a.chunksReused);
      expect(b.bytesWritten).toBeGreaterThanOrEqual(a.bytesWritten);
    });

    it('a stream truncated (FIN mid-frame) is retried and the copy is exact', async () => {
      const p = await proxy(seedSite, firstOnly({ s2c: afterBytes('s2c', 600_000, 'end') }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expectExact(r, dest, seedFp);
      expect(p.connections).toBeGreaterThanOrEqual(2);
    });

    it('a link cut on every connection before any chunk arrives fails after the bounded retries with one clear line, and no DIR', async () => {
      const p = await proxy(seedSite, () => ({ s2c: afterBytes('s2c', 4 << 10, 'cut') }));
      const dest = freshDest();
      const t0 = Date.now();
      const r = await pullVia(p, dest, ['--retries', '2']);
      const code = expectCleanFailure(r);
      expect(code).toBe('SNAPFERRY_E_CONNECTION_LOST');
      expect(p.connections).toBe(3);
      // Backoff 0.5 s + 1 s, plus three short attempts.
      expect(Date.now() - t0).toBeLessThan(20_000);
      expectSeedNotApplied(dest);
    });

    // BUG (src/sync/pull.ts pull): the retry count only grew, so a link that dropped every few hundred KiB ran out of
    // retries while each attempt was still verifying new chunks (the same command run again finished from the journal).
    it('a link cut every 256 KiB with --retries 2: each attempt that brings chunks starts the count again; exact', async () => {
      const p = await proxy(seedSite, () => ({ s2c: afterBytes('s2c', 256 << 10, 'cut') }));
      const dest = freshDest();
      const r = await pullVia(p, dest, ['--retries', '2'], 120_000);
      expectExact(r, dest, seedFp);
      expect(p.connections).toBeGreaterThan(3);
    }, 130_000);

    // BUG (src/sync/pull.ts): --bwlimit at the pull paced only what it did with answers once they had come: 32
    // requests (16 MiB of chunks) were asked for at once, and the answers crossed the link at its full speed (all
    // 2.6 MB in the first second of a 100 KiB/s pull). Counted here at a proxy that reads the site as fast as it sends.
    it('pull --bwlimit 256K holds the site to about the rate on the link, not only in the pull', async () => {
      const seen: ProxyConn[] = [];
      const p = await proxy(deltaSite, () => ({ s2c: (_u, c) => void (seen.includes(c) || seen.push(c)) }));
      const dest = freshDest();
      const pulling = pullVia(p, dest, ['--bwlimit', '256K']);
      // Bounded: the first bytes come within seconds.
      for (let i = 0; i < 200 && seen.length === 0; i++) await sleep(25);
      const tFirst = performance.now() - 25;
      await sleep(1500);
      const early = seen.reduce((n, c) => n + c.forwarded.s2c, 0);
      // The time that really passed (a loaded runner's timers fire late): at the rate, it lets through that much.
      const seconds = (performance.now() - tFirst) / 1000;
      const r = await pulling;
      expectExact(r, dest, newFp);
      const total = JSON.parse(r.stdout).bytesOnWire as number;
      expect(total).toBeGreaterThan(1 << 20);
      // ~1.5 s at the rate, a window of requests (at most a second of it), the handshake and manifest, and slack.
      expect(early, `${early} of ${total} bytes crossed in the first ${seconds.toFixed(2)} s`).toBeLessThan(seconds * (256 << 10) + (256 << 10) + (256 << 10));
    });

    it('a stall of 2.5 s mid-transfer is waited out and the copy is exact', async () => {
      const p = await proxy(
        seedSite,
        firstOnly({ s2c: once(answer(16 << 10), (u) => ({ out: [u.bytes], delayMs: 2500 })) }),
      );
      const dest = freshDest();
      const t0 = Date.now();
      const r = await pullVia(p, dest);
      expectExact(r, dest, seedFp);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(2500);
    });

    it('a stall of 2.5 s inside the handshake is waited out and the copy is exact', async () => {
      const p = await proxy(seedSite, firstOnly({ s2c: once((u) => u.kind === 'frame' && u.index === 0, (u) => ({ out: [u.bytes], delayMs: 2500 })) }));
      const dest = freshDest();
      expectExact(await pullVia(p, dest), dest, seedFp);
    });

    it('a byte flipped on the way to the site (in a request) ends that session; the pull reconnects and is exact', async () => {
      const p = await proxy(
        seedSite,
        firstOnly({ c2s: once((u) => u.kind === 'frame' && u.index === 4, (u) => flipPayloadByte(u)) }),
      );
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expectExact(r, dest, seedFp);
      expect(p.connections).toBeGreaterThanOrEqual(2);
    });

    // BUG (src/sync/pull.ts, pull(): `run.neverConnected` is per attempt): after a drop, a reconnect attempt that
    // cannot connect at once ends the pull instead of backing off and trying again, so a link that flaps is not
    // resumed although retries are left.
    it('a link that flaps (cut, then one refused reconnect) still resumes within the retries', async () => {
      const p = await proxy(seedSite, (i) => (i === 0 ? { s2c: afterBytes('s2c', 1 << 20, 'cut') } : i === 1 ? 'refuse' : {}));
      const dest = freshDest();
      const r = await pullVia(p, dest, ['--retries', '4']);
      expectExact(r, dest, seedFp);
    });

    // BUG (src/sync/session.ts, connect(): a CONNECTION_LOST while waiting for READY is turned into AUTH): a link cut
    // right after the client's PROOF is reported as "authentication failed" [SNAPFERRY_E_AUTH] and never retried.
    it('a cut right after the client proof is retried, not reported as a wrong secret', async () => {
      const p = await proxy(seedSite, firstOnly({ c2s: once((u) => u.kind === 'frame' && u.index === 1, (u) => ({ out: [u.bytes], after: 'cut' })) }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expect(r.stderr).not.toMatch(/SNAPFERRY_E_AUTH/);
      expectExact(r, dest, seedFp);
    });

    // BUG (src/sync/pull.ts, PullRun.flushJournal/execute): verified chunks are journaled at most once a second and
    // the unflushed part of the journal is dropped when an attempt fails, so a link that drops more often than once a
    // second never makes progress: every attempt starts from zero until the retries run out.
    it('a link that drops every ~1 MiB (or 0.8 s) still converges: each attempt keeps what it verified', async () => {
      const p = await proxy(seedSite, () => ({ s2c: afterBytesOrMs('s2c', 1 << 20, 800) }));
      const dest = freshDest();
      // Retries to spare for a loaded runner, where an attempt's 0.8 s may bring little past the handshake (the bug made
      // none of them count: every attempt started from zero).
      const r = await pullVia(p, dest, ['--retries', '6'], 60_000);
      expectExact(r, dest, seedFp);
    });
  });

  describe('corruption: never applied, one clear error', () => {
    let rsvCode = '';

    it('a byte flipped inside a DATA frame after the handshake fails authentication (PROTOCOL); no DIR', async () => {
      const p = await proxy(seedSite, () => ({ s2c: once(answer(16 << 10), flipPayloadByte) }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expect(expectCleanFailure(r)).toBe('SNAPFERRY_E_PROTOCOL');
      expect(r.code).toBe(76);
      expect(r.stderr).toMatch(/failed authentication/);
      expectSeedNotApplied(dest);
    });

    it('a byte flipped in a WebSocket frame header (RSV bits) breaks framing: clean failure; no DIR', async () => {
      const p = await proxy(seedSite, () => ({
        s2c: once(answer(16 << 10), (u) => {
          const b = Buffer.from(u.bytes);
          b[0]! ^= 0x40;
          return { out: [b] };
        }),
      }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      rsvCode = expectCleanFailure(r);
      expectSeedNotApplied(dest);
    });

    // BUG (src/util/errors.ts toSnapferryError, via src/transport/channel.ts 'error' handler): ws framing errors
    // (codes WS_ERR_*) fall through to SNAPFERRY_E_INTERNAL ("Invalid WebSocket frame: ...", exit 70): a broken link
    // is reported as a snapferry bug instead of a PROTOCOL / CONNECTION_LOST failure.
    it('a broken WebSocket frame is reported as a protocol or connection error, not INTERNAL', () => {
      expect(['SNAPFERRY_E_PROTOCOL', 'SNAPFERRY_E_CONNECTION_LOST']).toContain(rsvCode);
    });

    it('a DATA frame dropped whole: the next frame fails authentication (PROTOCOL); no DIR', async () => {
      const p = await proxy(seedSite, () => ({ s2c: once(answer(16 << 10), () => ({ out: [] })) }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expect(expectCleanFailure(r)).toBe('SNAPFERRY_E_PROTOCOL');
      expectSeedNotApplied(dest);
    });

    it('a DATA frame duplicated (replayed): refused (PROTOCOL); no DIR', async () => {
      const p = await proxy(seedSite, () => ({ s2c: once(answer(16 << 10), (u) => ({ out: [u.bytes, u.bytes] })) }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expect(expectCleanFailure(r)).toBe('SNAPFERRY_E_PROTOCOL');
      expectSeedNotApplied(dest);
    });

    it('two DATA frames swapped (reordered): refused (PROTOCOL); no DIR', async () => {
      let held: Buffer | undefined;
      let done = false;
      const hook: Hook = (u) => {
        if (done || !answer(1024)(u)) return undefined;
        if (!held) {
          held = u.bytes;
          return { out: [] };
        }
        done = true;
        return { out: [u.bytes, held] };
      };
      const p = await proxy(seedSite, () => ({ s2c: hook }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expect(expectCleanFailure(r)).toBe('SNAPFERRY_E_PROTOCOL');
      expectSeedNotApplied(dest);
    });

    it('1000 bytes dropped from inside a frame (misframes the stream): clean failure; no DIR', async () => {
      const p = await proxy(seedSite, () => ({
        s2c: once(answer(16 << 10), (u) => {
          const at = u.payloadOffset + 4000;
          return { out: [u.bytes.subarray(0, at), u.bytes.subarray(at + 1000)] };
        }),
      }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expect([...ALLOWED_FAILURES, 'SNAPFERRY_E_INTERNAL']).toContain(expectCleanFailure(r));
      expectSeedNotApplied(dest);
    });

    it('1000 bytes duplicated inside a frame (misframes the stream): clean failure; no DIR', async () => {
      const p = await proxy(seedSite, () => ({
        s2c: once(answer(16 << 10), (u) => {
          const at = u.payloadOffset + 4000;
          return { out: [u.bytes.subarray(0, at + 1000), u.bytes.subarray(at)] };
        }),
      }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expect([...ALLOWED_FAILURES, 'SNAPFERRY_E_INTERNAL']).toContain(expectCleanFailure(r));
      expectSeedNotApplied(dest);
    });

    it('a byte flipped inside the MANIFEST_PART: refused (PROTOCOL); no DIR', async () => {
      const p = await proxy(seedSite, () => ({ s2c: once((u) => u.kind === 'frame' && u.index === 3, flipPayloadByte) }));
      const dest = freshDest();
      const r = await pullVia(p, dest);
      expect(expectCleanFailure(r)).toBe('SNAPFERRY_E_PROTOCOL');
      expectSeedNotApplied(dest);
    });
  });

  describe('a delta over a faulty link', () => {
    it('a byte flipped in an answer of a delta: refused (PROTOCOL); DIR keeps the old generation', async () => {
      const dest = deltaDests[0]!;
      const before = fs.readFileSync(path.join(path.dirname(dest), '.acme.snapferry', 'applied.json'), 'utf8');
      const p = await proxy(deltaSite, () => ({ s2c: once(answer(64), flipPayloadByte) }));
      const r = await pullVia(p, dest);
      expect(expectCleanFailure(r)).toBe('SNAPFERRY_E_PROTOCOL');
      expectOldGeneration(dest);
      expect(fs.readFileSync(path.join(path.dirname(dest), '.acme.snapferry', 'applied.json'), 'utf8')).toBe(before);
    });

    it('a delta cut on every connection fails after its retries; DIR keeps the old generation', async () => {
      const dest = deltaDests[1]!;
      const p = await proxy(deltaSite, () => ({ s2c: afterBytes('s2c', 20_000, 'cut') }));
      const r = await pullVia(p, dest, ['--retries', '1']);
      expect(ALLOWED_FAILURES).toContain(expectCleanFailure(r));
      expectOldGeneration(dest);
    });

    it('a delta whose first connection is cut mid-transfer resumes and lands exactly the new generation', async () => {
      const dest = deltaDests[2]!;
      const p = await proxy(deltaSite, firstOnly({ s2c: once(answer(64), (u) => ({ out: [u.bytes.subarray(0, u.payloadOffset + 10)], after: 'cut' })) }));
      const r = await pullVia(p, dest);
      expectExact(r, dest, newFp);
      expect(p.connections).toBeGreaterThanOrEqual(2);
      // The two faulty deltas above still complete over a clean link afterwards.
      for (const d of deltaDests.slice(0, 2)) {
        const again = await runCli(['pull', deltaSite.url, 'acme', d, '--secret', key, '--json']);
        expectExact(again, d, newFp);
      }
    });
  });
});
