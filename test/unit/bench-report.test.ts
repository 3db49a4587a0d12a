/**
 * The bench's checks: each ratio pairs a snapferry sample with rsync's of the same run and repetition, the verdict is
 * the median of those ratios, and the table shows how far they spread and how many met the floor.
 */
import { describe, it, expect } from 'vitest';
import { Results, computeChecks, renderChecks, toJson, Sample } from '../../bench/report.js';

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

  it('counts a run where snapferry failed or timed out as missing the floor, instead of leaving it out', () => {
    const r = new Results();
    const failed = (run: number): Sample => ({ ...sample(run, NaN), ok: false, bytesOnWire: null, note: 'snapferry pull: timed out after 1200 s' });
    // Two runs met 0.7x; the third timed out: the median is the second worst, not the best of the two that finished.
    r.add('delta', 'loopback', 'snapferry', sample(1, 1));
    r.add('delta', 'loopback', 'snapferry', failed(2));
    r.add('delta', 'loopback', 'snapferry', failed(3));
    for (const run of [1, 2, 3]) r.add('delta', 'loopback', 'rsync', sample(run, 2));
    const check = computeChecks(r, ['loopback'], 10).find((c) => c.name === 'delta time snapferry/rsync')!;
    expect(check.perRun).toEqual([0.5, Infinity, Infinity]);
    expect(check.pass).toBe(false);
    expect(renderChecks([check])).toMatch(/failed\s+0\.50-0\.50x, 1\/3, 2 failed/);
    // A single run that failed: a FAIL, not a check left out.
    const one = new Results();
    one.add('seed', 'loopback', 'snapferry', failed(1));
    one.add('seed', 'loopback', 'rsync', sample(1, 4));
    const seed = computeChecks(one, ['loopback'], 10).find((c) => c.name === 'seed time snapferry/rsync')!;
    expect(seed.pass).toBe(false);
    expect(toJson(one, [seed]).at(-1)).toMatchObject({ value: null, pass: false, failedRuns: 1 });
  });

  it('shows a check whose peer failed in every run, without a verdict', () => {
    const r = new Results();
    r.add('unchanged', 'loopback', 'snapferry', sample(1, 0.2));
    r.add('unchanged', 'loopback', 'rsync', { ...sample(1, 0.1), ok: false });
    const check = computeChecks(r, ['loopback'], 10).find((c) => c.name === 'unchanged time snapferry/rsync')!;
    expect(check.value).toBeNull();
    expect(check.pass).toBeNull();
  });

  it('counts failed runs in the peak RSS and follow checks', () => {
    const r = new Results();
    const seed = (run: number, ok: boolean, mib: number): Sample => ({ ...sample(run, 5), ok, srcRssKiB: mib * 1024, dstRssKiB: mib * 1024 });
    // The one seed that finished peaked at 150 MiB; the two others were killed (say, out of memory).
    r.add('seed', 'loopback', 'snapferry', seed(1, true, 150));
    r.add('seed', 'loopback', 'snapferry', seed(2, false, 180));
    r.add('seed', 'loopback', 'snapferry', seed(3, false, 190));
    r.add('follow', 'loopback', 'snapferry', sample(1, 1.5));
    r.add('follow', 'loopback', 'snapferry', { ...sample(2, NaN), ok: false });
    const checks = computeChecks(r, ['loopback'], 10);
    const rss = checks.find((c) => c.name === 'seed peak RSS, pulling side (snapferry)')!;
    expect(rss.pass).toBe(false);
    expect(rss.perRun).toEqual([150, Infinity, Infinity]);
    const fol = checks.find((c) => c.name === 'follow: edit at the site to applied at the branch')!;
    expect(fol.perRun).toEqual([1.5, Infinity]);
    expect(fol.pass).toBe(false);
  });
});
