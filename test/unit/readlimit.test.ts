/**
 * The receiving end's rate cap (`pull --bwlimit`: Channel's readLimit) over a real WebSocket on 127.0.0.1: a sender
 * that sends 16 MiB as fast as it may is held to the cap on the link itself (TCP's flow control), not only in what the
 * receiver does with the bytes once they have come.
 */
import { describe, it, expect, afterEach } from 'vitest';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from '../../src/transport/ws.js';
import { Channel } from '../../src/transport/channel.js';
import { TokenBucket } from '../../src/util/rate.js';

const MESSAGE = 256 << 10;
const COUNT = 64; // 16 MiB
const RATE = 1 << 20;

/**
 * Starts a server that sends COUNT messages at once to its first client; resolves with how many bytes had been
 * handed to the kernel (send callbacks) and how many the client had taken, `afterMs` after the first was sent.
 */
async function run(readLimit: TokenBucket | undefined, afterMs: number): Promise<{ sent: number; read: number; close: () => void }> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => server.once('listening', () => r()));
  let sent = 0;
  let started = 0;
  server.on('connection', (peer) => {
    started = performance.now();
    const data = Buffer.alloc(MESSAGE, 7);
    for (let i = 0; i < COUNT; i++) peer.send(data, { binary: true }, () => (sent += MESSAGE));
  });
  const ws = new WebSocket(`ws://127.0.0.1:${(server.address() as AddressInfo).port}`, { perMessageDeflate: false });
  await new Promise<void>((r, j) => {
    ws.once('open', () => r());
    ws.once('error', j);
  });
  const channel = new Channel(ws, { readLimit });
  let read = 0;
  channel.onMessage = (m) => (read += m.length);
  // Bounded: the sender starts within a second of the connection.
  for (let i = 0; i < 100 && started === 0; i++) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, Math.max(0, started + afterMs - performance.now())));
  const result = { sent, read };
  return {
    ...result,
    close: () => {
      ws.terminate();
      for (const c of server.clients) c.terminate();
      server.close();
    },
  };
}

describe("the receiving end's rate cap (readLimit)", () => {
  let close: (() => void) | undefined;
  afterEach(() => close?.());

  it('without a cap, 16 MiB cross 127.0.0.1 within 2 s (what the capped case is measured against)', async () => {
    const r = await run(undefined, 2000);
    close = r.close;
    expect(r.read).toBe(COUNT * MESSAGE);
  });

  // BUG (src/sync/pull.ts): --bwlimit at the pull took its tokens after each answer had arrived, so a window of
  // answers (up to 16 MiB) came at the link's full speed and only the processing was slowed ("5.0 MiB on the wire"
  // 0.66 s into a 1 MiB/s pull).
  it('with a 1 MiB/s cap, 2 s in the sender has got no more onto the link than the rate, its burst and the sockets hold', async () => {
    const r = await run(new TokenBucket(RATE), 2000);
    close = r.close;
    // Read: 2 s at the rate, its quarter-second burst, and the message that put the bucket in debt.
    expect(r.read).toBeLessThanOrEqual(2 * RATE + RATE / 4 + MESSAGE);
    expect(r.read).toBeGreaterThanOrEqual(RATE);
    // Sent: what was read plus what the two sockets' kernel buffers hold (a few MiB on loopback), far from 16 MiB.
    expect(r.sent).toBeLessThan(10 << 20);
  });
});
