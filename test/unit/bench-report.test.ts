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

  it("pairs each run's 4x seed with its 1x seed for the memory ratio (the median of those), each side on its own", () => {
    const r = new Results();
    const mem = (run: number, src: number, dst: number): Sample => ({ ...sample(run, 5), srcRssKiB: src * 1024, dstRssKiB: dst * 1024 });
    r.add('memory-1x', 'loopback', 'snapferry', mem(1, 100, 120));
    r.add('memory-4x', 'loopback', 'snapferry', mem(1, 110, 120));
    // Run 2 recorded 4x first (alternating order), with a noisier 1x.
    r.add('memory-4x', 'loopback', 'snapferry', mem(2, 150, 132));
    r.add('memory-1x', 'loopback', 'snapferry', mem(2, 125, 120));
    r.add('memory-1x', 'loopback', 'snapferry', mem(3, 100, 110));
    r.add('memory-4x', 'loopback', 'snapferry', mem(3, 130, 121));
    const checks = computeChecks(r, ['loopback'], 10);
    const site = checks.find((c) => c.name === 'peak RSS 4x company / 1x, serving side')!;
    expect(site.perRun).toEqual([1.1, 1.2, 1.3]);
    expect(site.value).toBe(1.2);
    expect(site.pass).toBe(false);
    const branch = checks.find((c) => c.name === 'peak RSS 4x company / 1x, pulling side')!;
    expect(branch.perRun).toEqual([1, 1.1, 1.1]);
    expect(branch.value).toBe(1.1);
    expect(checks.find((c) => c.name === 'peak RSS 4x company, serving side')!.value).toBe(130);
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
