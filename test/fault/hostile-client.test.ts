/**
 * Hostile clients against a real `snapferry serve` (CLI child process on 127.0.0.1): garbage instead of a handshake,
 * another protocol version, a wrong secret, a replayed proof, idle WebSockets, idle TCP connections and slow-loris
 * HTTP, oversized pre-authentication frames, and an authenticated peer that asks for too much.
 *
 * What must hold: each is refused before anything about the site's companies is revealed (the bytes the bad client
 * received never contain the company's name or file names); handshakes time out; a real pull completes exactly while
 * the bad clients are connected; the site keeps serving afterwards.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, Served } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';
import { ClientHandshake } from '../../src/protocol/handshake.js';
import { connect } from '../../src/sync/session.js';
import { readSecret } from '../../src/cli/secret.js';
import { MsgType, encodeGet, decodeJson } from '../../src/protocol/messages.js';
import { RawWs, encodeClientFrame, sleep, errorCodeOf } from './netfault.js';

const NAME = 'zebracorp-ledgers';
/** Strings that must never reach an unauthenticated peer. */
const SECRETS_OF_THE_SITE = [NAME, 'Tranmgr', 'Company.900', 'masters'];

function revealed(bytes: Buffer): string[] {
  const text = bytes.toString('latin1');
  return SECRETS_OF_THE_SITE.filter((s) => text.includes(s));
}

function header(version: number, type: number): Buffer {
  const b = Buffer.alloc(12);
  b.write('SNAPFERRY', 0, 'latin1');
  b.writeUInt16BE(version, 9);
  b[11] = type;
  return b;
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

/**
 * After a bad proof the site answers with at most one unsealed refusal (0xEE + JSON naming SNAPFERRY_E_AUTH, so the
 * client can tell a wrong secret from a broken link) and nothing else.
 */
function expectOnlyAuthRefusal(messages: Buffer[]): void {
  expect(messages.length).toBeLessThanOrEqual(1);
  for (const m of messages) {
    expect(m[0]).toBe(0xee);
    const body = JSON.parse(m.subarray(1).toString('utf8')) as { code: string; message: string };
    expect(body.code).toBe('SNAPFERRY_E_AUTH');
    expect(Object.keys(body).sort()).toEqual(['code', 'message']);
  }
}

describe('hostile clients against a real site', () => {
  let tmp: ReturnType<typeof tempDir>;
  let keyFile: string;
  let secret: Buffer;
  let company: string;
  let served: Served;
  let port: number;
  let want: Map<string, string>;
  let n = 0;
  const raws: RawWs[] = [];
  const sockets: net.Socket[] = [];

  async function rawWs(): Promise<RawWs> {
    const ws = await RawWs.open(port);
    raws.push(ws);
    return ws;
  }

  /** Waits until the site has started closing (close frame) or closed the connection, bounded. */
  async function refused(ws: RawWs, withinMs = 3000): Promise<void> {
    const t0 = Date.now();
    while (ws.closeFrameAt === undefined && ws.closedAt === undefined && Date.now() - t0 < withinMs) await sleep(20);
    expect(ws.closeFrameAt ?? ws.closedAt, 'the site did not close the connection').toBeDefined();
  }

  async function realPull(): Promise<void> {
    const dest = path.join(tmp.dir, `b${n++}`, NAME);
    fs.mkdirSync(path.dirname(dest));
    const r = await runCli(['pull', served.url, NAME, dest, '--secret', keyFile, '--json'], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(fingerprintDiff(want, treeFingerprint(dest))).toEqual([]);
  }

  beforeAll(async () => {
    tmp = tempDir('sf-hostile-cli-');
    keyFile = secretFile(tmp.dir);
    secret = readSecret(keyFile);
    company = path.join(tmp.dir, 'head', NAME);
    await makeCompany(company, 4, 31);
    want = treeFingerprint(company);
    served = await startServe(['--secret', keyFile, '--company', `${NAME}=${company}`]);
    port = Number(new URL(served.url).port);
  });

  afterAll(async () => {
    for (const r of raws) r.destroy();
    for (const s of sockets) s.destroy();
    await served?.stop();
    tmp?.cleanup();
  });

  describe('refused before anything is revealed', () => {
    it('garbage instead of a handshake: a pre-auth PROTOCOL error, then close', async () => {
      const ws = await rawWs();
      ws.send(randomBytes(200));
      const reply = await ws.next(3000);
      expect(reply?.[0]).toBe(0xee);
      expect(JSON.parse(reply!.subarray(1).toString()).code).toBe('SNAPFERRY_E_PROTOCOL');
      await refused(ws);
      expect(revealed(ws.allReceived)).toEqual([]);
    });

    it('a text message instead of a handshake: closed', async () => {
      const ws = await rawWs();
      ws.send(Buffer.from(`OPEN ${NAME}`), 0x1);
      await refused(ws);
      expect(revealed(ws.allReceived)).toEqual([]);
    });

    it('plain garbage instead of HTTP: 400 and closed', async () => {
      const s = net.connect(port, '127.0.0.1');
      sockets.push(s);
      const got: Buffer[] = [];
      s.on('data', (d) => got.push(d));
      s.on('error', () => undefined);
      s.write(randomBytes(300));
      await new Promise<void>((r) => {
        s.once('close', () => r());
        setTimeout(r, 5000);
      });
      expect(s.destroyed).toBe(true);
      expect(revealed(Buffer.concat(got))).toEqual([]);
    });

    it('a peer that speaks protocol version 99: a pre-auth VERSION error naming both versions, then close', async () => {
      const ws = await rawWs();
      const id = Buffer.from('branch-from-the-future');
      ws.send(Buffer.concat([header(99, 1), randomBytes(32), Buffer.from([id.length]), id]));
      const reply = await ws.next(3000);
      expect(reply?.[0]).toBe(0xee);
      const body = JSON.parse(reply!.subarray(1).toString());
      expect(body.code).toBe('SNAPFERRY_E_VERSION');
      expect(body.message).toMatch(/version 99.*speaks 1/);
      await refused(ws);
      expect(revealed(ws.allReceived)).toEqual([]);
    });

    it('an oversized handshake message: refused', async () => {
      const ws = await rawWs();
      ws.send(Buffer.concat([header(1, 1), randomBytes(4000)]));
      const reply = await ws.next(3000);
      expect(reply?.[0]).toBe(0xee);
      expect(JSON.parse(reply!.subarray(1).toString()).message).toMatch(/too large/);
      await refused(ws);
      expect(revealed(ws.allReceived)).toEqual([]);
    });

    it('a wrong secret: the client sees the site cannot prove our secret; a forged proof is refused and closed', async () => {
      const ws = await rawWs();
      const hs = new ClientHandshake(randomBytes(32), 'mallory');
      ws.send(hs.helloMessage());
      const welcome = await ws.next(3000);
      expect(welcome).toBeDefined();
      expect(() => hs.onWelcome(welcome!)).toThrow(/authentication failed/);
      ws.send(Buffer.concat([header(1, 3), randomBytes(32)]));
      await refused(ws);
      expectOnlyAuthRefusal(ws.messages);
      expect(revealed(ws.allReceived)).toEqual([]);
      // The welcome is exactly magic, version, type, nonce and proof: nothing else about the site.
      expect(welcome!.length).toBe(12 + 32 + 32);
    });

    it('a recorded proof replayed in a new session is refused (the proofs cover both nonces)', async () => {
      const first = await rawWs();
      const hs = new ClientHandshake(secret, 'branch-1');
      const hello = hs.helloMessage();
      first.send(hello);
      const { proof } = hs.onWelcome((await first.next(3000))!);
      first.send(proof);
      const ready = await first.next(3000);
      expect(ready && ready[0] !== 0xee, 'the genuine handshake failed').toBe(true);
      first.destroy();
      const replay = await rawWs();
      replay.send(hello);
      expect(await replay.next(3000)).toBeDefined();
      replay.send(proof);
      await refused(replay);
      expectOnlyAuthRefusal(replay.messages);
      expect(revealed(replay.allReceived)).toEqual([]);
    });

    it('the CLI with a wrong secret: one line, SNAPFERRY_E_AUTH, exit 77, nothing written', async () => {
      const dest = path.join(tmp.dir, `b${n++}`, NAME);
      fs.mkdirSync(path.dirname(dest));
      const r = await runCli(['pull', served.url, NAME, dest, '--secret', secretFile(tmp.dir, 'wrong.key')]);
      expect(r.code).toBe(77);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(errorCodeOf(r.stderr)).toBe('SNAPFERRY_E_AUTH');
      expect(fs.existsSync(dest)).toBe(false);
    });

    it('the site logged the refusals and still serves', async () => {
      expect(served.stderr()).toMatch(/refused 127\.0\.0\.1: authentication failed/);
      await realPull();
    });
  });

  // BUG (src/sync/session.ts connect(): `if (ready[0] === PREAUTH_ERROR) throw peerPreauthError(ready)`): the READY
  // after the proofs is a sealed frame whose first byte is ciphertext, so about 1 handshake in 256 starts with 0xEE
  // and is taken for an unsealed pre-auth error: the pull fails with "peer refused the handshake"
  // [SNAPFERRY_E_PROTOCOL], not retried. (Every test that connects therefore flakes at ~0.4% per connection.)
  // Fix: open the frame first; treat it as a pre-auth error only if it does not authenticate and parses as one (or
  // tell them apart by length: a sealed READY is exactly 17 bytes).
  it('every genuine handshake succeeds (2000 in a row with the right secret)', async () => {
    const failures: string[] = [];
    for (let i = 0; i < 2000 && failures.length === 0; i++) {
      try {
        const s = await connect(served.url, { secret, peerId: 'honest' });
        s.close();
      } catch (err) {
        failures.push(`connection ${i}: ${(err as Error).message} [${(err as { code?: string }).code}]`);
      }
    }
    expect(failures).toEqual([]);
  });

  describe('an authenticated peer that asks for too much', () => {
    it('a request before OPEN ends its session', async () => {
      const s = await connect(served.url, { secret, peerId: 'greedy' });
      await s.send(encodeGet({ reqId: 1, ranges: [[0, 1]] }));
      await expect(s.recv(5000)).rejects.toMatchObject({ code: expect.stringMatching(/CONNECTION_LOST|PROTOCOL/) });
    });

    it('a GET for chunks beyond the manifest, or for too many bytes, gets a typed error', async () => {
      for (const [ranges, code] of [
        [[[0, 4_000_000]], /PROTOCOL/],
        // Overlapping ranges: ~5000 chunk reads (~80 MB) in one request.
        [Array.from({ length: 100 }, () => [0, 50]), /LIMIT/],
      ] as Array<[Array<[number, number]>, RegExp]>) {
        const s = await connect(served.url, { secret, peerId: 'greedy' });
        await s.sendJson(MsgType.OPEN, { company: NAME });
        const head = await s.recv(10_000);
        expect(head[0]).toBe(MsgType.MANIFEST);
        const parts = decodeJson<{ parts: number }>(head).parts;
        for (let i = 0; i < parts; i++) await s.recv(10_000);
        await s.send(encodeGet({ reqId: 7, ranges }));
        const err = await s.recv(10_000).then(
          () => undefined,
          (e: { code: string }) => e,
        );
        expect(err?.code).toMatch(code);
        s.close();
      }
    });
  });

  describe('idle and slow connections', () => {
    const seen = { wsCloseFrameMs: -1, wsClosedMs: -1, tcpOpenAfter: 0, lorisOpenAfter: 0, tcpTotal: 50, lorisTotal: 20 };

    it('50 idle TCP connections, 20 slow-loris requests and an idle WebSocket do not stop a real pull; the handshake times out', async () => {
      const t0 = Date.now();
      const tcp: Array<{ s: net.Socket; closedAt?: number }> = [];
      for (let i = 0; i < seen.tcpTotal; i++) {
        const s = net.connect(port, '127.0.0.1');
        sockets.push(s);
        const rec: { s: net.Socket; closedAt?: number } = { s };
        s.on('close', () => (rec.closedAt = Date.now()));
        s.on('error', () => undefined);
        tcp.push(rec);
      }
      const loris: Array<{ s: net.Socket; closedAt?: number }> = [];
      for (let i = 0; i < seen.lorisTotal; i++) {
        const s = net.connect(port, '127.0.0.1');
        sockets.push(s);
        const rec: { s: net.Socket; closedAt?: number } = { s };
        s.on('error', () => undefined);
        s.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n');
        const drip = setInterval(() => s.writable && s.write(`X-Slow-${i}: a\r\n`), 1000);
        s.on('close', () => {
          rec.closedAt = Date.now();
          clearInterval(drip);
        });
        loris.push(rec);
      }
      const idle = await rawWs();
      // While they hang on, a real branch pulls.
      await realPull();
      // The handshake timeout is 10 s; wait until 16 s after the idle WebSocket opened.
      while (Date.now() - idle.openedAt < 16_000 && (idle.closeFrameAt === undefined || idle.closedAt === undefined)) await sleep(100);
      seen.wsCloseFrameMs = idle.closeFrameAt !== undefined ? idle.closeFrameAt - idle.openedAt : -1;
      seen.wsClosedMs = idle.closedAt !== undefined ? idle.closedAt - idle.openedAt : -1;
      seen.tcpOpenAfter = tcp.filter((r) => r.closedAt === undefined).length;
      seen.lorisOpenAfter = loris.filter((r) => r.closedAt === undefined).length;
      expect(Date.now() - t0).toBeLessThan(30_000);
      // The site ended the idle handshake (closed the connection; a close frame is optional) between 10 and 15 s,
      // having revealed nothing.
      const endedMs = seen.wsCloseFrameMs >= 0 ? seen.wsCloseFrameMs : seen.wsClosedMs;
      expect(endedMs).toBeGreaterThanOrEqual(9_500);
      expect(endedMs).toBeLessThanOrEqual(15_000);
      expect(revealed(idle.allReceived)).toEqual([]);
      for (const r of [...tcp, ...loris]) r.s.destroy();
      // And it still serves.
      await realPull();
    });

    // BUG (src/sync/server.ts onConnection: `.finally(() => channel.close())`): a peer that fails or never starts the
    // handshake is closed gracefully — the site sends a close frame and then waits ws's 30 s close timeout for the
    // peer's answer, which a hostile peer never sends. The TCP connection (and anything buffered for it) stays ~40 s.
    // Fix: channel.abort() (ws.terminate()) for sessions that never authenticated.
    it('the idle WebSocket is disconnected (TCP closed) within 16 s, not only sent a close frame', () => {
      expect(seen.wsClosedMs).toBeGreaterThan(0);
      expect(seen.wsClosedMs).toBeLessThanOrEqual(16_000);
    });

    // BUG (src/sync/server.ts start(): only headersTimeout/requestTimeout are set): a TCP connection that never sends
    // a byte is never closed (no socket timeout), slow-loris requests only at Node's 30 s connection-check interval,
    // and plain connections are not counted against --max-connections, so idle sockets can pile up to the fd limit.
    // Fix: socket.setTimeout(10_000) until the upgrade, createServer({ connectionsCheckingInterval: 1000 }) and a cap
    // on server.maxConnections.
    it('idle TCP connections and slow-loris requests are closed by the site within 16 s', () => {
      expect(seen.tcpOpenAfter).toBe(0);
      expect(seen.lorisOpenAfter).toBe(0);
    });

    // BUG (src/sync/server.ts: WebSocketServer maxPayload is MAX_FRAME + 1024 for every frame, also before
    // authentication; the 1 KiB handshake limit is checked only after a whole message was buffered): an
    // unauthenticated peer can make the site hold ~8 MiB per connection for the handshake period (256 connections:
    // ~2 GiB). Fix: refuse more than a few KiB from a peer until it has authenticated (count socket bytes, or a small
    // maxPayload raised after accept()).
    it('unauthenticated peers cannot make the site hold megabytes each (12 partial 8 MiB frames)', async () => {
      const pid = served.child.pid!;
      const before = rssMiB(pid);
      const conns: RawWs[] = [];
      for (let i = 0; i < 12; i++) {
        const ws = await rawWs();
        const frame = encodeClientFrame(Buffer.alloc(8 << 20, 0x41));
        ws.sock.write(frame.subarray(0, frame.length - 1));
        conns.push(ws);
      }
      await sleep(1500);
      const growth = rssMiB(pid) - before;
      const refused = conns.filter((c) => c.closedAt !== undefined).length;
      for (const c of conns) c.destroy();
      // The site refuses an oversized frame from its header (64 KiB cap before any payload is buffered) and drops the
      // connection. RSS moves by tens of MiB on its own (GC of the pulls before), so the bound is set between that
      // noise and the ~96 MiB that 12 buffered 8 MiB frames cost before the fix.
      expect(refused, 'the site should close every connection that announced an oversized frame').toBe(conns.length);
      expect(growth, `the site grew by ${growth.toFixed(0)} MiB`).toBeLessThan(64);
    });

    it('the site still serves after all of it', async () => {
      expect(served.child.exitCode).toBeNull();
      await realPull();
    });
  });

  // BUG (src/sync/session.ts connect(): every non-101 answer becomes "is not a snapferry site (HTTP n)"
  // [SNAPFERRY_E_PROTOCOL], not retryable): a site at its --max-connections answers 503, and the branch is told the
  // site is not a snapferry site at all. A busy site should read as busy and be retried with backoff.
  it('a site at its connection cap is reported as busy, not as "not a snapferry site"', async () => {
    const small = await startServe(['--secret', keyFile, '--company', `${NAME}=${company}`, '--max-connections', '2']);
    const held: RawWs[] = [];
    try {
      const p = Number(new URL(small.url).port);
      for (let i = 0; i < 2; i++) held.push(await RawWs.open(p));
      const dest = path.join(tmp.dir, `b${n++}`, NAME);
      fs.mkdirSync(path.dirname(dest));
      const r = await runCli(['pull', small.url, NAME, dest, '--secret', keyFile, '--retries', '0']);
      expect(r.code).not.toBe(0);
      expect(r.stderr).not.toMatch(/not a snapferry site/);
      expect(r.stderr).toMatch(/busy|too many/i);
    } finally {
      for (const h of held) h.destroy();
      await small.stop();
    }
  });
});
