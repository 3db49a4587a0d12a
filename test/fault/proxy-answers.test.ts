/**
 * What a puller makes of a site URL whose answer is not a snapferry site's upgrade: a proxy in front of a site that is
 * down (nginx answers 502 or 504, some 503), a web server (404), a service that does not speak HTTP at all. Produced
 * with real servers on 127.0.0.1 in this process and the CLI as a child process.
 */
import { describe, it, expect, afterEach } from 'vitest';
import fs from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import path from 'node:path';
import { tempDir, secretFile, runCli } from '../helpers.js';

describe('answers that are not an upgrade', () => {
  const closers: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of closers.splice(0)) await c();
  });

  async function listen(server: net.Server): Promise<string> {
    const sockets = new Set<net.Socket>();
    server.on('connection', (c: net.Socket) => {
      sockets.add(c);
      c.on('close', () => sockets.delete(c));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    closers.push(
      () =>
        new Promise((r) => {
          for (const c of sockets) c.destroy();
          server.close(() => r());
        }),
    );
    return `ws://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  }

  /** An HTTP server answering every request with `status`; counts them. */
  async function answering(status: number): Promise<{ url: string; requests: () => number }> {
    let n = 0;
    const server = http.createServer((_req, res) => {
      n++;
      res.writeHead(status, { 'content-type': 'text/html', connection: 'close' }).end(`<h1>${status}</h1>\n`);
    });
    return { url: await listen(server), requests: () => n };
  }

  async function pullFrom(url: string, retries = '1') {
    const tmp = tempDir('sf-proxyans-');
    closers.push(async () => tmp.cleanup());
    const dest = path.join(tmp.dir, 'branch', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const r = await runCli(['pull', url, 'acme', dest, '--secret', secretFile(tmp.dir), '--retries', retries], { timeoutMs: 60_000 });
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(fs.readdirSync(path.dirname(dest))).toEqual([]);
    return r;
  }

  // BUG (src/sync/session.ts, found by a helper review): only 503 was taken for "try again"; a proxy's 502 or 504
  // while its site restarted ended a pull at once, and a follower for good, as "not a snapferry site" (exit 76).
  // (A follower that has reached its site tries again through them: follow.test.ts.)
  it.each([502, 503, 504])("a proxy's HTTP %i is a site out of reach, exit 69 as for a site that refuses connections", async (status) => {
    const proxy = await answering(status);
    const r = await pullFrom(proxy.url);
    expect(r.stderr).toMatch(new RegExp(`^snapferry: cannot reach ws://127\\.0\\.0\\.1:\\d+: it answered HTTP ${status} \\(a proxy whose site is down or overloaded\\) \\[SNAPFERRY_E_UNREACHABLE\\]`));
    expect(r.code).toBe(69);
    expect(proxy.requests()).toBe(1); // a site never reached is said at once, as a wrong address is
  }, 60_000);

  it('a web server that is no snapferry site (HTTP 404) is refused at once, exit 76', async () => {
    const web = await answering(404);
    const r = await pullFrom(web.url);
    expect(r.stderr).toMatch(/^snapferry: ws:\/\/127\.0\.0\.1:\d+ is not a snapferry site \(HTTP 404\) \[SNAPFERRY_E_PROTOCOL\]/);
    expect(r.code).toBe(76);
    expect(web.requests()).toBe(1);
  });

  // BUG (src/sync/session.ts): a service answering in something other than HTTP (a TLS port named ws://, a mail
  // server) was "cannot reach …: Parse Error: Expected HTTP/, RTSP/ or ICE/" (exit 69), though it was reached.
  it('a service that does not answer in HTTP is said to be no snapferry site, exit 76', async () => {
    const url = await listen(net.createServer((c) => c.end('220 mail.example ESMTP ready\r\n')));
    const r = await pullFrom(url);
    expect(r.stderr).toMatch(/^snapferry: ws:\/\/127\.0\.0\.1:\d+ is not a snapferry site \(its answer is not HTTP; a site behind a TLS proxy is wss:\/\/\) \[SNAPFERRY_E_PROTOCOL\]/);
    expect(r.code).toBe(76);
  });
  // BUG (src/sync/session.ts, noted at the last stop): a TLS port (a TLS-terminating proxy) named ws:// closes the
  // plain upgrade with a reset and no answer; the pull said only "connection lost (ECONNRESET)", six times over 30 s.
  // Produced with a server that resets each connection once the upgrade request arrives, as a TLS server does.
  it('a port that resets the upgrade (a TLS one named ws://): the line says a TLS site is wss://', async () => {
    const url = await listen(net.createServer((c) => c.once('data', () => c.resetAndDestroy())));
    const r = await pullFrom(url, '0');
    expect(r.stderr).toMatch(/^snapferry: cannot reach ws:\/\/127\.0\.0\.1:\d+: connection lost \(ECONNRESET\) during the upgrade \(a site behind a TLS proxy is wss:\/\/\) \[SNAPFERRY_E_/);
    expect(r.code).not.toBe(0);
  });
});
