/**
 * The site's budget of connections in their handshake, over real sockets on loopback addresses: which connection makes
 * room for a newcomer, and how addresses are counted.
 */
import { describe, it, expect, afterEach } from 'vitest';
import net from 'node:net';
import { PendingHandshakes, addressKey } from '../../src/sync/handshakes.js';

const servers: net.Server[] = [];
const sockets: net.Socket[] = [];
afterEach(() => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of servers.splice(0)) s.close();
});

/** One connection from each address of `from` to a listener on 127.0.0.1; resolves with the listener's ends, in order. */
async function accepted(from: string[]): Promise<net.Socket[]> {
  const got: net.Socket[] = [];
  const server = net.createServer((s) => void got.push(s));
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  for (const localAddress of from) {
    const c = net.connect({ port, host: '127.0.0.1', localAddress });
    sockets.push(c);
    await new Promise<void>((r) => c.once('connect', () => r()));
    // In arrival order: wait for the listener's end of this one before the next.
    for (let i = 0; i < 200 && got.length < sockets.length; i++) await new Promise((r) => setTimeout(r, 5));
  }
  sockets.push(...got);
  return got;
}

describe('PendingHandshakes', () => {
  it("makes room by closing the oldest of the address holding the most, not a lone branch's", async () => {
    const [branch, f1, f2, f3, other] = await accepted(['127.0.0.1', '127.0.0.2', '127.0.0.2', '127.0.0.2', '127.0.0.3']);
    const p = new PendingHandshakes();
    for (const s of [branch!, f1!, f2!, f3!, other!]) p.add(s);
    expect(p.size).toBe(5);
    expect(p.takeForEviction()).toBe(f1); // the branch is the oldest of all, but its address holds one
    expect(p.takeForEviction()).toBe(f2);
    expect(p.size).toBe(3);
    // One each now: the tie goes to the address seen first.
    expect(p.takeForEviction()).toBe(branch);
    expect(p.delete(f3!)).toBe(true);
    expect(p.delete(f3!)).toBe(false); // authenticated, then closed: counted once
    expect(p.size).toBe(1);
  });

  it('lets a connection go when it closes', async () => {
    const [a] = await accepted(['127.0.0.1']);
    const p = new PendingHandshakes();
    p.add(a!);
    a!.destroy();
    await new Promise((r) => a!.once('close', r));
    expect(p.size).toBe(0);
    expect(p.takeForEviction()).toBeUndefined();
  });
});

describe('addressKey', () => {
  it('counts IPv4 addresses one by one and IPv6 ones by their /64', () => {
    expect(addressKey('192.0.2.7')).toBe('192.0.2.7');
    expect(addressKey('::ffff:192.0.2.7')).toBe('::ffff:192.0.2.7');
    expect(addressKey('2001:db8:1:2:aaaa:bbbb:cccc:dddd')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:DB8:1:2::99')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(addressKey('::1')).toBe('0:0:0:0::/64');
    expect(addressKey(undefined)).toBe('');
  });
});
