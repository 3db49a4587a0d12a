/** Bandwidth limits (--bwlimit) and human-readable sizes. */
import { fail, ErrorCodes } from './errors.js';

const UNITS: Record<string, number> = { '': 1, B: 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 };

/** Parses "8M", "512K", "1.5G", "100000" (bytes per second). Throws USAGE on anything else. */
export function parseRate(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?(?:\/s)?\s*$/i.exec(text);
  if (!m) return fail(ErrorCodes.USAGE, `not a rate: ${JSON.stringify(text)} (use e.g. 8M for 8 MiB/s)`);
  const v = Math.floor(Number(m[1]) * UNITS[m[2]!.toUpperCase()]!);
  if (v < 1024) fail(ErrorCodes.USAGE, `rate ${text} is below 1K per second`);
  return v;
}

/** Human-readable bytes. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/**
 * A token bucket: `take(n)` resolves when n bytes may pass. Burst is a quarter second of rate, so short bursts do not
 * exceed the cap by much on any link.
 */
export class TokenBucket {
  private tokens: number;
  private last = performance.now();
  private readonly burst: number;
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly rate: number) {
    this.burst = Math.max(64 << 10, rate / 4);
    this.tokens = this.burst;
  }

  /**
   * Counts `n` bytes that have passed already (read from a socket: they cannot wait) and answers how long, in ms, the
   * next ones should wait: 0 while within the rate. Shares the bucket with take().
   */
  debit(n: number): number {
    this.refill();
    this.tokens -= n;
    return this.tokens >= 0 ? 0 : (-this.tokens / this.rate) * 1000;
  }

  take(n: number): Promise<void> {
    // Serialize takers so that the order of sends is kept and the cap holds across concurrent senders.
    this.chain = this.chain.then(() => this.takeNow(n));
    return this.chain;
  }

  private async takeNow(n: number): Promise<void> {
    for (;;) {
      this.refill();
      if (this.tokens >= Math.min(n, this.burst)) {
        this.tokens -= n;
        return;
      }
      const wait = ((Math.min(n, this.burst) - this.tokens) / this.rate) * 1000;
      await new Promise((r) => setTimeout(r, Math.max(1, wait)));
    }
  }

  /** Adds what the rate has earned since the last look, up to the burst. */
  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
  }
}
