/**
 * snapferry bench: the hot path and the whole transfer, measured against rsync (and a tar|zstd|openssl|nc
 * pipeline) in one run. See bench/README.md.
 *
 *   node dist/bench/main.js [--quick] [--json FILE] [--only SCENARIOS] [--runs N] [--size MIB] ...
 *
 * Also importable: `runBench(argv)` returns the exit status (0, or 2 on bad usage; floors never fail the run).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  parseArgs,
  UsageError,
  USAGE,
  installExitHandlers,
  makeTempRoot,
  repoRoot,
  Budget,
  log,
  runExitCleanups,
  Options,
  Trash,
} from './util.js';
import { Results, computeChecks, renderMicro, renderRows, renderChecks, renderSvg, toJson, writeFileSafe } from './report.js';
import { DataCache, runLink, E2EContext } from './e2e.js';
import { runMicro } from './micro.js';
import { LOOPBACK, makeShapedLink } from './netns.js';
import { makeTarKey } from './peers.js';
import * as sf from './snapferry.js';
import { haveGnuTime, setScratchDir } from './measure.js';
import { probePageCache, describePageCache } from './pagecache.js';

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function version(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return ((r.stdout || r.stderr || '').split('\n')[0] ?? '').trim();
}

/** Drops tools whose programs are missing, with a note. */
function checkPrograms(opts: Options, R: Results): void {
  const hint = 'run scripts/install-deps.sh';
  if (opts.tools.has('rsync') && !have('rsync')) {
    opts.tools.delete('rsync');
    R.note(`rsync not installed: rsync runs skipped (${hint})`);
  }
  if (opts.tools.has('tar')) {
    const missing = ['tar', 'zstd', 'openssl', 'nc', 'dd', 'bash'].filter((c) => !have(c));
    if (missing.length) {
      opts.tools.delete('tar');
      R.note(`${missing.join(', ')} not installed: tar pipeline skipped (${hint})`);
    }
  }
  if (!haveGnuTime) R.note(`/usr/bin/time not installed: CPU seconds of one-shot commands come from /proc polling, less exact (${hint})`);
}

export async function runBench(argv: string[]): Promise<number> {
  let opts: Options;
  try {
    opts = parseArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      if (err.message) process.stderr.write(`bench: ${err.message}\n`);
      process.stderr.write(`${USAGE}\n`);
      return err.message ? 2 : 0;
    }
    throw err;
  }
  installExitHandlers();
  const R = new Results();
  const budget = new Budget(opts.budgetMs);
  const started = performance.now();
  checkPrograms(opts, R);
  const tmp = makeTempRoot(opts.tmp, opts.keep);
  setScratchDir(tmp);
  const data = new DataCache(path.join(tmp, 'data'));
  const e2eScenarios = [...opts.only].filter((s) => s !== 'micro');

  R.info.machine = `${os.availableParallelism()} cores (${os.cpus()[0]?.model ?? '?'}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, ${os.type()} ${os.release()}`;
  R.info.node = process.version;
  try {
    R.info['page cache'] = describePageCache(probePageCache(tmp));
  } catch (err) {
    R.info['page cache'] = `not probed: ${(err as Error).message}`;
  }
  R.info.rsync = have('rsync') ? version('rsync', ['--version']) : 'not installed';
  // Stated with the figures, not only in the README: the tools are timed without flushing to disk (snapferry's default
  // flushes), and snapferry's seed and delta times are the pull's, the site's index apart.
  R.info.durability = process.env.SNAPFERRY_BENCH_DURABLE
    ? 'snapferry pull flushes before each commit (its default), rsync with --fsync; the tar pipeline does not flush'
    : 'snapferry pull --no-fsync, rsync without --fsync, tar pipeline: none flushes to disk (snapferry flushes by default: --durable measures that)';
  R.info.timing = "wall time of the command run, from spawn to exit: snapferry pull at the branch, the rsync client pushing from the site; the site's index of the company is timed apart (site-index rows) and added in the +index rows";
  R.info.mode = `${opts.quick ? 'quick' : 'full'}: ${opts.runs} run(s); company ${opts.sizeMiB} MiB (loopback), ${opts.shapedSizeMiB} MiB (shaped); ${opts.smallFiles} small files; fan-out ${opts.fanout}`;
  log(`bench: ${R.info.mode}; temp ${tmp}${opts.keep ? ' (kept)' : ''}`);

  // snapferry CLI
  let secret: string | undefined;
  if (opts.tools.has('snapferry') && e2eScenarios.length) {
    if (!sf.cliAvailable()) R.note(`snapferry CLI not built (${path.relative(process.cwd(), sf.CLI)} missing; run npm run build): snapferry e2e runs skipped`);
    else {
      try {
        secret = path.join(tmp, 'site.key');
        sf.keygen(secret);
      } catch (err) {
        secret = undefined;
        R.note((err as Error).message);
      }
    }
  }
  const tarKey = path.join(tmp, 'tar.key');
  makeTarKey(tarKey);

  const ctx: E2EContext = { opts, results: R, budget, data, work: path.join(tmp, 'work'), secret, tarKey, sfMissing: new Set(), trash: new Trash(path.join(tmp, 'trash')) };

  try {
    // micro
    if (opts.only.has('micro')) {
      const dir = await data.company(e2eScenarios.length && opts.links.has('loopback') ? opts.sizeMiB : opts.microMiB);
      await runMicro({ companyDir: dir, microMiB: opts.microMiB, quick: opts.quick, results: R, budget });
    }
    // loopback
    if (e2eScenarios.length && opts.links.has('loopback')) {
      R.info.loopback = LOOPBACK.describe;
      await runLink(ctx, LOOPBACK);
    }
    // shaped
    if (e2eScenarios.length && opts.links.has('shaped')) {
      if (budget.spent) R.note('time budget spent: shaped link skipped');
      else {
        const link = makeShapedLink();
        if ('skip' in link) {
          R.note(`shaped link skipped: ${link.skip}`);
          log(`shaped link skipped: ${link.skip}`);
        } else {
          R.info.shaped = link.describe;
          log(`shaped link: ${link.describe}`);
          try {
            await runLink(ctx, link);
          } finally {
            link.destroy();
          }
        }
      }
    }
  } catch (err) {
    R.note(`bench stopped early: ${(err as Error).message}`);
    log(`bench stopped early: ${(err as Error).stack ?? err}`);
  }

  // report
  const linkNames = ['loopback', 'shaped'];
  const checks = computeChecks(R, linkNames, opts.fanout);
  const out: string[] = [];
  out.push('');
  out.push(`snapferry bench (${R.info.mode})`);
  for (const [k, v] of Object.entries(R.info)) if (k !== 'mode') out.push(`  ${k}: ${v}`);
  const micro = renderMicro(R.micro);
  if (micro) out.push('', micro);
  const rows = renderRows(R.rows());
  if (rows) out.push('', rows);
  const ch = renderChecks(checks);
  if (ch) out.push('', ch, '  (floors from issues 2-5; informational: a FAIL never changes the exit status)');
  if (R.notes.length) out.push('', 'notes:', ...R.notes.map((n) => `  - ${n}`));
  out.push('', `total ${((performance.now() - started) / 1000).toFixed(1)} s`);

  const results = path.join(repoRoot(), 'bench', 'results');
  if (checks.some((c) => c.chart && c.value !== null)) {
    const svg = opts.chart ? path.resolve(opts.chart) : path.join(results, 'ratios.svg');
    writeFileSafe(svg, renderSvg(checks, [R.info.mode!, `${R.info.machine}; node ${R.info.node}; ${new Date().toISOString().slice(0, 10)}`]));
    out.push(`chart: ${path.relative(process.cwd(), svg) || svg}`);
  } else out.push('chart: not written (no snapferry/rsync pairs in this run)');
  if (opts.json) {
    writeFileSafe(path.resolve(opts.json), JSON.stringify(toJson(R, checks), null, 2) + '\n');
    out.push(`json: ${opts.json}`);
  }
  process.stdout.write(out.join('\n') + '\n');
  runExitCleanups(); // children, namespaces, temp dirs: also when called from the CLI, which may not exit at once
  return 0;
}

const isMain = process.argv[1] !== undefined && fs.existsSync(process.argv[1]) && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  runBench(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
      runExitCleanups();
      process.exit(1);
    },
  );
}
