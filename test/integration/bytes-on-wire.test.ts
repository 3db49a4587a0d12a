/**
 * `pull --json`'s bytesOnWire is every byte the puller received on its socket, handshake and framing included: counted
 * here by a TCP relay between the puller and the site, which sees every byte the site sent down. Before, the count was
 * taken before the WebSocket closing handshake, so the site's close frame (4 bytes) was left out of every pull.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { tempDir, secretFile, runCli, startServe, waitFor, Served } from '../helpers.js';
import { makeCompany, mutateCompany } from '../../src/gen/company.js';

describe('bytesOnWire against a byte count on the link', () => {
  let tmp: ReturnType<typeof tempDir>;
  let company: string;
  let key: string;
  let served: Served;
  let relay: net.Server;
  let relayPort: number;
  let down = 0;
  let open = 0;
  const sockets = new Set<net.Socket>();

  beforeAll(async () => {
    tmp = tempDir('sf-wire-');
    company = path.join(tmp.dir, 'head', 'acme');
    await makeCompany(company, 2, 5);
    key = secretFile(tmp.dir);
    served = await startServe(['--secret', key, '--company', `acme=${company}`]);
    const sitePort = Number(new URL(served.url).port);
    relay = net.createServer((c) => {
      open++;
      const s = net.connect(sitePort, '127.0.0.1');
      sockets.add(c).add(s);
      c.on('data', (d) => s.write(d));
      s.on('data', (d) => {
        down += d.length;
        c.write(d);
      });
      let closed = 0;
      const done = () => {
        if (++closed === 2) open--;
      };
      c.on('close', () => (s.end(), done()));
      s.on('close', () => (c.end(), done()));
      c.on('error', () => s.destroy());
      s.on('error', () => c.destroy());
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', () => r()));
    relayPort = (relay.address() as net.AddressInfo).port;
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => (relay ? relay.close(() => r()) : r()));
    await served?.stop();
    tmp?.cleanup();
  });

  /** Pulls through the relay; returns the JSON and what the relay carried down meanwhile (once every link closed). */
  async function pullCounted(dest: string): Promise<{ j: { bytesOnWire: number; unchanged: boolean; chunksFetched: number }; counted: number }> {
    down = 0;
    const r = await runCli(['pull', `ws://127.0.0.1:${relayPort}`, 'acme', dest, '--secret', key, '--json', '--retries', '0']);
    expect(r.code, r.stderr).toBe(0);
    await waitFor(() => open === 0, 10_000);
    return { j: JSON.parse(r.stdout), counted: down };
  }

  it('a seed, a delta and an unchanged re-pull each report exactly what came down the link', async () => {
    const dest = path.join(tmp.dir, 'branch', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const seed = await pullCounted(dest);
    expect(seed.j.chunksFetched).toBeGreaterThan(0);
    expect(seed.j.bytesOnWire).toBe(seed.counted);

    await mutateCompany(company, 6);
    // Bounded: the site announces the new generation once the change settled.
    await waitFor(() => (served.stderr().match(/indexed acme/g) ?? []).length >= 2, 20_000);
    const delta = await pullCounted(dest);
    expect(delta.j.unchanged).toBe(false);
    expect(delta.j.bytesOnWire).toBe(delta.counted);

    const again = await pullCounted(dest);
    expect(again.j.unchanged).toBe(true);
    expect(again.j.bytesOnWire).toBe(again.counted);
  });
});
