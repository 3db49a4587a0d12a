/**
 * The unsealed pre-authentication refusal (0xEE · JSON {code, message}) is the one thing a branch takes from a peer
 * that has proved nothing. The site sends it only for a version, framing or proof problem; whoever answers at the
 * site's address without the secret (a wrong host, an on-path party replacing the sealed READY) could otherwise have
 * the branch report any error of its choosing: "disk full" (exit 74), a foreign folder, an unsafe tree.
 *
 * What must hold: such a refusal naming any other code is reported as a protocol error (one line,
 * SNAPFERRY_E_PROTOCOL, exit 76), not as the code it names; the reason of a WebSocket close frame (unsealed too)
 * reaches the terminal without its control characters; nothing is written.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { tempDir, secretFile, runCli } from '../helpers.js';
import { readSecret } from '../../src/cli/secret.js';
import { ServerHandshake } from '../../src/protocol/handshake.js';
import { errorCodeOf } from './netfault.js';

/** A forged pre-auth refusal naming `code`. */
function forged(code: string): Buffer {
  return Buffer.concat([Buffer.from([0xee]), Buffer.from(JSON.stringify({ code, message: 'disk full at the branch: free some space' }))]);
}

/**
 * A peer at the site's address that answers the HELLO with a forged refusal (`at: 'welcome'`, no secret needed), or
 * runs the handshake with the secret and sends the forged refusal in place of the sealed READY (`at: 'ready'`: what an
 * on-path party that relays a real site's WELCOME can do).
 */
async function forger(at: 'welcome' | 'ready', code: string, secret: Buffer): Promise<{ url: string; close: () => Promise<void> }> {
  const server = http.createServer();
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  wss.on('connection', (ws) => {
    const hs = new ServerHandshake(() => secret);
    let step = 0;
    ws.on('message', (m: Buffer) => {
      if (at === 'welcome') return ws.send(forged(code));
      if (step++ === 0) ws.send(hs.onHello(m));
      else ws.send(forged(code));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `ws://127.0.0.1:${(server.address() as { port: number }).port}`,
    close: async () => {
      for (const c of wss.clients) c.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('what a peer that proved nothing says reaches the branch only as it may', () => {
  let tmp: ReturnType<typeof tempDir>;
  let keyFile: string;
  let n = 0;

  beforeAll(() => {
    tmp = tempDir('sf-preauth-');
    keyFile = secretFile(tmp.dir);
  });
  afterAll(() => tmp?.cleanup());

  for (const at of ['welcome', 'ready'] as const) {
    for (const code of ['SNAPFERRY_E_DISK_FULL', 'SNAPFERRY_E_UNSAFE_TREE']) {
      it(`in place of the ${at === 'welcome' ? 'WELCOME' : 'sealed READY'}, naming ${code}: a protocol error, not ${code}`, async () => {
        const site = await forger(at, code, readSecret(keyFile));
        try {
          const dest = path.join(tmp.dir, `b${n++}`, 'acme');
          fs.mkdirSync(path.dirname(dest));
          const r = await runCli(['pull', site.url, 'acme', dest, '--secret', keyFile, '--retries', '0'], { timeoutMs: 30_000 });
          expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
          expect(errorCodeOf(r.stderr)).toBe('SNAPFERRY_E_PROTOCOL');
          expect(r.code).toBe(76);
          expect(fs.existsSync(dest)).toBe(false);
        } finally {
          await site.close();
        }
      });
    }
  }

  it('a close frame whose reason holds terminal escapes (sent without the secret): printed without control characters', async () => {
    const server = http.createServer();
    const wss = new WebSocketServer({ server, perMessageDeflate: false });
    // Erase the line, go back to its start, print a line of our own, conceal the rest (the error code).
    wss.on('connection', (ws) => ws.once('message', () => ws.close(4000, 'x\x1b[2K\rsnapferry: pulled 0 files\x1b[8m')));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const dest = path.join(tmp.dir, `b${n++}`, 'acme');
      fs.mkdirSync(path.dirname(dest));
      const url = `ws://127.0.0.1:${(server.address() as { port: number }).port}`;
      const r = await runCli(['pull', url, 'acme', dest, '--secret', keyFile, '--retries', '0'], { timeoutMs: 30_000 });
      expect(errorCodeOf(r.stderr)).toBe('SNAPFERRY_E_CONNECTION_LOST');
      // eslint-disable-next-line no-control-regex
      expect(r.stderr.trimEnd(), JSON.stringify(r.stderr)).not.toMatch(/[\x00-\x1f\x7f-\x9f]/);
      expect(fs.existsSync(dest)).toBe(false);
    } finally {
      for (const c of wss.clients) c.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('the codes the site does send before authentication (here AUTH) are still taken as they are', async () => {
    const site = await forger('ready', 'SNAPFERRY_E_AUTH', readSecret(keyFile));
    try {
      const dest = path.join(tmp.dir, `b${n++}`, 'acme');
      fs.mkdirSync(path.dirname(dest));
      const r = await runCli(['pull', site.url, 'acme', dest, '--secret', keyFile, '--retries', '0'], { timeoutMs: 30_000 });
      expect(errorCodeOf(r.stderr)).toBe('SNAPFERRY_E_AUTH');
      expect(r.code).toBe(77);
    } finally {
      await site.close();
    }
  });
});
