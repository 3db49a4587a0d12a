/**
 * End-to-end scenarios over one link, each tool measured run by run, pairs interleaved in the same run (the order
 * alternates between runs so neither tool always finds the page cache warmer):
 *
 *  company cycle (per run, on a fresh copy SRC of the generated company A):
 *    seed       empty branch folder <- SRC                      snapferry pull | rsync push | tar pipeline
 *    delta      mutateCompany(SRC) then the same command again   snapferry | rsync
 *    delta-2    mutateCompany(SRC, 3) then again (a second day)  snapferry | rsync
 *    unchanged  the same command once more, nothing changed (x3)  snapferry | rsync
 *    verify     (loopback only) after damage: verify --deep vs cat of the same files
 *    repair     damage the branch copy (a 4 KiB page flipped with size and mtime kept, a large file truncated by
 *               1 KiB, a small file deleted, a stray file added), then snapferry repair | rsync -c
 *  small-seed   makeSmallFiles(N) seeded into an empty folder    snapferry | rsync
 *  fanout       one serve process: 1 pull, then N concurrent pulls; the server's whole-life CPU seconds
 *
 * After every transfer the branch folder is checked against the source (paths, sizes, contents, link targets): a run
 * that leaves a wrong copy is marked failed, not timed.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { makeCompany, mutateCompany, makeSmallFiles } from '../src/gen/company.js';
import { Options, Budget, log, freePort, lastLine, ScenarioName, ToolName, Trash } from './util.js';
import { Results, Sample } from './report.js';
import { Link } from './netns.js';
import { RsyncDaemon, rsyncPush, tarPipeline, Transfer } from './peers.js';
import * as sf from './snapferry.js';
import { runTimed, failure, Server } from './measure.js';

const exec = promisify(execFile);

// ---------------------------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------------------------

/** Generated inputs, made once per bench and shared by every tool and link. */
export class DataCache {
  private readonly made = new Map<string, Promise<string>>();
  constructor(private readonly dir: string) {}

  company(sizeMiB: number): Promise<string> {
    const key = `company-${sizeMiB}`;
    let p = this.made.get(key);
    if (!p) {
      p = (async () => {
        const d = path.join(this.dir, key);
        const t0 = performance.now();
        const r = await makeCompany(d, sizeMiB, 1);
        log(`generated company ${sizeMiB} MiB: ${r.files} files, ${(r.bytes / 1048576).toFixed(0)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
        return d;
      })();
      this.made.set(key, p);
    }
    return p;
  }

  small(count: number): Promise<string> {
    const key = `small-${count}`;
    let p = this.made.get(key);
    if (!p) {
      p = (async () => {
        const d = path.join(this.dir, key);
        const t0 = performance.now();
        const r = await makeSmallFiles(d, count, 3);
        log(`generated ${r.files} small files, ${(r.bytes / 1048576).toFixed(0)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
        return d;
      })();
      this.made.set(key, p);
    }
    return p;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Tree checks and damage
// ---------------------------------------------------------------------------------------------------------------

const STATE_DIR = '.snapferry';

/** path -> size of regular files (symlinks as 'L'), without snapferry's own state folder at the top. */
function listing(root: string): Map<string, number | string> {
  const out = new Map<string, number | string>();
  const rec = (rel: string): void => {
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(path.join(root, rel), { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of ents) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (!rel && e.name === STATE_DIR) continue;
      if (e.isDirectory()) {
        out.set(`${p}/`, 'D');
        rec(p);
      } else if (e.isSymbolicLink()) out.set(p, 'L');
      else if (e.isFile()) out.set(p, fs.statSync(path.join(root, p)).size);
    }
  };
  rec('');
  return out;
}

/** The first offset where two files of the same size differ, or -1 (read in 1 MiB blocks; not timed). */
function firstDifference(a: string, b: string): number {
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  try {
    const ba = Buffer.allocUnsafe(1 << 20);
    const bb = Buffer.allocUnsafe(1 << 20);
    for (let pos = 0; ; ) {
      const na = fs.readSync(fa, ba, 0, ba.length, pos);
      const nb = fs.readSync(fb, bb, 0, bb.length, pos);
      if (na !== nb) return pos + Math.min(na, nb);
      if (na === 0) return -1;
      if (!ba.subarray(0, na).equals(bb.subarray(0, nb))) {
        let i = 0;
        while (ba[i] === bb[i]) i++;
        return pos + i;
      }
      pos += na;
    }
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

/**
 * undefined when dst has the same paths, sizes, file contents and link targets as src, else what differs first.
 * Contents too: a delta is mostly 4 KiB pages rewritten in place, which change no size, so a copy that missed them
 * had the source's paths and sizes and was timed as a good one.
 */
export function sameTree(src: string, dst: string): string | undefined {
  if (!fs.existsSync(dst)) return 'branch folder missing';
  const a = listing(src);
  const b = listing(dst);
  for (const [p, v] of a) {
    const w = b.get(p);
    if (w === undefined) return `missing ${p}`;
    if (w !== v) return `${p}: size ${w}, expected ${v}`;
  }
  if (b.size !== a.size) for (const p of b.keys()) if (!a.has(p)) return `unexpected ${p}`;
  for (const [p, v] of a) {
    if (typeof v === 'number') {
      const at = firstDifference(path.join(src, p), path.join(dst, p));
      if (at >= 0) return `${p}: content differs at byte ${at}`;
    } else if (v === 'L' && fs.readlinkSync(path.join(src, p)) !== fs.readlinkSync(path.join(dst, p))) return `${p}: link target differs`;
  }
  return undefined;
}

interface Damage {
  flipped: { file: string; offset: number };
  truncated: string;
  deleted: string;
  stray: string;
}

function largestFiles(dir: string): string[] {
  return [...listing(dir)].filter(([, v]) => typeof v === 'number').sort((x, y) => (y[1] as number) - (x[1] as number)).map(([p]) => p);
}

/** Damages a branch copy the way issue 4 describes. Deterministic: the same damage for every tool. */
function damage(dir: string, run: number): Damage {
  const files = largestFiles(dir);
  const big = files[0]!;
  const second = files[1]!;
  // 1. bit rot: a 4 KiB page flipped in the middle of the largest file, size and mtime kept
  const fp = path.join(dir, big);
  const st = fs.statSync(fp, { bigint: true });
  const offset = Math.floor(Number(st.size) / 2 / 4096) * 4096;
  const fd = fs.openSync(fp, 'r+');
  const page = Buffer.alloc(4096);
  fs.readSync(fd, page, 0, 4096, offset);
  for (let i = 0; i < page.length; i++) page[i] = page[i]! ^ 0xff;
  fs.writeSync(fd, page, 0, 4096, offset);
  fs.closeSync(fd);
  // Put back to the very microsecond (a Date would cut it to the millisecond: verify reports that as a change). libuv
  // truncates to the microsecond, and seconds as a double are ~0.24 us coarse: ns / 1e9 could land just below and lose
  // a whole microsecond, which with the pull's own truncation went past verify's 2 us (two runs counted the flipped
  // file's mtime as changed too). Half a microsecond up, truncated, is the microsecond itself.
  const atUs = (ns: bigint): number => (Number(ns / 1000n) + 0.5) / 1e6;
  fs.utimesSync(fp, atUs(st.atimeNs), atUs(st.mtimeNs));
  // 2. a large file truncated by 1 KiB
  const tp = path.join(dir, second);
  fs.truncateSync(tp, fs.statSync(tp).size - 1024);
  // 3. one small file deleted (the smallest-named under masters/ or the smallest file)
  const small = files.filter((f) => f.includes('/')).sort()[0] ?? files[files.length - 1]!;
  fs.rmSync(path.join(dir, small));
  // 4. a stray file
  const stray = `stray-${run}.tmp`;
  fs.writeFileSync(path.join(dir, stray), Buffer.alloc(10 << 10, 0x41));
  return { flipped: { file: big, offset }, truncated: second, deleted: small, stray };
}

/** undefined when the damage is undone (tree equal, flipped page equal to the source's). */
function repaired(src: string, dst: string, d: Damage): string | undefined {
  const t = sameTree(src, dst);
  if (t) return t;
  const read = (root: string): Buffer => {
    const fd = fs.openSync(path.join(root, d.flipped.file), 'r');
    const b = Buffer.alloc(4096);
    fs.readSync(fd, b, 0, 4096, d.flipped.offset);
    fs.closeSync(fd);
    return b;
  };
  if (!read(src).equals(read(dst))) return `flipped page in ${d.flipped.file} not repaired`;
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Recording
// ---------------------------------------------------------------------------------------------------------------

/** A sample with a time only (or a failure): nothing travelled or was measured per side. */
function timeOnly(run: number, ok: boolean, seconds: number, note?: string): Sample {
  return { run, ok, note, seconds, bytesOnWire: null, srcCpu: null, srcRssKiB: null, dstCpu: null, dstRssKiB: null };
}

/**
 * The site's indexing, as waited for by sf.waitIndexed: its time, and the serving process's CPU seconds since
 * `cpuBefore` (its whole life for a first index: reading, chunking and compressing the company into its store).
 */
function indexSample(run: number, w: { ok: boolean; seconds: number }, server: Server, cpuBefore: number): Sample & { srcCpu: number | null } {
  const now = server.totals()?.cpuSeconds;
  return { ...timeOnly(run, w.ok, w.seconds, w.ok ? undefined : 'the site did not say it had indexed'), srcCpu: now === undefined ? null : now - cpuBefore };
}

/** A pull's sample with the site's index added: its time and its CPU (the serving side's). */
function plusIndex(s: Sample, index: Sample): Sample {
  return { ...s, seconds: s.seconds + index.seconds, srcCpu: s.srcCpu === null || index.srcCpu === null ? null : s.srcCpu + index.srcCpu };
}

function toSample(run: number, t: Transfer, check?: string): Sample {
  const ok = t.ok && !check;
  return {
    run,
    ok,
    note: t.note ?? (check ? `wrong copy: ${check}` : undefined),
    seconds: t.seconds,
    bytesOnWire: t.bytesOnWire,
    srcCpu: Number.isFinite(t.src.cpuSeconds) ? t.src.cpuSeconds : null,
    srcRssKiB: t.src.peakRssKiB || null,
    dstCpu: Number.isFinite(t.dst.cpuSeconds) ? t.dst.cpuSeconds : null,
    dstRssKiB: t.dst.peakRssKiB || null,
    extra: t.extra,
  };
}

export interface E2EContext {
  opts: Options;
  results: Results;
  budget: Budget;
  data: DataCache;
  /** Work folder for this bench (temp). */
  work: string;
  /** snapferry site secret (undefined: snapferry not available). */
  secret?: string;
  tarKey: string;
  /** snapferry commands found missing ('repair', 'verify'): skipped from then on. */
  sfMissing: Set<string>;
  /** Finished copies go here (see Trash: deleting them between runs would slow the next run's file creation). */
  trash: Trash;
}

const MiB = 1 << 20;
const GiB = 1 << 30;

const has = (ctx: E2EContext, s: ScenarioName): boolean => ctx.opts.only.has(s);
const tool = (ctx: E2EContext, t: ToolName): boolean => ctx.opts.tools.has(t) && (t !== 'snapferry' || ctx.secret !== undefined);

class Ports {
  private next: number;
  constructor(private readonly link: Link) {
    this.next = 7100;
  }
  async get(): Promise<number> {
    return this.link.name === 'loopback' ? freePort() : this.next++;
  }
}

/** Runs the selected e2e scenarios over one link. */
export async function runLink(ctx: E2EContext, link: Link): Promise<void> {
  const sizeMiB = link.name === 'loopback' ? ctx.opts.sizeMiB : ctx.opts.shapedSizeMiB;
  const wantCycle = (['seed', 'delta', 'unchanged', 'verify', 'repair'] as const).some((s) => has(ctx, s));
  const ports = new Ports(link);
  const dir = path.join(ctx.work, link.name);
  fs.mkdirSync(dir, { recursive: true });
  try {
    if (wantCycle && (tool(ctx, 'snapferry') || tool(ctx, 'rsync') || tool(ctx, 'tar'))) {
      for (let run = 1; run <= ctx.opts.runs; run++) {
        if (ctx.budget.spent) {
          ctx.results.note(`time budget spent: company cycle run ${run} on ${link.name} skipped`);
          break;
        }
        await guarded(ctx, `company cycle on ${link.name}, run ${run}`, () => companyCycle(ctx, link, dir, sizeMiB, run, ports));
      }
    }
    if (has(ctx, 'small') && (tool(ctx, 'snapferry') || tool(ctx, 'rsync'))) {
      for (let run = 1; run <= ctx.opts.runs; run++) {
        if (ctx.budget.spent) {
          ctx.results.note(`time budget spent: small-files run ${run} on ${link.name} skipped`);
          break;
        }
        await guarded(ctx, `small files on ${link.name}, run ${run}`, () => smallFiles(ctx, link, dir, run, ports));
      }
    }
    if (has(ctx, 'memory') && link.name === 'loopback') {
      if (!tool(ctx, 'snapferry')) ctx.results.note('memory: needs snapferry, skipped');
      else if (ctx.budget.spent) ctx.results.note('time budget spent: memory scaling skipped');
      else await guarded(ctx, 'memory scaling', () => memoryScale(ctx, link, dir, ports));
    }
    if (has(ctx, 'follow') && link.name === 'loopback') {
      if (!tool(ctx, 'snapferry')) ctx.results.note('follow: needs snapferry, skipped');
      else if (ctx.budget.spent) ctx.results.note('time budget spent: follow skipped');
      else await guarded(ctx, 'follow latency', () => followLatency(ctx, link, dir, ports));
    }
    if (has(ctx, 'fanout')) {
      if (!tool(ctx, 'snapferry')) ctx.results.note('fanout: needs snapferry, skipped');
      else {
        const fanSize = link.name === 'loopback' ? ctx.opts.sizeMiB : ctx.opts.shapedFanoutSizeMiB;
        for (let run = 1; run <= ctx.opts.runs; run++) {
          if (ctx.budget.spent) {
            ctx.results.note(`time budget spent: fan-out run ${run} on ${link.name} skipped`);
            break;
          }
          await guarded(ctx, `fan-out on ${link.name}, run ${run}`, () => fanout(ctx, link, dir, fanSize, run, ports));
        }
      }
    }
  } finally {
    await ctx.trash.put(dir);
  }
}

/** Runs a step; an unexpected error becomes a note instead of ending the bench. */
async function guarded(ctx: E2EContext, what: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    const msg = `${what} failed: ${lastLine((err as Error).message ?? String(err))}`;
    ctx.results.note(msg);
    log(msg);
  }
}

async function copyTree(ctx: E2EContext, from: string, to: string): Promise<void> {
  await ctx.trash.put(to);
  await exec('cp', ['-a', from, to], { maxBuffer: 1 << 20 });
}

/** Unchanged re-pulls measured per run (see companyCycle). */
const UNCHANGED_REPEATS = 3;

/** Runs the steps of one run in alternating order. */
async function pair(run: number, steps: Array<(() => Promise<void>) | false>): Promise<void> {
  const list = steps.filter((s): s is () => Promise<void> => s !== false);
  if (run % 2 === 0) list.reverse();
  for (const s of list) {
    // Each tool starts with nothing left to write back: otherwise a step pays for the writeback of the one before it
    // (a seed's 1 GiB of dirty pages slowed the first delta after it 1.5-2.5x here), and in use a delta comes hours
    // after a seed, not seconds. Not timed.
    await exec('sync', []);
    await s();
  }
}

async function companyCycle(ctx: E2EContext, link: Link, dir: string, sizeMiB: number, run: number, ports: Ports): Promise<void> {
  const { results: R, opts } = ctx;
  const T = opts.stepTimeoutMs;
  const A = await ctx.data.company(sizeMiB);
  const SRC = path.join(dir, 'src');
  await ctx.trash.ensureFree(5 * sizeMiB * MiB + 2 * GiB);
  await copyTree(ctx, A, SRC);
  const sfDst = path.join(dir, `sf-r${run}`);
  const tarDst = path.join(dir, `tar-r${run}`);
  const sub = `co-r${run}`;
  const useSf = tool(ctx, 'snapferry');
  const useRs = tool(ctx, 'rsync');
  let serve: { server: Server; url: string } | undefined;
  /** Why serve did not start: each snapferry step of this run is then recorded as failed with it. */
  let serveError: string | undefined;
  let daemon: RsyncDaemon | undefined;
  const L = link.name;
  log(`${L}: company ${sizeMiB} MiB, run ${run}/${opts.runs}`);
  try {
    if (useSf) {
      try {
        serve = await sf.startServe({ co: SRC }, ctx.secret!, link, await ports.get(), 60_000);
        if (serve.server.readySeconds > 1) R.note(`snapferry serve took ${serve.server.readySeconds.toFixed(1)} s to listen (not in the seed's wall time or CPU: see the site-index and +index rows)`);
      } catch (err) {
        serveError = lastLine((err as Error).message);
      }
    }
    if (useRs) daemon = await RsyncDaemon.start(dir, path.join(dir, 'rsync-root'), link, await ports.get(), 30_000);

    // A site indexes its company in the background (at start, then as files change), the way it runs in an office:
    // the branch's pull is timed from its request, and the site's indexing is recorded beside it ("site-index") and
    // added to the pull in the "+index" rows, so both readings are in the table.
    // The site's peak while it indexed before the seed (each pull's window resets the high-water mark).
    let indexPeakKiB = 0;
    // CPU seconds of the site so far: what a re-index after a change is counted from (taken before the change).
    const siteCpu = (): number => serve?.server.totals()?.cpuSeconds ?? 0;
    const sfIndex = async (scenario: 'seed' | 'delta' | 'delta-2', after: number, cpuBefore: number): Promise<Sample | undefined> => {
      if (!serve) return undefined;
      const w = await sf.waitIndexed(serve.server, after, T);
      if (scenario === 'seed') indexPeakKiB = serve.server.totals()?.hwmKiB ?? 0;
      const sample = indexSample(run, w, serve.server, cpuBefore);
      R.add(`site-index-${scenario}`, L, 'snapferry', sample);
      if (w.ok) log(`  snapferry site indexed generation ${w.generation} in ${w.seconds.toFixed(2)} s, ${sample.srcCpu?.toFixed(2)} s CPU`);
      return w.ok ? sample : undefined;
    };
    const withIndex = (scenario: 'seed' | 'delta', index: Sample | undefined): void => {
      const s = R.get(scenario, L, 'snapferry').find((x) => x.run === run);
      if (!s || index === undefined) return;
      R.add(`${scenario}+index`, L, 'snapferry', plusIndex(s, index));
    };

    const sfStep = async (scenario: string, record: boolean, cmd: 'pull' | 'repair' = 'pull', check?: () => string | undefined, rep?: number): Promise<sf.PullJson | undefined> => {
      if (!serve) {
        // Not left out: rsync's samples of this run would then be compared with snapferry's other runs only.
        if (serveError !== undefined && record) R.add(scenario, L, 'snapferry', { ...timeOnly(run, false, NaN, serveError), rep });
        return undefined;
      }
      if (cmd === 'repair' && ctx.sfMissing.has('repair')) return undefined;
      const t = await sf.pull(serve.server, serve.url, 'co', sfDst, ctx.secret!, link, T, cmd);
      if (t.unknownCommand) {
        ctx.sfMissing.add(cmd);
        R.note(`snapferry ${cmd}: the CLI does not have this command yet; ${scenario} skipped for snapferry`);
        return undefined;
      }
      const c = t.ok ? (check ?? (() => sameTree(SRC, sfDst)))() : undefined;
      const sample = { ...toSample(run, t, c), rep };
      // The seed's site peak covers its first index too (the floor is the process's, not the pull's).
      if (scenario === 'seed' && sample.srcRssKiB !== null) sample.srcRssKiB = Math.max(sample.srcRssKiB ?? 0, indexPeakKiB);
      if (record) R.add(scenario, L, 'snapferry', sample);
      if (!t.ok) log(`  snapferry ${scenario}: ${t.note}`);
      else log(`  snapferry ${scenario}: ${t.seconds.toFixed(2)} s, ${t.bytesOnWire} B on wire${c ? `, WRONG COPY: ${c}` : ''}`);
      return t.json;
    };
    const rsStep = async (scenario: string, record: boolean, checksum = false, check?: () => string | undefined, rep?: number): Promise<void> => {
      if (!daemon) return;
      const t = await rsyncPush(daemon, SRC, sub, link, { checksum, timeoutMs: T });
      const c = t.ok ? (check ?? (() => sameTree(SRC, daemon!.dir(sub))))() : undefined;
      if (record) R.add(scenario, L, 'rsync', { ...toSample(run, t, c), rep });
      if (!t.ok) log(`  rsync ${scenario}: ${t.note}`);
      else log(`  rsync ${scenario}: ${t.seconds.toFixed(2)} s, ${t.bytesOnWire} B on wire${c ? `, WRONG COPY: ${c}` : ''}`);
    };
    const tarStep = async (): Promise<void> => {
      const t = await tarPipeline(SRC, tarDst, ctx.tarKey, link, await ports.get(), T);
      const c = t.ok ? sameTree(SRC, tarDst) : undefined;
      R.add('seed', L, 'tar', toSample(run, t, c));
      log(`  tar pipeline seed: ${t.ok ? `${t.seconds.toFixed(2)} s, ${t.bytesOnWire} B on wire` : t.note}`);
      await ctx.trash.put(tarDst);
    };

    // seed (always recorded when it runs: the repair and delta checks compare with it)
    let seedJson: sf.PullJson | undefined;
    const seedIndex = await sfIndex('seed', 0, 0);
    await pair(run, [
      async () => {
        seedJson = await sfStep('seed', true);
      },
      () => rsStep('seed', true),
      has(ctx, 'seed') && tool(ctx, 'tar') && tarStep,
    ]);
    withIndex('seed', seedIndex);

    // delta
    if (has(ctx, 'delta')) {
      if (ctx.budget.spent) return R.note(`time budget spent: delta on ${L} run ${run} skipped`);
      const t0 = performance.now();
      const cpuBeforeChange = siteCpu();
      const m = await mutateCompany(SRC, 2);
      log(`  mutated: ${m.bytesChanged} B of pages, +${m.added.length} -${m.deleted.length} files, ${m.renamed.length} renamed (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
      let deltaJson: sf.PullJson | undefined;
      const deltaIndex = await sfIndex('delta', Number(seedJson?.generation ?? 1), cpuBeforeChange);
      await pair(run, [
        async () => {
          deltaJson = await sfStep('delta', true);
        },
        () => rsStep('delta', true),
      ]);
      withIndex('delta', deltaIndex);
      if (seedJson && deltaJson && String(seedJson.generation) === String(deltaJson.generation))
        R.note(`snapferry delta on ${L}: the server offered the same generation after the company changed (${deltaJson.generation})`);

      // A second working day: the branch now holds the files the first delta replaced (its spare generation), which
      // this delta rewrites instead of copying the current versions whole. rsync works as on the first day.
      if (ctx.budget.spent) return R.note(`time budget spent: delta-2 on ${L} run ${run} skipped`);
      const cpuBeforeChange2 = siteCpu();
      const m2 = await mutateCompany(SRC, 3);
      log(`  mutated again: ${m2.bytesChanged} B of pages, +${m2.added.length} -${m2.deleted.length} files, ${m2.renamed.length} renamed`);
      await sfIndex('delta-2', Number(deltaJson?.generation ?? 2), cpuBeforeChange2);
      await pair(run, [() => sfStep('delta-2', true).then(() => undefined), () => rsStep('delta-2', true)]);
    }

    // unchanged: three pairs a run, each recorded and paired on its own. Either tool takes ~0.15 s here, and the
    // spread of a process's start on a shared machine is as large as that (0.16-0.36 s by hand for the same pull):
    // one pair a run let a slow minute decide the ratio.
    if (has(ctx, 'unchanged')) {
      for (let rep = 0; rep < UNCHANGED_REPEATS; rep++) {
        if (ctx.budget.spent) return R.note(`time budget spent: unchanged on ${L} run ${run} skipped`);
        // pair() takes the turn's number for its order only: run + rep alternates who goes first turn by turn (the
        // samples keep their run and carry rep).
        await pair(run + rep, [
          () => sfStep('unchanged', true, 'pull', undefined, rep).then(() => undefined),
          () => rsStep('unchanged', true, false, undefined, rep),
        ]);
      }
    }

    // verify and repair
    if (has(ctx, 'verify') || has(ctx, 'repair')) {
      if (ctx.budget.spent) return R.note(`time budget spent: verify/repair on ${L} run ${run} skipped`);
      const dSf = serve && fs.existsSync(sfDst) ? damage(sfDst, run) : undefined;
      const dRs = daemon && fs.existsSync(daemon.dir(sub)) ? damage(daemon.dir(sub), run) : undefined;
      if (has(ctx, 'verify') && dSf && L === 'loopback') await verifyStep(ctx, sfDst, run, false, dSf);
      if (has(ctx, 'repair')) {
        await pair(run, [
          !!dSf && (() => sfStep('repair', true, 'repair', () => repaired(SRC, sfDst, dSf!)).then(() => undefined)),
          !!dRs && (() => rsStep('repair', true, true, () => repaired(SRC, daemon!.dir(sub), dRs!))),
        ]);
      }
      // Last in the cycle: dropping the page cache would slow every later step of both tools.
      if (has(ctx, 'verify') && dSf && L === 'loopback' && fs.existsSync(sfDst)) {
        if (canDropCaches()) await verifyStep(ctx, sfDst, run, true, dSf);
        else if (run === 1) R.note('verify-cold skipped: dropping the page cache needs root');
      }
    }
  } finally {
    await serve?.server.stop();
    await daemon?.stop();
    for (const d of [sfDst, tarDst, ...(daemon ? [daemon.dir(sub)] : [])]) await ctx.trash.put(d);
  }
}

/** verify --deep against cat over the same files (read-bound; no link involved). */
async function verifyStep(ctx: E2EContext, dst: string, run: number, cold = false, d?: Damage): Promise<void> {
  const R = ctx.results;
  const T = ctx.opts.stepTimeoutMs;
  const scenario = cold ? 'verify-cold' : 'verify';
  // Cold: both read from the disk, the case the issue calls read-bound; hot: both read the page cache.
  const before = async () => {
    if (cold) await dropCaches();
  };
  // The cold check comes after repair, which leaves nothing damaged; without repair the damage is still there.
  // Four damaged paths, and the folder the deleted file was in (its mtime changed with it; the root's is not the copy's).
  const expected = cold && has(ctx, 'repair') ? 0 : d?.deleted.includes('/') ? 5 : 4;
  await pair(run, [
    async () => {
      if (ctx.sfMissing.has('verify')) return;
      await before();
      const v = await sf.verifyDeep(dst, T);
      if (v.unknownCommand) {
        ctx.sfMissing.add('verify');
        R.note('snapferry verify: the CLI does not have this command yet; verify skipped');
        return;
      }
      // exit 1 = damaged: expected here (the copy was just damaged)
      const bad = v.r.timedOut || (v.r.code !== 0 && v.r.code !== 1) || !v.json;
      const found = v.json ? v.json.damaged.length : 0;
      // Each problem is named when the count is off, so that the run says which (one path can have two problems).
      const problems = v.json ? v.json.damaged.map((d) => `${d.path} ${d.problem}`).join(', ') : '';
      const note = bad ? `snapferry verify: ${failure(v.r) ?? 'no JSON'}` : found !== expected ? `verify found ${found} problems, ${expected} expected: ${problems}` : undefined;
      R.add(scenario, 'loopback', 'snapferry', {
        run,
        ok: !bad,
        note,
        seconds: v.r.seconds,
        bytesOnWire: null,
        srcCpu: null,
        srcRssKiB: null,
        dstCpu: v.r.cpuSeconds,
        dstRssKiB: v.r.peakRssKiB,
        extra: { damagedFound: found, bytesRead: v.json?.bytesRead ?? null },
      });
      log(`  snapferry ${scenario} --deep: ${bad ? note : `${v.r.seconds.toFixed(2)} s, ${found} damaged paths`}`);
    },
    async () => {
      await before();
      const r = await runTimed('bash', ['-c', `find . -path ./${STATE_DIR} -prune -o -type f -exec cat {} + > /dev/null`], { cwd: dst, timeoutMs: T });
      const err = failure(r);
      R.add(scenario, 'loopback', 'cat', { run, ok: !err, note: err, seconds: r.seconds, bytesOnWire: null, srcCpu: null, srcRssKiB: null, dstCpu: r.cpuSeconds, dstRssKiB: r.peakRssKiB });
      log(`  cat (read all files${cold ? ', cold cache' : ''}): ${r.seconds.toFixed(2)} s`);
    },
  ]);
}

/** Writes dirty pages out and drops the page cache (root only). */
async function dropCaches(): Promise<void> {
  await exec('sync', []);
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

/** Whether this process may drop the page cache (cold-cache verify needs it). */
function canDropCaches(): boolean {
  try {
    fs.accessSync('/proc/sys/vm/drop_caches', fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Time to create an empty file in a new folder here, µs (ext4 makes this slow for a while after mass deletions,
 * including other people's on a shared machine; shown so a reader can tell the filesystem was slow).
 */
async function createProbe(ctx: E2EContext, dir: string): Promise<number> {
  const d = path.join(dir, `probe-${process.hrtime.bigint()}`);
  fs.mkdirSync(d, { recursive: true });
  const n = 400;
  const t0 = performance.now();
  for (let k = 0; k < n; k++) fs.closeSync(fs.openSync(path.join(d, `p${k}`), 'w'));
  const us = ((performance.now() - t0) / n) * 1000;
  await ctx.trash.put(d);
  return us;
}

const SLOW_CREATE_US = 200;

async function smallFiles(ctx: E2EContext, link: Link, dir: string, run: number, ports: Ports): Promise<void> {
  const { results: R, opts } = ctx;
  const T = opts.stepTimeoutMs;
  const SRC = await ctx.data.small(opts.smallFiles);
  const L = link.name;
  const probe = await createProbe(ctx, dir);
  if (probe > SLOW_CREATE_US)
    R.note(`small files ${L} run ${run}: file creation was slow at the start (${probe.toFixed(0)} us per empty file; ext4 after mass deletions), times include it`);
  const withProbe = (t: Transfer): Transfer => ({ ...t, extra: { ...(t.extra ?? {}), createProbeUs: Math.round(probe) } });
  const sfDst = path.join(dir, `small-sf-r${run}`);
  const sub = `small-r${run}`;
  let serve: { server: Server; url: string } | undefined;
  let daemon: RsyncDaemon | undefined;
  log(`${L}: ${opts.smallFiles} small files, run ${run}/${opts.runs}`);
  try {
    await pair(run, [
      tool(ctx, 'snapferry') &&
        (async () => {
          try {
            serve = await sf.startServe({ small: SRC }, ctx.secret!, link, await ports.get(), 60_000);
          } catch (err) {
            R.add('small-seed', L, 'snapferry', timeOnly(run, false, NaN, (err as Error).message));
            return;
          }
          // As for the company: the site indexes in the background; the pull is timed from the branch's request.
          const w = await sf.waitIndexed(serve.server, 0, T);
          const index = indexSample(run, w, serve.server, 0);
          R.add('site-index-small', L, 'snapferry', index);
          const t = withProbe(await sf.pull(serve.server, serve.url, 'small', sfDst, ctx.secret!, link, T));
          const c = t.ok ? sameTree(SRC, sfDst) : undefined;
          R.add('small-seed', L, 'snapferry', toSample(run, t, c));
          if (w.ok) R.add('small-seed+index', L, 'snapferry', plusIndex(toSample(run, t, c), index));
          log(`  snapferry small-seed: ${t.ok ? `${t.seconds.toFixed(2)} s${c ? `, WRONG COPY: ${c}` : ''}` : t.note}`);
        }),
      tool(ctx, 'rsync') &&
        (async () => {
          daemon = await RsyncDaemon.start(dir, path.join(dir, 'rsync-small'), link, await ports.get(), 30_000);
          const t = withProbe(await rsyncPush(daemon, SRC, sub, link, { timeoutMs: T }));
          const c = t.ok ? sameTree(SRC, daemon.dir(sub)) : undefined;
          R.add('small-seed', L, 'rsync', toSample(run, t, c));
          log(`  rsync small-seed: ${t.ok ? `${t.seconds.toFixed(2)} s${c ? `, WRONG COPY: ${c}` : ''}` : t.note}`);
        }),
    ]);
  } finally {
    await serve?.server.stop();
    await daemon?.stop();
    for (const d of [sfDst, path.join(dir, 'rsync-small')]) await ctx.trash.put(d);
  }
}

/**
 * Peak RSS against company size: a seed of the company and of one 4x its size (4 GiB in full mode), `--runs` times
 * each, the two sizes in alternating order and paired by run. (One run each let a single sample decide the ratio: the
 * same site code peaked at 146, 155 and 149 MiB at 4 GiB in three runs.) The serving side's figure is the whole
 * process's peak, its first index included; the branch's is the pull's.
 */
async function memoryScale(ctx: E2EContext, link: Link, dir: string, ports: Ports): Promise<void> {
  const { opts } = ctx;
  for (let run = 1; run <= opts.runs; run++) {
    if (ctx.budget.spent) return ctx.results.note(`time budget spent: memory scaling run ${run} skipped`);
    const sizes: Array<readonly ['memory-1x' | 'memory-4x', number]> = [
      ['memory-1x', opts.sizeMiB],
      ['memory-4x', opts.sizeMiB * 4],
    ];
    if (run % 2 === 0) sizes.reverse();
    for (const [scenario, size] of sizes) await memorySeed(ctx, link, dir, ports, scenario, size, run);
  }
}

/** One seed of a `size` MiB company from a fresh serve process, recorded as `scenario` (memoryScale). */
async function memorySeed(ctx: E2EContext, link: Link, dir: string, ports: Ports, scenario: string, size: number, run: number): Promise<void> {
  const { results: R, opts } = ctx;
  const T = opts.stepTimeoutMs;
  const L = link.name;
  await ctx.trash.ensureFree(2 * size * MiB + 2 * GiB);
  const SRC = await ctx.data.company(size);
  const dst = path.join(dir, `mem-${size}`);
  let serve: { server: Server; url: string } | undefined;
  log(`${L}: memory, seed of a ${size} MiB company, run ${run}/${opts.runs}`);
  try {
    serve = await sf.startServe({ co: SRC }, ctx.secret!, link, await ports.get(), 120_000);
    await sf.waitIndexed(serve.server, 0, T);
    // The first index's peak, read now: the pull's window below resets the high-water mark.
    const indexed = serve.server.totals();
    const t = await sf.pull(serve.server, serve.url, 'co', dst, ctx.secret!, link, T);
    const tot = serve.server.totals();
    const sample = toSample(run, t);
    sample.srcRssKiB = Math.max(indexed?.hwmKiB ?? 0, tot?.hwmKiB ?? 0, sample.srcRssKiB ?? 0);
    sample.extra = { ...(sample.extra ?? {}), companyMiB: size };
    R.add(scenario, L, 'snapferry', sample);
    log(`  ${size} MiB: ${t.ok ? `${t.seconds.toFixed(2)} s, peak RSS site ${((sample.srcRssKiB ?? 0) / 1024).toFixed(0)} MiB, branch ${((sample.dstRssKiB ?? 0) / 1024).toFixed(0)} MiB` : t.note}`);
  } catch (err) {
    R.add(scenario, L, 'snapferry', timeOnly(run, false, NaN, lastLine((err as Error).message)));
  } finally {
    await serve?.server.stop();
    await ctx.trash.put(dst);
  }
}

/** How many edits the follow scenario times (each bounded by the step timeout). */
const FOLLOW_EDITS = 5;

/**
 * Follow latency: a branch runs `pull --follow`; the site's company is edited the way an accounting application
 * writes (one 4 KiB page rewritten in place in the largest file); each sample is the time from the edit to the
 * branch's summary line for the generation that carries it (issue 3: within 5 s, settle delay included).
 */
async function followLatency(ctx: E2EContext, link: Link, dir: string, ports: Ports): Promise<void> {
  const { results: R, opts } = ctx;
  const T = opts.stepTimeoutMs;
  const L = link.name;
  const SRC = path.join(dir, 'follow-src');
  const dst = path.join(dir, 'follow-dst');
  await ctx.trash.ensureFree(3 * opts.sizeMiB * MiB + 2 * GiB);
  await copyTree(ctx, await ctx.data.company(opts.sizeMiB), SRC);
  let serve: { server: Server; url: string } | undefined;
  let follower: Server | undefined;
  log(`${L}: follow, ${FOLLOW_EDITS} edits of a ${opts.sizeMiB} MiB company`);
  try {
    serve = await sf.startServe({ co: SRC }, ctx.secret!, link, await ports.get(), 60_000);
    await sf.waitIndexed(serve.server, 0, T);
    follower = await sf.startFollow(serve.url, 'co', dst, ctx.secret!, link, T);
    const largest = fs
      .readdirSync(SRC)
      .map((n) => path.join(SRC, n))
      .filter((p) => fs.statSync(p).isFile())
      .sort((a, b) => fs.statSync(b).size - fs.statSync(a).size)[0]!;
    const size = fs.statSync(largest).size;
    const lines = () => follower!.stdout.split('\n').filter((l) => l.startsWith('{')).length;
    for (let k = 1; k <= FOLLOW_EDITS; k++) {
      const before = lines();
      const page = Buffer.alloc(4096, 0x41 + k);
      const fd = fs.openSync(largest, 'r+');
      const t0 = performance.now();
      fs.writeSync(fd, page, 0, page.length, Math.floor((size / (FOLLOW_EDITS + 1)) * k / 4096) * 4096);
      fs.closeSync(fd);
      while (lines() === before && follower.alive && performance.now() - t0 < Math.min(T, 60_000)) await new Promise((r) => setTimeout(r, 5));
      const seconds = (performance.now() - t0) / 1000;
      const ok = lines() > before;
      R.add('follow', L, 'snapferry', timeOnly(k, ok, ok ? seconds : NaN, ok ? undefined : follower.alive ? 'no new generation within 60 s' : 'pull --follow ended'));
      log(`  edit ${k}: ${ok ? `applied at the branch after ${seconds.toFixed(2)} s` : 'not applied'}`);
      if (!ok) break;
      await new Promise((r) => setTimeout(r, 300));
    }
    const diff = sameTree(SRC, dst);
    if (diff) R.note(`follow: the branch differs from the site after the last edit: ${diff}`);
  } finally {
    await follower?.stop();
    await serve?.server.stop();
    await ctx.trash.put(dst);
    await ctx.trash.put(SRC);
  }
}

/** One pull, then N concurrent pulls, each from a fresh serve process: the server's whole-life CPU. */
async function fanout(ctx: E2EContext, link: Link, dir: string, sizeMiB: number, run: number, ports: Ports): Promise<void> {
  const { results: R, opts } = ctx;
  const T = opts.stepTimeoutMs;
  const L = link.name;
  const SRC = path.join(dir, 'fan-src');
  await ctx.trash.ensureFree((opts.fanout + 2) * sizeMiB * MiB + 2 * GiB);
  if (!fs.existsSync(SRC)) await copyTree(ctx, await ctx.data.company(sizeMiB), SRC);
  log(`${L}: fan-out 1 and ${opts.fanout} pulls of ${sizeMiB} MiB, run ${run}/${opts.runs}`);
  for (const n of [1, opts.fanout]) {
    const scenario = `fanout-${n}`;
    const dsts = Array.from({ length: n }, (_, i) => path.join(dir, `fan-r${run}-${n}-${i}`));
    let serve: { server: Server; url: string } | undefined;
    try {
      serve = await sf.startServe({ co: SRC }, ctx.secret!, link, await ports.get(), 60_000);
      // The site's first index is the same for 1 and for n pulls: measured apart, so the ratio is of the pulls alone.
      await sf.waitIndexed(serve.server, 0, T);
      const win = serve.server.window();
      const t0 = performance.now();
      const running = dsts.map((d) => sf.startPull(serve!.url, 'co', d, ctx.secret!, link, T));
      const rs = await Promise.all(running.map((x) => x.done));
      const wall = (performance.now() - t0) / 1000;
      const usage = await win.stop(50);
      const whole = serve.server.totals();
      const tot = { cpuSeconds: usage.cpuSeconds, hwmKiB: whole?.hwmKiB ?? usage.peakRssKiB };
      const errs = rs.map((r) => failure(r) ?? (sf.lastJson<sf.PullJson>(r.stdout) ? undefined : 'no JSON')).filter(Boolean);
      const wrong = errs.length ? undefined : dsts.map((d) => sameTree(SRC, d)).find(Boolean);
      const bytes = rs.reduce((a, r) => a + (sf.lastJson<sf.PullJson>(r.stdout)?.bytesOnWire ?? 0), 0);
      R.add(scenario, L, 'snapferry', {
        run,
        ok: errs.length === 0 && !wrong,
        note: errs.length ? `${errs.length}/${n} pulls failed: ${errs[0]}` : wrong ? `wrong copy: ${wrong}` : undefined,
        seconds: wall,
        bytesOnWire: bytes,
        srcCpu: tot?.cpuSeconds ?? null,
        srcRssKiB: tot?.hwmKiB ?? null,
        dstCpu: rs.reduce((a, r) => a + r.cpuSeconds, 0),
        dstRssKiB: Math.max(...rs.map((r) => r.peakRssKiB)),
        extra: { pulls: n, serverReadySeconds: serve.server.readySeconds, serverCpuWithIndex: whole?.cpuSeconds ?? null },
      });
      log(`  ${n} pull(s): ${wall.toFixed(2)} s, server CPU ${tot?.cpuSeconds.toFixed(2)} s${errs.length ? `, ${errs[0]}` : ''}`);
    } catch (err) {
      R.add(scenario, L, 'snapferry', timeOnly(run, false, NaN, lastLine((err as Error).message)));
    } finally {
      await serve?.server.stop();
      for (const d of dsts) await ctx.trash.put(d);
    }
  }
}
