/**
 * The bench's checks: each ratio pairs a snapferry sample with rsync's of the same run and repetition, the verdict is
 * the median of those ratios, and the table shows how far they spread and how many met the floor.
 */
import { describe, it, expect } from 'vitest';
import { Results, computeChecks, renderChecks, Sample } from '../../bench/report.js';

function sample(run: number, seconds: number, rep?: number): Sample {
  return { run, rep, ok: true, seconds, bytesOnWire: 400, srcCpu: null, srcRssKiB: null, dstCpu: null, dstRssKiB: null };
}

describe('bench checks', () => {
  it('pairs repetitions of a run with the peer of the same turn, and reports the median, the range and the runs within the floor', () => {
    const r = new Results();
    // Three turns in one run; the peer's turns are recorded in another order (as alternating steps record them).
    r.add('unchanged', 'loopback', 'snapferry', sample(1, 0.375, 0));
    r.add('unchanged', 'loopback', 'snapferry', sample(1, 0.25, 1));
    r.add('unchanged', 'loopback', 'snapferry', sample(1, 0.625, 2));
    r.add('unchanged', 'loopback', 'rsync', sample(1, 0.125, 2));
    r.add('unchanged', 'loopback', 'rsync', sample(1, 0.25, 0));
    r.add('unchanged', 'loopback', 'rsync', sample(1, 0.125, 1));
    expect(r.pairedRatios('unchanged', 'loopback', 'snapferry', 'rsync', (s) => s.seconds)).toEqual([1.5, 2, 5]);
    const check = computeChecks(r, ['loopback'], 10).find((c) => c.name === 'unchanged time snapferry/rsync')!;
    expect(check.value).toBe(2);
    expect(check.perRun).toEqual([1.5, 2, 5]);
    expect(check.pass).toBe(true); // floor 2.0x: the median decides
    expect(renderChecks([check])).toMatch(/1\.50-5\.00x, 2\/3/);
  });

  it('leaves out a run whose peer failed, and gives no range for a single run', () => {
    const r = new Results();
    r.add('seed', 'loopback', 'snapferry', sample(1, 3));
    r.add('seed', 'loopback', 'snapferry', sample(2, 3));
    r.add('seed', 'loopback', 'rsync', sample(1, 4));
    r.add('seed', 'loopback', 'rsync', { ...sample(2, 4), ok: false });
    const check = computeChecks(r, ['loopback'], 10).find((c) => c.name === 'seed time snapferry/rsync')!;
    expect(check.value).toBe(0.75);
    expect(check.perRun).toBeUndefined();
  });
});
