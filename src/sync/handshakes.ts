/**
 * The site's connections that have not authenticated yet, by the address they come from. When their budget is full,
 * a newcomer makes room by closing the oldest connection of the address that holds the most: a party flooding the site
 * with new connections from one address closes only its own, never a branch's handshake in progress from another.
 */
import type net from 'node:net';

export class PendingHandshakes {
  /** Per remote address, its connections in arrival order (Sets keep insertion order). */
  private readonly byAddress = new Map<string, Set<net.Socket>>();
  private count = 0;

  /** Connections held. */
  get size(): number {
    return this.count;
  }

  /** Adds a connection; it leaves on delete() or when it closes. */
  add(socket: net.Socket): void {
    const key = socket.remoteAddress ?? '';
    let set = this.byAddress.get(key);
    if (!set) this.byAddress.set(key, (set = new Set()));
    set.add(socket);
    this.count++;
    socket.once('close', () => this.delete(socket));
  }

  /** Removes a connection (it authenticated, or closed); false when it was not held. */
  delete(socket: net.Socket): boolean {
    const key = socket.remoteAddress ?? '';
    const set = this.byAddress.get(key);
    if (!set?.delete(socket)) return false;
    this.count--;
    if (set.size === 0) this.byAddress.delete(key);
    return true;
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
