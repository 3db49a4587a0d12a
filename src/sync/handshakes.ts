/**
 * The site's connections that have not authenticated yet, by the address they come from. When their budget is full,
 * a newcomer makes room by closing the oldest connection of the address that holds the most: a party flooding the site
 * with new connections from one address closes only its own, never a branch's handshake in progress from another.
 * IPv6 addresses count by their /64 (a host normally has a whole /64 to flood from).
 */
import type net from 'node:net';

/** The key a remote address is counted under: IPv4 as it is, IPv6 by its first 64 bits. */
export function addressKey(address: string | undefined): string {
  if (!address) return '';
  const a = address.split('%')[0]!.toLowerCase(); // without a zone index
  if (!a.includes(':') || /^::ffff:\d+\.\d+\.\d+\.\d+$/.test(a)) return a;
  const [head, tail] = a.split('::') as [string, string | undefined];
  const front = head ? head.split(':') : [];
  const back = tail ? tail.split(':') : [];
  const groups = tail === undefined ? front : [...front, ...new Array<string>(Math.max(0, 8 - front.length - back.length)).fill('0'), ...back];
  return `${groups
    .slice(0, 4)
    .map((g) => Number.parseInt(g || '0', 16).toString(16))
    .join(':')}::/64`;
}

/** Connections in their handshake, by address (see the module comment). */
export class PendingHandshakes {
  /** Per remote address, its connections in arrival order (Sets keep insertion order). */
  private readonly byAddress = new Map<string, Set<net.Socket>>();
  /** Each held connection's key, as it was when it came (a closed socket may no longer tell its address). */
  private readonly keys = new WeakMap<net.Socket, string>();
  private count = 0;

  /** Connections held. */
  get size(): number {
    return this.count;
  }

  /** Adds a connection; it leaves on delete() or when it closes. */
  add(socket: net.Socket): void {
    const key = addressKey(socket.remoteAddress);
    this.keys.set(socket, key);
    let set = this.byAddress.get(key);
    if (!set) this.byAddress.set(key, (set = new Set()));
    set.add(socket);
    this.count++;
    socket.once('close', () => this.delete(socket));
  }

  /** Removes a connection (it authenticated, or closed); false when it was not held. */
  delete(socket: net.Socket): boolean {
    const key = this.keys.get(socket);
    const set = key === undefined ? undefined : this.byAddress.get(key);
    if (!set?.delete(socket)) return false;
    this.count--;
    if (set.size === 0) this.byAddress.delete(key!);
    return true;
  }

  /** Ends every connection held (the site is stopping). */
  destroyAll(): void {
    for (const set of [...this.byAddress.values()]) for (const socket of [...set]) socket.destroy();
  }

  /** Removes and returns the oldest connection of the address that holds the most (undefined when none is held). */
  takeForEviction(): net.Socket | undefined {
    let most: Set<net.Socket> | undefined;
    for (const set of this.byAddress.values()) if (!most || set.size > most.size) most = set;
    const oldest = most?.values().next().value;
    if (oldest) this.delete(oldest);
    return oldest;
  }
}
