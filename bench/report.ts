/**
 * Results of a bench run, the checks against the floors of the issues, and their three renderings: a table on
 * stdout, a JSON file (--json) and an SVG bar chart of the snapferry/rsync ratios (bench/results/ratios.svg).
 */
import fs from 'node:fs';
import path from 'node:path';
import { median, LinkName } from './util.js';

export type Extra = Record<string, number | string | boolean | null>;

/** One run of one tool in one scenario over one link. */
export interface Sample {
  run: number;
  /** Which of a run's repeated measurements this is (unchanged: three a run), paired with the peer's same one. */
  rep?: number;
  ok: boolean;
  note?: string;
  seconds: number;
  bytesOnWire: number | null;
  /** Serving side (snapferry serve, rsync client, tar sender). */
  srcCpu: number | null;
  srcRssKiB: number | null;
  /** Branch side (snapferry pull, rsync daemon, tar receiver; the reader for verify). */
  dstCpu: number | null;
  dstRssKiB: number | null;
  extra?: Extra;
}

/** Aggregate of the runs of one (scenario, link, tool); medians over the successful runs. */
export interface Row {
  scenario: string;
  link: string;
  tool: string;
  runs: number;
  okRuns: number;
  seconds: number | null;
  secondsMin: number | null;
  secondsMax: number | null;
  bytesOnWire: number | null;
  /** Both sides together. */
  cpuSeconds: number | null;
  srcCpuSeconds: number | null;
  dstCpuSeconds: number | null;
  /** The larger of the two sides. */
  peakRssMiB: number | null;
  srcPeakRssMiB: number | null;
  dstPeakRssMiB: number | null;
  notes: string[];
  extra?: Extra;
}

export interface MicroResult {
  name: string;
  /** 'snapferry' for our wrapper, 'raw' for the primitive it wraps, or a baseline name. */
  tool: string;
  value: number;
  unit: string;
  detail?: string;
  extra?: Extra;
}

/** A figure compared with a floor from the issues (informational: never changes the exit status). */
export interface Check {
  name: string;
  scenario: string;
  link: string;
  metric: string;
  /** median over runs of the per-run ratio (or the figure itself) */
  value: number | null;
  /** upper bound; null = reported without a floor */
  floor: number | null;
  source: string;
  pass: boolean | null;
  /** Shown on the SVG chart (snapferry/rsync ratios). */
  chart: boolean;
  unit: 'x' | 'MiB' | '%' | 's';
  /** The per-run ratios behind a median, when there are several: how far the runs spread, and how many met the floor. */
  perRun?: number[];
}

export class Results {
  private readonly samples = new Map<string, Sample[]>();
  private readonly order: string[] = [];
  readonly micro: MicroResult[] = [];
  readonly notes: string[] = [];
  readonly info: Record<string, string> = {};

  add(scenario: string, link: LinkName | string, tool: string, s: Sample): void {
    const k = `${scenario}\u0000${link}\u0000${tool}`;
    let l = this.samples.get(k);
    if (!l) {
      l = [];
      this.samples.set(k, l);
      this.order.push(k);
    }
    l.push(s);
  }

  note(msg: string): void {
    if (!this.notes.includes(msg)) this.notes.push(msg);
  }

  get(scenario: string, link: string, tool: string): Sample[] {
    return this.samples.get(`${scenario}\u0000${link}\u0000${tool}`) ?? [];
  }

  rows(): Row[] {
    return this.order.map((k) => {
      const [scenario, link, tool] = k.split('\u0000') as [string, string, string];
      return aggregate(scenario, link, tool, this.samples.get(k)!);
    });
  }

  /** Per-run ratio a/b of a metric, paired by run number, then the median. */
  pairedRatio(scenario: string, link: string, toolA: string, toolB: string, metric: (s: Sample) => number | null, scenarioB = scenario): number | null {
    return this.pairedMedian(scenario, link, toolA, toolB, metric, scenarioB)?.value ?? null;
  }

  /** The median of the per-run ratios and, when there are several, the ratios themselves (a check's `perRun`). */
  pairedMedian(scenario: string, link: string, toolA: string, toolB: string, metric: (s: Sample) => number | null, scenarioB = scenario): Pick<Check, 'perRun'> & { value: number } | null {
    const ratios = this.pairedRatios(scenario, link, toolA, toolB, metric, scenarioB);
    if (ratios.length === 0) return null;
    return { value: median(ratios), ...(ratios.length > 1 || !Number.isFinite(ratios[0]!) ? { perRun: ratios } : {}) };
  }

  /**
   * The per-run ratios a/b of a metric, paired by run number (and repetition). A run where A (the tool under test)
   * failed or timed out counts as +Infinity, a ratio no floor is met by: leaving it out let the runs that did finish
   * decide alone (a timed-out delta in one run of three, or in all three, could still print PASS, or no check at all).
   * A run where only the peer (B) failed is left out: there is nothing to compare with.
   */
  pairedRatios(scenario: string, link: string, toolA: string, toolB: string, metric: (s: Sample) => number | null, scenarioB = scenario): number[] {
    const a = this.get(scenario, link, toolA);
    const b = this.get(scenarioB, link, toolB);
    const ratios: number[] = [];
    for (const sa of a) {
      const sb = b.find((x) => x.run === sa.run && (x.rep ?? 0) === (sa.rep ?? 0));
      if (!sb) continue;
      if (!sa.ok) {
        ratios.push(Infinity);
        continue;
      }
      if (!sb.ok) continue;
      const va = metric(sa);
      const vb = metric(sb);
      if (va === null || vb === null || !Number.isFinite(va) || !Number.isFinite(vb) || vb <= 0) continue;
      ratios.push(va / vb);
    }
    return ratios;
  }
}

const nz = (xs: Array<number | null | undefined>): number[] => xs.filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
const med = (xs: Array<number | null | undefined>): number | null => {
  const v = nz(xs);
  return v.length ? median(v) : null;
};
const mib = (kib: number | null): number | null => (kib === null ? null : kib / 1024);
/**
 * A check's figure over the runs of one tool: the median, a failed run counting as +Infinity (it did not show the
 * figure within any floor), and the runs themselves when there are several or one failed.
 */
function runsMedian(samples: Sample[], pick: (s: Sample) => number | null): Pick<Check, 'perRun'> & { value: number } | null {
  const v = samples.map((s) => (s.ok ? pick(s) : Infinity)).filter((x): x is number => typeof x === 'number' && !Number.isNaN(x));
  if (!v.length) return null;
  return { value: median(v), ...(v.length > 1 || !Number.isFinite(v[0]!) ? { perRun: v } : {}) };
}

function aggregate(scenario: string, link: string, tool: string, samples: Sample[]): Row {
  const ok = samples.filter((s) => s.ok);
  const secs = nz(ok.map((s) => s.seconds));
  const src = med(ok.map((s) => s.srcCpu));
  const dst = med(ok.map((s) => s.dstCpu));
  const srcR = mib(med(ok.map((s) => s.srcRssKiB)));
  const dstR = mib(med(ok.map((s) => s.dstRssKiB)));
  const extra: Extra = {};
  for (const s of ok) {
    for (const [k, v] of Object.entries(s.extra ?? {})) {
      if (typeof v === 'number') continue;
      extra[k] = v;
    }
  }
  const numKeys = new Set(ok.flatMap((s) => Object.entries(s.extra ?? {}).filter(([, v]) => typeof v === 'number').map(([k]) => k)));
  for (const k of numKeys) extra[k] = med(ok.map((s) => s.extra?.[k] as number | undefined));
  return {
    scenario,
    link,
    tool,
    runs: samples.length,
    okRuns: ok.length,
    seconds: secs.length ? median(secs) : null,
    secondsMin: secs.length ? Math.min(...secs) : null,
    secondsMax: secs.length ? Math.max(...secs) : null,
    bytesOnWire: med(ok.map((s) => s.bytesOnWire)),
    cpuSeconds: src === null && dst === null ? null : (src ?? 0) + (dst ?? 0),
    srcCpuSeconds: src,
    dstCpuSeconds: dst,
    peakRssMiB: srcR === null && dstR === null ? null : Math.max(srcR ?? 0, dstR ?? 0),
    srcPeakRssMiB: srcR,
    dstPeakRssMiB: dstR,
    notes: [...new Set(samples.filter((s) => s.note).map((s) => s.note!))],
    extra: Object.keys(extra).length ? extra : undefined,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Checks: the floors of issues 2-5
// ---------------------------------------------------------------------------------------------------------------

interface VsRsync {
  scenario: string;
  metric: 'seconds' | 'bytesOnWire' | 'cpuSeconds';
  floor: { loopback: number | null; shaped: number | null };
  source: string;
}

const VS_RSYNC: VsRsync[] = [
  { scenario: 'seed', metric: 'seconds', floor: { loopback: 1.0, shaped: 0.8 }, source: "issue 2 (<= 1.0x on 127.0.0.1, aim 0.8x); issue 5 (<= 0.8x on the shaped link); the pull, the site's index apart (see seed+index)" },
  { scenario: 'seed', metric: 'bytesOnWire', floor: { loopback: null, shaped: null }, source: 'informational' },
  { scenario: 'seed', metric: 'cpuSeconds', floor: { loopback: null, shaped: null }, source: "informational (both sides; the site's first index not included: see seed+index)" },
  { scenario: 'seed+index', metric: 'cpuSeconds', floor: { loopback: null, shaped: null }, source: "informational (both sides): the site's CPU for its first index of the company added (reading, chunking, compressing it into its store)" },
  { scenario: 'seed+index', metric: 'seconds', floor: { loopback: null, shaped: null }, source: "informational: the pull plus the site's first index of the company (rsync has no index)" },
  { scenario: 'delta+index', metric: 'seconds', floor: { loopback: null, shaped: null }, source: "informational: the pull plus the site's re-index after the change (incl. its settle delay)" },
  { scenario: 'delta+index', metric: 'cpuSeconds', floor: { loopback: null, shaped: null }, source: "informational (both sides): the site's CPU for its re-index after the change added" },
  { scenario: 'small-seed+index', metric: 'seconds', floor: { loopback: null, shaped: null }, source: "informational: the pull plus the site's first index of the 100,000 files" },
  { scenario: 'delta', metric: 'bytesOnWire', floor: { loopback: 1.0, shaped: 1.0 }, source: "issue 3 (<= rsync's total bytes sent, aim 0.7x)" },
  { scenario: 'delta', metric: 'seconds', floor: { loopback: 0.7, shaped: null }, source: 'issue 3 (<= 0.7x on 127.0.0.1): the first delta after a seed, which copies each changed file whole' },
  { scenario: 'delta-2', metric: 'bytesOnWire', floor: { loopback: 1.0, shaped: 1.0 }, source: "issue 3 (<= rsync's total bytes sent): a second day's change" },
  { scenario: 'delta-2', metric: 'seconds', floor: { loopback: 0.7, shaped: null }, source: "issue 3 (<= 0.7x on 127.0.0.1): a second day's change, on the spare generation" },
  { scenario: 'unchanged', metric: 'seconds', floor: { loopback: 2.0, shaped: null }, source: "issue 3 (<= 2x rsync's unchanged re-run)" },
  { scenario: 'repair', metric: 'seconds', floor: { loopback: null, shaped: null }, source: 'informational (rsync needs -c to find a flipped page)' },
  { scenario: 'repair', metric: 'bytesOnWire', floor: { loopback: null, shaped: null }, source: 'informational' },
  { scenario: 'small-seed', metric: 'seconds', floor: { loopback: 1.0, shaped: 1.0 }, source: 'issue 5 (100,000 small files <= 1.0x rsync)' },
];

const M = {
  seconds: (s: Sample) => s.seconds,
  bytesOnWire: (s: Sample) => s.bytesOnWire,
  cpuSeconds: (s: Sample) => (s.srcCpu === null && s.dstCpu === null ? null : (s.srcCpu ?? 0) + (s.dstCpu ?? 0)),
};
const LABEL = { seconds: 'time', bytesOnWire: 'bytes on wire', cpuSeconds: 'CPU (both sides)' };

function verdict(value: number | null, floor: number | null): boolean | null {
  if (value === null || floor === null) return null;
  return value <= floor;
}

export function computeChecks(r: Results, links: string[], fanoutN: number): Check[] {
  const out: Check[] = [];
  for (const link of links) {
    for (const v of VS_RSYNC) {
      const scenarioB = v.scenario.replace('+index', '');
      const floor = v.floor[link as LinkName] ?? null;
      const paired = r.pairedMedian(v.scenario, link, 'snapferry', 'rsync', M[v.metric], scenarioB);
      if (paired === null) {
        // Both ran, but no run gave a pair (the peer failed in every run): say so rather than leave the check out.
        if (floor !== null && r.get(v.scenario, link, 'snapferry').length && r.get(scenarioB, link, 'rsync').length)
          out.push({ name: `${v.scenario} ${LABEL[v.metric]} snapferry/rsync`, scenario: v.scenario, link, metric: v.metric, value: null, floor, source: `${v.source}; no run of rsync succeeded`, pass: null, chart: false, unit: 'x' });
        continue;
      }
      const { value } = paired;
      out.push({
        name: `${v.scenario} ${LABEL[v.metric]} snapferry/rsync`,
        scenario: v.scenario,
        link,
        metric: v.metric,
        floor,
        source: v.source,
        pass: verdict(value, floor),
        chart: v.metric !== 'cpuSeconds',
        unit: 'x',
        ...paired,
      });
    }
    const tar = r.pairedRatio('seed', link, 'snapferry', 'tar', M.seconds);
    if (tar !== null)
      out.push({ name: 'seed time snapferry/tar pipeline', scenario: 'seed', link, metric: 'seconds', value: tar, floor: null, source: 'informational', pass: null, chart: false, unit: 'x' });
    const rep = r.pairedRatio('repair', link, 'snapferry', 'snapferry', M.bytesOnWire, 'seed');
    if (rep !== null)
      out.push({ name: 'repair bytes / seed bytes (snapferry)', scenario: 'repair', link, metric: 'bytesOnWire', value: rep * 100, floor: 2, source: "issue 4 (<= 2% of the seed's bytes)", pass: verdict(rep * 100, 2), chart: false, unit: '%' });
    const dvs = r.pairedRatio('delta', link, 'snapferry', 'snapferry', M.bytesOnWire, 'seed');
    if (dvs !== null)
      out.push({ name: 'delta bytes / seed bytes (snapferry)', scenario: 'delta', link, metric: 'bytesOnWire', value: dvs, floor: 1.0, source: 'issue 3 (a delta never costs more than a fresh seed)', pass: verdict(dvs, 1.0), chart: false, unit: 'x' });
    // Issue 4's floor is for the read-bound case, which is reading from the disk. From the page cache cat only copies
    // memory (1 GiB in ~0.17 s here), less time than Node takes to start and read the manifest before the first byte
    // (a fast verify alone: 0.17-0.21 s): that ratio is printed for reading, without a verdict.
    for (const [scen, what, floor, source] of [
      ['verify', 'page cache', null, 'informational: from memory, not read-bound (Node starting and the hashing, not the reads, set the time)'],
      ['verify-cold', 'cold cache', 1.25, 'issue 4 (>= 0.8x the speed of cat: read-bound, from the disk)'],
    ] as const) {
      const ver = r.pairedRatio(scen, link, 'snapferry', 'cat', M.seconds);
      if (ver !== null)
        out.push({ name: `verify --deep time / cat time (${what})`, scenario: scen, link, metric: 'seconds', value: ver, floor, source, pass: floor === null ? null : verdict(ver, floor), chart: false, unit: 'x' });
    }
    // The site reads and compresses each chunk once, when it indexes (its chunk store), and seals per branch: its whole
    // CPU for N branches against one is what "read and compress once, seal per branch" comes to. Over the pulls alone
    // the ratio is N x (sealing and sending are all a pull costs the site), printed beside it for reading.
    const cpuWithIndex = (s: Sample) => (typeof s.extra?.serverCpuWithIndex === 'number' ? s.extra.serverCpuWithIndex : null);
    const fanAll = r.pairedRatio(`fanout-${fanoutN}`, link, 'snapferry', 'snapferry', cpuWithIndex, 'fanout-1');
    if (fanAll !== null)
      out.push({ name: `fan-out server CPU ${fanoutN} / 1 (index and store included)`, scenario: 'fanout', link, metric: 'srcCpu', value: fanAll, floor: 2.5, source: 'issue 5 (<= 2.5x: read and compress once, seal per branch)', pass: verdict(fanAll, 2.5), chart: false, unit: 'x' });
    const fan = r.pairedRatio(`fanout-${fanoutN}`, link, 'snapferry', 'snapferry', (s) => s.srcCpu, 'fanout-1');
    if (fan !== null)
      out.push({ name: `fan-out server CPU ${fanoutN} pulls / 1 pull, pulls alone`, scenario: 'fanout', link, metric: 'srcCpu', value: fan, floor: null, source: 'informational: the per-branch sealing and sending only', pass: null, chart: false, unit: 'x' });
    const fol = runsMedian(r.get('follow', link, 'snapferry'), (s) => s.seconds);
    if (fol !== null)
      out.push({ name: 'follow: edit at the site to applied at the branch', scenario: 'follow', link, metric: 'seconds', floor: 5, source: 'issue 3 (applied within 5 s)', pass: verdict(fol.value, 5), chart: false, unit: 's', ...fol });
    for (const side of ['src', 'dst'] as const) {
      const pick = (s: Sample) => (side === 'src' ? s.srcRssKiB : s.dstRssKiB);
      const big = runsMedian(r.get('memory-4x', link, 'snapferry'), (s) => mib(pick(s)));
      // Each run's 4x seed against its 1x seed, then the median, as the other ratios.
      const paired = r.pairedMedian('memory-4x', link, 'snapferry', 'snapferry', pick, 'memory-1x');
      if (big === null || paired === null) continue;
      const who = side === 'src' ? 'serving' : 'pulling';
      out.push({ name: `peak RSS 4x company / 1x, ${who} side`, scenario: 'memory', link, metric: `${side}Rss`, floor: 1.0, source: 'issue 2 (no larger for a 4 GiB folder)', pass: verdict(paired.value, 1.0), chart: false, unit: 'x', ...paired });
      out.push({ name: `peak RSS 4x company, ${who} side`, scenario: 'memory', link, metric: `${side}Rss`, floor: 200, source: 'issue 2 (<= 200 MiB each side)', pass: verdict(big.value, 200), chart: false, unit: 'MiB', ...big });
    }
    for (const scen of ['seed', 'small-seed']) {
      const ss = r.get(scen, link, 'snapferry');
      if (!ss.length) continue;
      for (const side of ['src', 'dst'] as const) {
        const v = runsMedian(ss, (s) => mib(side === 'src' ? s.srcRssKiB : s.dstRssKiB));
        if (v === null) continue;
        const { value } = v;
        out.push({
          ...v,
          name: `${scen} peak RSS, ${side === 'src' ? 'serving' : 'pulling'} side (snapferry)`,
          scenario: scen,
          link,
          metric: `${side}Rss`,
          value,
          floor: 200,
          source: 'issue 2 (<= 200 MiB each side)',
          pass: verdict(value, 200),
          chart: false,
          unit: 'MiB',
        });
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Table
// ---------------------------------------------------------------------------------------------------------------

function fmtNum(n: number | null, digits = 2): string {
  if (n === null || !Number.isFinite(n)) return '-';
  if (Math.abs(n) >= 1000) return n.toFixed(0);
  if (Math.abs(n) >= 100) return n.toFixed(Math.min(digits, 1));
  return n.toFixed(digits);
}

export function fmtBytes(n: number | null): string {
  if (n === null || !Number.isFinite(n)) return '-';
  if (n < 10_000) return `${n.toFixed(0)} B`;
  if (n < 10_000_000) return `${(n / 1e3).toFixed(1)} kB`;
  return `${(n / 1e6).toFixed(1)} MB`;
}

function table(head: string[], rows: string[][], right: boolean[]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (right[i] ? c.padStart(w[i]!) : c.padEnd(w[i]!))).join('  ').trimEnd();
  return [line(head), w.map((x) => '-'.repeat(x)).join('  '), ...rows.map(line)].join('\n');
}

export function renderMicro(micro: MicroResult[]): string {
  if (!micro.length) return '';
  return table(
    ['micro', 'tool', 'value', 'unit', 'detail'],
    micro.map((m) => [m.name, m.tool, fmtNum(m.value, m.unit === 'x' ? 2 : 1), m.unit, m.detail ?? '']),
    [false, false, true, false, false],
  );
}

export function renderRows(rows: Row[]): string {
  if (!rows.length) return '';
  return table(
    ['scenario', 'link', 'tool', 'runs', 'seconds (median [min-max])', 'on wire', 'CPU s serve+branch', 'RSS MiB serve/branch', 'notes'],
    rows.map((r) => [
      r.scenario,
      r.link,
      r.tool,
      `${r.okRuns}/${r.runs}`,
      r.seconds === null ? 'FAILED' : r.runs > 1 ? `${fmtNum(r.seconds)} [${fmtNum(r.secondsMin)}-${fmtNum(r.secondsMax)}]` : fmtNum(r.seconds),
      fmtBytes(r.bytesOnWire),
      r.srcCpuSeconds === null && r.dstCpuSeconds === null ? '-' : `${fmtNum(r.srcCpuSeconds)}+${fmtNum(r.dstCpuSeconds)}`,
      r.srcPeakRssMiB === null && r.dstPeakRssMiB === null ? '-' : `${fmtNum(r.srcPeakRssMiB, 0)}/${fmtNum(r.dstPeakRssMiB, 0)}`,
      r.notes.join('; ').slice(0, 120),
    ]),
    [false, false, false, true, true, true, true, true, false],
  );
}

function fmtCheck(c: Check): string {
  if (c.value === null) return '-';
  if (c.value === Infinity) return 'failed';
  return c.unit === 'x' ? `${c.value.toFixed(2)}x` : c.unit === '%' ? `${c.value.toFixed(2)}%` : c.unit === 's' ? `${c.value.toFixed(2)} s` : `${c.value.toFixed(0)} MiB`;
}
/** The spread of a median's per-run ratios and, under a floor, how many runs met it: "0.58-0.79x, 2/3". */
function fmtPerRun(c: Check): string {
  if (!c.perRun) return '';
  const done = c.perRun.filter((x) => Number.isFinite(x));
  const failed = c.perRun.length - done.length;
  const unit = c.unit === 'x' ? 'x' : c.unit === '%' ? '%' : c.unit === 's' ? ' s' : ' MiB';
  const range = done.length ? `${Math.min(...done).toFixed(2)}-${Math.max(...done).toFixed(2)}${unit}` : 'none finished';
  const met = c.floor === null ? '' : `, ${c.perRun.filter((x) => x <= c.floor!).length}/${c.perRun.length}`;
  return `${range}${met}${failed ? `, ${failed} failed` : ''}`;
}
function fmtFloor(c: Check): string {
  if (c.floor === null) return '-';
  return c.unit === 'x' ? `<= ${c.floor.toFixed(2)}x` : c.unit === '%' ? `<= ${c.floor}%` : c.unit === 's' ? `<= ${c.floor} s` : `<= ${c.floor} MiB`;
}

export function renderChecks(checks: Check[]): string {
  if (!checks.length) return '';
  return table(
    ['check (median of per-run ratios)', 'link', 'value', 'runs (range, met)', 'floor', 'verdict', 'source'],
    checks.map((c) => [c.name, c.link, fmtCheck(c), fmtPerRun(c), fmtFloor(c), c.pass === null ? '' : c.pass ? 'PASS' : 'FAIL', c.source]),
    [false, false, true, true, true, false, false],
  );
}

// ---------------------------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------------------------

/** Numbers to 3 decimals (JSON readability; the measurements are not more precise than that). */
function rounded(v: unknown): unknown {
  if (typeof v === 'number') return Number.isFinite(v) && !Number.isInteger(v) ? Math.round(v * 1000) / 1000 : Number.isFinite(v) ? v : null;
  if (Array.isArray(v)) return v.map(rounded);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, rounded(x)]));
  return v;
}

export function toJson(r: Results, checks: Check[]): unknown[] {
  const out: unknown[] = [];
  for (const row of r.rows()) {
    const samples = r.get(row.scenario, row.link, row.tool).map((s) => ({
      run: s.run,
      ...(s.rep !== undefined ? { rep: s.rep } : {}),
      ok: s.ok,
      seconds: s.seconds,
      bytesOnWire: s.bytesOnWire,
      srcCpuSeconds: s.srcCpu,
      dstCpuSeconds: s.dstCpu,
      srcPeakRssMiB: s.srcRssKiB === null ? null : s.srcRssKiB / 1024,
      dstPeakRssMiB: s.dstRssKiB === null ? null : s.dstRssKiB / 1024,
      ...(s.note ? { note: s.note } : {}),
    }));
    out.push({ ...row, samples });
  }
  for (const m of r.micro)
    out.push({ scenario: `micro:${m.name}`, link: 'in-process', tool: m.tool, seconds: null, bytesOnWire: null, cpuSeconds: null, peakRssMiB: null, value: m.value, unit: m.unit, detail: m.detail ?? null, ...(m.extra ?? {}) });
  for (const c of checks)
    out.push({
      scenario: `check:${c.scenario}`, link: c.link, tool: 'check', seconds: null, bytesOnWire: null, cpuSeconds: null, peakRssMiB: null, check: c.name, metric: c.metric,
      // A failed run's +Infinity is written as null (JSON has no infinity), and counted in failedRuns.
      value: c.value, unit: c.unit, floor: c.floor, pass: c.pass, source: c.source,
      ...(c.perRun ? { perRun: c.perRun, failedRuns: c.perRun.filter((x) => !Number.isFinite(x)).length } : {}),
    });
  return out.map(rounded) as unknown[];
}

// ---------------------------------------------------------------------------------------------------------------
// SVG chart
// ---------------------------------------------------------------------------------------------------------------

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Horizontal bars of the snapferry/rsync ratios, one per (scenario, metric, link), with the floor marked. */
export function renderSvg(checks: Check[], subtitle: string[]): string {
  const bars = checks.filter((c) => c.chart && c.value !== null);
  const W = 900;
  const labelW = 330;
  const plotW = W - labelW - 90;
  const rowH = 26;
  const top = 56 + 16 * subtitle.length;
  const H = top + Math.max(1, bars.length) * rowH + 60;
  const maxV = Math.max(2, ...bars.map((b) => Math.min(b.value!, 4)), ...bars.map((b) => b.floor ?? 0));
  const scaleMax = Math.ceil(maxV * 2) / 2;
  const x = (v: number) => labelW + (Math.min(v, scaleMax) / scaleMax) * plotW;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  parts.push(`<text x="16" y="24" font-size="16" font-weight="bold">snapferry / rsync, per scenario and link (lower is better)</text>`);
  subtitle.forEach((line, i) => parts.push(`<text x="16" y="${44 + 16 * i}" fill="#555">${esc(line)}</text>`));
  // grid
  for (let v = 0; v <= scaleMax + 1e-9; v += 0.5) {
    const gx = x(v);
    parts.push(`<line x1="${gx}" y1="${top - 8}" x2="${gx}" y2="${top + bars.length * rowH}" stroke="${v === 1 ? '#333' : '#ddd'}" stroke-width="${v === 1 ? 1.5 : 1}"${v === 1 ? ' stroke-dasharray="4 3"' : ''}/>`);
    parts.push(`<text x="${gx}" y="${top + bars.length * rowH + 16}" text-anchor="middle" fill="#555">${v.toFixed(1)}x</text>`);
  }
  if (!bars.length) parts.push(`<text x="${labelW}" y="${top + 16}" fill="#999">no snapferry/rsync pairs in this run</text>`);
  bars.forEach((b, i) => {
    const y = top + i * rowH;
    const color = b.pass === null ? '#8899aa' : b.pass ? '#2e9d4f' : '#d0453a';
    const label = `${b.scenario} · ${b.link} · ${b.metric === 'seconds' ? 'time' : 'bytes'}`;
    parts.push(`<text x="${labelW - 8}" y="${y + 16}" text-anchor="end">${esc(label)}</text>`);
    parts.push(`<rect x="${labelW}" y="${y + 4}" width="${Math.max(1, x(b.value!) - labelW)}" height="${rowH - 8}" fill="${color}"/>`);
    const over = b.value! > scaleMax ? ' ▸' : '';
    const labelX = Math.max(x(b.value!), b.floor !== null ? x(b.floor) + 2 : 0) + 4;
    const shown = Number.isFinite(b.value!) ? `${b.value!.toFixed(2)}x` : 'failed';
    parts.push(`<text x="${labelX}" y="${y + 16}" fill="#222">${shown}${over}${b.pass === null ? '' : b.pass ? ' PASS' : ' FAIL'}</text>`);
    if (b.floor !== null) {
      const fx = x(b.floor);
      parts.push(`<line x1="${fx}" y1="${y + 1}" x2="${fx}" y2="${y + rowH - 1}" stroke="#000" stroke-width="2.5"/>`);
    }
  });
  const ly = top + bars.length * rowH + 36;
  parts.push(`<rect x="16" y="${ly - 10}" width="12" height="12" fill="#2e9d4f"/><text x="32" y="${ly}">within the floor</text>`);
  parts.push(`<rect x="150" y="${ly - 10}" width="12" height="12" fill="#d0453a"/><text x="166" y="${ly}">above the floor</text>`);
  parts.push(`<rect x="284" y="${ly - 10}" width="12" height="12" fill="#8899aa"/><text x="300" y="${ly}">no floor</text>`);
  parts.push(`<line x1="384" y1="${ly - 11}" x2="384" y2="${ly + 3}" stroke="#000" stroke-width="2.5"/><text x="392" y="${ly}">floor from the issues; dashed line = parity</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

export function writeFileSafe(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
}
