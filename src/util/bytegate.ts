/**
 * Bounds bytes and requests in flight: take() waits until both fit (a request larger than the limit alone goes when
 * nothing else is in flight), give() returns them.
 */
export class ByteGate {
  private used = 0;
  private count = 0;
  private waiters: Array<() => void> = [];
  /** At most `limit` bytes and `maxCount` requests in flight. */
  constructor(
    private readonly limit: number,
    private readonly maxCount: number,
  ) {}
  /** Waits until `n` more bytes and one more request fit. */
  async take(n: number): Promise<void> {
    while (this.count >= this.maxCount || (this.used > 0 && this.used + n > this.limit)) await new Promise<void>((r) => this.waiters.push(r));
    this.used += n;
    this.count++;
  }
  /** Returns what take(n) took. */
  give(n: number): void {
    this.used -= n;
    this.count--;
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
