/** Bandwidth limits (--bwlimit) and human-readable sizes. */
import { fail, ErrorCodes } from './errors.js';

const UNITS: Record<string, number> = { '': 1, B: 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 };

/** Parses "8M", "512K", "1.5G", "100000" (bytes per second). Throws USAGE on anything else. */
export function parseRate(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?(?:\/s)?\s*$/i.exec(text);
  if (!m) return fail(ErrorCodes.USAGE, `not a rate: ${JSON.stringify(text)} (use e.g. 8M for 8 MiB/s)`);
  const v = Math.floor(Number(m[1]) * UNITS[m[2]!.toUpperCase()]!);
  if (v < 1024) fail(ErrorCodes.USAGE, `rate ${text} is below 1K per second`);
  // Beyond any link (a 400-digit rate read as Infinity made the bucket's arithmetic NaN): leave the option out instead.
  if (v > 2 ** 40) fail(ErrorCodes.USAGE, `rate ${text} is above 1T per second (leave --bwlimit out for no cap)`);
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

/** One take() waiting its turn. */
interface Taker {
  n: number;
  gone?: () => boolean;
  resolve: (passed: boolean) => void;
}

/** An owner's waiting takes, and the bytes its turns have earned and not yet spent (deficit round robin). */
interface Line {
  takers: Taker[];
  credit: number;
}

/** Bytes an owner may pass per turn: a few packs of a seed's, so that turns are fair in bytes, not in takes. */
const TURN_BYTES = 256 << 10;

/**
 * A token bucket: `take(n)` resolves when n bytes may pass. Burst is a quarter second of rate, so short bursts do not
 * exceed the cap by much on any link. Takers are served in turn by owner (a session), fair in bytes (deficit round
 * robin): each owner's takes keep their order, and a session with a full window queued cannot hold the others for its
 * whole window (on a thin cap the others' pulls ran out of patience, 60 s, and failed).
 */
export class TokenBucket {
  private tokens: number;
  private last = performance.now();
  private readonly burst: number;
  /** Waiting takes by owner, in the order the owners take their turns (a Map keeps insertion order). */
  private readonly lines = new Map<unknown, Line>();
  private serving = false;

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

  /**
   * Resolves true when `n` bytes of `owner`'s may pass, after its earlier takes and in turn with other owners'; false,
   * at its turn and without taking from the rate, once `gone()` says the owner went away (a closed session's answers
   * take no share of the cap).
   */
  take(n: number, owner: unknown = this, gone?: () => boolean): Promise<boolean> {
    return new Promise((resolve) => {
      const line = this.lines.get(owner);
      if (line) line.takers.push({ n, gone, resolve });
      else this.lines.set(owner, { takers: [{ n, gone, resolve }], credit: 0 });
      if (!this.serving) void this.serve();
    });
  }

  /** Serves the waiting takes, owner by owner in turn, until none waits. */
  private async serve(): Promise<void> {
    this.serving = true;
    try {
      for (const [owner, line] of this.lines) {
        line.credit += TURN_BYTES;
        while (line.takers.length > 0) {
          const taker = line.takers[0]!;
          if (taker.gone?.()) {
            line.takers.shift();
            taker.resolve(false);
            continue;
          }
          if (taker.n > line.credit) break; // a large take waits for the credit of later turns
          line.takers.shift();
          line.credit -= taker.n;
          await this.earn(taker.n);
          if (taker.gone?.()) {
            this.tokens += taker.n; // gone while it waited: what it took goes back
            taker.resolve(false);
          } else taker.resolve(true);
        }
        // To the back of the line with what is left of its credit, or out of it (credit is not kept while idle).
        this.lines.delete(owner);
        if (line.takers.length > 0) this.lines.set(owner, line);
      }
    } finally {
      this.serving = false;
    }
  }

  /** Waits until `n` bytes may pass (a take larger than the burst passes once a burst is there), and takes them. */
  private async earn(n: number): Promise<void> {
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
