/**
 * The site's shared rate cap (`serve --bwlimit`: TokenBucket.take) serves sessions in turn. Before, it was one queue
 * in arrival order: a branch with its whole request window queued (~5 MB) held every other branch for all of it (on a
 * 100k cap, the others' pulls ran out of patience, 60 s, and failed), and the takes of a session that had gone spent
 * the cap all the same. Produced here with real timers: one owner queues many takes, another one take after them.
 */
import { describe, it, expect } from 'vitest';
import { TokenBucket, parseRate } from '../../src/util/rate.js';

const RATE = 4 << 20; // burst 1 MiB
const TAKE = 256 << 10;

describe('TokenBucket.take shares the cap between owners', () => {
  it('a take of a second owner passes after at most one more of the first, not after its whole queue', async () => {
    const bucket = new TokenBucket(RATE);
    const order: string[] = [];
    const first = { name: 'first' };
    const second = { name: 'second' };
    const all: Promise<boolean>[] = [];
    for (let i = 0; i < 12; i++) all.push(bucket.take(TAKE, first).then((ok) => (order.push(`a${i}`), ok)));
    all.push(bucket.take(TAKE, second).then((ok) => (order.push('b'), ok)));
    expect(await Promise.all(all)).toEqual(Array(13).fill(true));
    // The first owner's takes keep their order; the second's comes in the first's second turn at the latest.
    expect(order.filter((x) => x !== 'b')).toEqual(Array.from({ length: 12 }, (_, i) => `a${i}`));
    expect(order.indexOf('b')).toBeLessThanOrEqual(2);
  });

  it('the takes of an owner gone resolve false at their turn and leave the cap to the others', async () => {
    const bucket = new TokenBucket(RATE);
    let gone = false;
    const dead = bucket.take(8 << 20, 'dead', () => gone); // 8 MiB: 2 s of the cap, were it spent
    const deadLater = [1, 2, 3].map(() => bucket.take(8 << 20, 'dead', () => gone));
    gone = true;
    const t0 = performance.now();
    // 4 MiB past the 1 MiB burst: ~0.75 s at 4 MiB/s. Were the dead owner's 32 MiB spent first, 8 s.
    const live = await Promise.all([1, 2, 3, 4].map(() => bucket.take(1 << 20, 'live')));
    const ms = performance.now() - t0;
    expect(live).toEqual([true, true, true, true]);
    // Gone before its send: the first too gives back what it took.
    expect(await Promise.all([dead, ...deadLater])).toEqual([false, false, false, false]);
    expect(ms).toBeLessThan(6000);
  });

  it('parseRate refuses a rate beyond any link (read as Infinity, it made the bucket NaN)', () => {
    expect(() => parseRate('9'.repeat(400))).toThrow(/above 1T per second/);
    expect(parseRate('1T'.replace('T', 'G'))).toBe(1 << 30);
  });
});
