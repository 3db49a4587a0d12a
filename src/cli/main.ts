#!/usr/bin/env node
/**
 * The snapferry command line. Every failure is printed as one line, `snapferry: <message> [SNAPFERRY_E_...]`, with an
 * exit code per error code (see util/errors.ts).
 */
// First: V8's settings apply to code compiled after them (see v8flags.ts).
import './v8flags.js';
import { createRequire } from 'node:module';
import type * as Commander from 'commander';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { writeNewSecret, readSecret } from './secret.js';
// Each command loads its own modules when it runs (import() below): start-up counts in a short `verify --deep`.
import type { PullResult, PullProgress, PullOptions } from '../sync/pull.js';
import type { VerifyResult } from '../sync/verify.js';
import { progressLine, summary } from './progress.js';
import { formatBytes, parseRate } from '../util/rate.js';
import { ErrorCodes, fail, fsProblem, printable, toSnapferryError } from '../util/errors.js';
import fs from 'node:fs';
import { isSiteUrl } from '../transport/url.js';
import { COMPANY_NAME, COMPANY_NAME_RULE } from '../util/names.js';

// commander through require, as ws (see transport/ws.ts): importing CommonJS from an ES module lexes its source first.
const { Command, Option } = createRequire(import.meta.url)('commander') as typeof Commander;

function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  if (!m) fail(ErrorCodes.USAGE, `--listen takes HOST:PORT, not ${JSON.stringify(text)}`);
  const port = Number(m[3]);
  if (port > 65535) fail(ErrorCodes.USAGE, `port ${port} out of range`);
  return { host: m[1] ?? m[2]!, port };
}

/** A company NAME as a pull or repair gives it: refused here, before any connection, when no site could serve it. */
function companyName(name: string): string {
  if (!COMPANY_NAME.test(name)) fail(ErrorCodes.USAGE, `company name ${JSON.stringify(name)}: ${COMPANY_NAME_RULE}`);
  return name;
}

function parseCompanies(list: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const item of list) {
    const eq = item.indexOf('=');
    if (eq <= 0 || eq === item.length - 1) fail(ErrorCodes.USAGE, `--company takes NAME=DIR, not ${JSON.stringify(item)}`);
    const name = companyName(item.slice(0, eq));
    if (out.has(name)) fail(ErrorCodes.USAGE, `company ${name} named twice`);
    out.set(name, path.resolve(item.slice(eq + 1)));
  }
  if (out.size === 0) fail(ErrorCodes.USAGE, 'serve needs at least one --company NAME=DIR');
  return out;
}

/**
 * Fault injection for the fault suite: SNAPFERRY_FAULT_KILL_AT=<point> makes the process SIGKILL itself at that named
 * point of a pull (plan, links, planned, base-copied, based, commit, before-intent, intent, exchanged, swap, swapped, committed; swap only where the swap is two renames), exactly as a power
 * cut or kill -9;
 * SNAPFERRY_FAULT_STOP_AT=<point> stops it there (SIGSTOP) for a test to change something before it goes on.
 */
function faultPoint(point: string): void {
  if (process.env.SNAPFERRY_DEBUG) process.stderr.write(`[point ${(performance.now() / 1000).toFixed(3)}] ${point}\n`);
  if (process.env.SNAPFERRY_FAULT_KILL_AT === point) process.kill(process.pid, 'SIGKILL');
  if (process.env.SNAPFERRY_FAULT_STOP_AT === point) process.kill(process.pid, 'SIGSTOP');
}

/** A number given to an option: an integer from min to max (a typo would otherwise become NaN and mean "no limit"). */
function wholeNumber(text: string, option: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(text);
  if (!/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(n) || n < min || n > max) {
    fail(ErrorCodes.USAGE, `${option} takes a whole number from ${min}${max < Number.MAX_SAFE_INTEGER ? ` to ${max}` : ''}, not ${JSON.stringify(text)}`);
  }
  return n;
}

/** SNAPFERRY_DEBUG: log each phase of a pull with its start time, for profiling. */
function phaseLogger(next: (p: PullProgress) => void): (p: PullProgress) => void {
  let last = '';
  return (p) => {
    if (p.phase !== last) {
      last = p.phase;
      process.stderr.write(`[${(p.elapsedMs / 1000).toFixed(3)} s] ${p.phase}\n`);
    }
    next(p);
  };
}

/** A folder given to an option: "" (an unset variable, `--cache-dir "$CACHE"`) was taken as no option at all. */
function nonEmpty(text: string, option: string): string {
  if (text.trim() === '') fail(ErrorCodes.USAGE, `${option} takes a folder, not ${JSON.stringify(text)}`);
  return text;
}

function parseLevel(text: string): number {
  const n = Number(text);
  // Digits only: Number() reads "" and " " as 0 (an empty --level "$LEVEL" became level 0 without a word), "0x3" as 3.
  if (!/^\s*-?\d+\s*$/.test(text) || !Number.isInteger(n) || n < -7 || n > 19) fail(ErrorCodes.USAGE, `--level takes a zstd level from -7 to 19, or none; not ${JSON.stringify(text)}`);
  return n;
}

const collect = (v: string, prev: string[]) => [...prev, v];

/** The names in a folder that mkcompany or mutate is given: a folder is required (refused by name otherwise). */
function folderNames(dir: string, missingOk: boolean): string[] | undefined {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    if (missingOk && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return fail(ErrorCodes.USAGE, `cannot use ${path.resolve(dir)}: ${fsProblem(err)}`);
  }
  if (!st.isDirectory()) fail(ErrorCodes.USAGE, `${path.resolve(dir)} is not a folder`);
  try {
    return fs.readdirSync(dir);
  } catch (err) {
    return fail(ErrorCodes.USAGE, `cannot list ${path.resolve(dir)}: ${fsProblem(err)}`);
  }
}

/** mkcompany writes files of fixed names: only into a new or empty folder, never over a folder's data. */
function checkNewCompanyDir(dir: string): void {
  const names = folderNames(dir, true);
  if (names && names.length > 0) {
    fail(ErrorCodes.DIR_FOREIGN, `${path.resolve(dir)} is not empty; mkcompany makes a company in a new or empty folder (it would overwrite files there)`);
  }
}

/** mutate rewrites pages, deletes and renames files: only in a synthetic company (mkcompany's), never any folder. */
function checkSyntheticCompany(dir: string, top: ReadonlySet<string>): void {
  const names = folderNames(dir, false)!;
  const odd = names.filter((n) => !top.has(n));
  if (odd.length > 0 || !names.includes('Journal.log')) {
    fail(
      ErrorCodes.DIR_FOREIGN,
      `${path.resolve(dir)} is not a synthetic company made by mkcompany (${odd.length > 0 ? `it holds ${JSON.stringify(odd[0])}` : 'it has no Journal.log'}); mutate rewrites, deletes and renames files, so it refuses any other folder`,
    );
  }
  // mkcompany makes files and folders only: a link would lead mutate's writes outside the folder.
  const odder = fs.readdirSync(dir, { recursive: true, withFileTypes: true }).find((d) => !d.isFile() && !d.isDirectory());
  if (odder) {
    const rel = path.relative(dir, path.join(odder.parentPath ?? odder.path, odder.name));
    fail(ErrorCodes.DIR_FOREIGN, `${path.resolve(dir)} is not a synthetic company made by mkcompany (it holds ${JSON.stringify(rel)}, which is not a plain file or folder); mutate refuses it`);
  }
}

function printPull(r: PullResult, dir: string, json: boolean): void {
  if (json) process.stdout.write(`${JSON.stringify(r)}\n`);
  else process.stdout.write(`${summary(r, printable(dir))}\n`);
}

/**
 * Watches for the trap of a pull run from inside DIR (`pull URL NAME .`): the commit swaps DIR whole, and a shell
 * left in the replaced folder (now the spare generation, or deleted) goes on showing the old files. `check()` after
 * each pull says so once, on stderr, when DIR was replaced while this process's folder was in it.
 */
function cwdInsideDir(dir: string): { check: () => void } {
  let real: string;
  let inode: number;
  try {
    real = fs.realpathSync(dir);
    const cwd = fs.realpathSync(process.cwd());
    if (cwd !== real && !cwd.startsWith(real.endsWith(path.sep) ? real : real + path.sep)) return { check: () => undefined };
    inode = fs.statSync(real).ino;
  } catch {
    return { check: () => undefined }; // DIR not there yet: a seed makes it, nobody stands in it
  }
  let told = false;
  return {
    check: () => {
      if (told) return;
      try {
        if (fs.statSync(real).ino === inode) return;
      } catch {
        return;
      }
      told = true;
      process.stderr.write(`snapferry: this command ran inside ${printable(real)}, which the new generation replaced as a whole: a shell still there sees the replaced files; cd "${printable(real)}" again to see the new ones\n`);
    },
  };
}

export function buildProgram(): Commander.Command {
  const program = new Command();
  program
    .name('snapferry')
    .description('Seed a company folder to a branch over WebSocket, keep it current with deltas, verify and repair copies.')
    .version('0.1.0')
    .showHelpAfterError(false)
    .configureOutput({
      writeErr: (s) => process.stderr.write(s),
      // Usage errors in the one-line form of every other failure (commander's own spans two lines with a suggestion).
      outputError: (s, write) => write(`snapferry: ${s.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ').trim()} [${ErrorCodes.USAGE}]\n`),
    })
    .exitOverride();

  program
    .command('keygen')
    .description('write a new random 256-bit site secret to FILE (mode 0600); refuses to overwrite')
    .argument('<file>')
    .action((file: string) => {
      writeNewSecret(file);
      process.stdout.write(`wrote a new secret to ${file}; give the same file to the sites that sync with each other\n`);
    });

  program
    .command('serve')
    .description('serve companies to branches')
    .requiredOption('--listen <host:port>', 'address to listen on, e.g. 0.0.0.0:7373')
    .requiredOption('--secret <file>', 'site secret file (from keygen)')
    .option('--company <name=dir>', 'a company to serve (repeatable)', collect, [])
    .option('--bwlimit <rate>', 'cap on bytes per second sent, e.g. 8M')
    .option('--level <n>', 'zstd level for chunk data, or "none" (default: adapted to the link: 1, -1 or none)')
    .option('--max-connections <n>', 'connections at once', '256')
    .option('--settle-timeout <seconds>', 'how long a file that keeps changing may delay a generation before it is held back as it last was', '30')
    .option('--cache-dir <dir>', 'keep the scan cache and the chunk stores here, so a restarted site re-reads only what changed')
    .option('--no-store', 'compress chunks as pulls ask for them instead of once, when indexed (saves the disk a store takes: about a third of the company)')
    .action(async (o: { listen: string; secret: string; company: string[]; bwlimit?: string; level?: string; maxConnections: string; settleTimeout: string; cacheDir?: string; store: boolean }) => {
      const { host, port } = parseListen(o.listen);
      const secret = readSecret(o.secret);
      const companies = parseCompanies(o.company);
      const { SnapferryServer, companyHolding } = await import('../sync/server.js');
      // A secret inside a company would reach every branch with its files, and go wherever their copies go.
      const holder = companyHolding(fs.realpathSync(o.secret), companies);
      if (holder) fail(ErrorCodes.USAGE, `--secret ${o.secret} is inside company ${holder[0]}'s folder ${holder[1]}: every branch would receive it with the company's files; keep it outside every company`);
      const { NO_COMPRESSION } = await import('../work/tasks.js');
      const level = o.level === undefined ? undefined : o.level === 'none' ? NO_COMPRESSION : parseLevel(o.level);
      const server = new SnapferryServer({
        host,
        port,
        secretFor: () => secret,
        companies,
        bwlimit: o.bwlimit !== undefined ? parseRate(o.bwlimit) : undefined, // "" is a rate given wrong, not none
        level,
        // A store holds compressed frames: none with --level none; at the operator's level when one is given.
        store: o.store && level !== NO_COMPRESSION,
        storeLevel: level,
        maxConnections: wholeNumber(o.maxConnections, '--max-connections', 1),
        settleTimeoutMs: wholeNumber(o.settleTimeout, '--settle-timeout', 0) * 1000,
        cacheDir: o.cacheDir === undefined ? undefined : path.resolve(nonEmpty(o.cacheDir, '--cache-dir')),
        // Company file names reach these lines: their control characters shown as spaces (a name holding ESC[2J
        // cleared the operator's screen), as in pull's.
        log: (line) => process.stderr.write(`${new Date().toISOString()} ${printable(line)}\n`),
      });
      // The handlers come first: a signal sent the moment "listening on" is read (or while starting) must end the site
      // cleanly, not kill it with its temporary store folder left behind.
      let stopAsked = false;
      let onStop = () => {
        stopAsked = true;
      };
      const stop = () => onStop();
      // SIGHUP too (the terminal closed, an ssh session dropped): killed by it, the site left its temporary store.
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, stop);
      const url = await server.start();
      if (!stopAsked) process.stdout.write(`listening on ${url}\n`);
      await new Promise<void>((resolve) => {
        onStop = () => {
          process.stderr.write(`${new Date().toISOString()} shutting down\n`);
          server.close().then(resolve, resolve);
        };
        if (stopAsked) onStop();
      });
    });

  program
    .command('pull')
    .description('seed DIR with company NAME from the site at URL, or bring it to the newest generation')
    .argument('<url>', 'ws://HOST:PORT (wss:// for a site behind a TLS proxy)')
    .argument('<name>', 'company name')
    .argument('<dir>', 'destination folder')
    .requiredOption('--secret <file>', 'site secret file')
    .option('--json', 'print one JSON object when done')
    .option('--bwlimit <rate>', 'cap on bytes per second received, e.g. 8M')
    .option('--no-fsync', 'do not flush to disk before commit (faster; a power loss may then need a re-pull)')
    .option('--wait', 'wait for another pull of the same DIR to finish instead of refusing')
    .option('--retries <n>', 'reconnect attempts after a dropped link', '5')
    .option('--follow', 'stay connected and apply each new generation (one --json line per applied generation)')
    .option('--no-spare', 'do not keep the files a commit replaces beside DIR (saves their disk; the next delta then copies each changed file whole before patching it)')
    .option('--adopt', 'DIR may hold a copy snapferry did not make (carried by hand, restored from a backup): reuse what matches, then replace it with the generation')
    .action(async (url: string, name: string, dir: string, o: { secret: string; json?: boolean; bwlimit?: string; fsync: boolean; wait?: boolean; retries: string; follow?: boolean; spare: boolean; adopt?: boolean }) => {
      const secret = readSecret(o.secret);
      const absDir = path.resolve(dir);
      const inside = cwdInsideDir(absDir);
      const progress = progressLine(!o.json && process.stderr.isTTY === true);
      const options: PullOptions = {
        url,
        company: companyName(name),
        dir,
        secret,
        bwlimit: o.bwlimit !== undefined ? parseRate(o.bwlimit) : undefined, // "" is a rate given wrong, not none
        durable: o.fsync,
        spare: o.spare,
        adopt: o.adopt === true,
        lockWaitMs: o.wait ? 24 * 3600_000 : 0,
        retries: wholeNumber(o.retries, '--retries', 0, 1000),
        onProgress: process.env.SNAPFERRY_DEBUG ? phaseLogger(progress.update) : progress.update,
        onPoint: faultPoint,
        log: (line) => {
          progress.end();
          process.stderr.write(`${printable(line)}\n`);
        },
      };
      if (o.follow) {
        const stop = new AbortController();
        for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, () => stop.abort());
        // The program reading the JSON lines went away (`--follow --json | shipper`, the shipper restarted): they would
        // be lost from here on, so the follower ends as on SIGTERM (and a supervisor restarts the pair).
        process.stdout.on('error', (err: NodeJS.ErrnoException) => {
          if (err.code !== 'EPIPE' || stop.signal.aborted) return;
          process.stderr.write('the program reading the output went away; stopping\n');
          stop.abort();
        });
        const { follow } = await import('../sync/follow.js');
        const how = await follow({ ...options, signal: stop.signal }, (r) => {
          progress.end();
          printPull(r, absDir, o.json === true);
          inside.check();
        });
        progress.end();
        // Stopped in the middle of a pull: end now (DIR is the old generation; the next pull resumes from the journal).
        if (how === 'stopped-in-pull') process.exit(0);
        return;
      }
      const { pull } = await import('../sync/pull.js');
      const r = await pull(options).finally(progress.end);
      printPull(r, absDir, o.json === true);
      inside.check();
    });

  program
    .command('verify')
    .description('check DIR against the generation it last applied (exit 0 intact, 1 damaged, 2 could not check it or some of it)')
    .argument('<dir>')
    .option('--deep', 'read every byte and check every chunk hash')
    .option('--json', 'print one JSON object')
    .option('--secret <file>', 'also check that the applied-generation record is authentic')
    .option('--wait', 'wait for a pull of the same DIR (a follower applying a generation) to finish instead of exiting 2')
    .action(async (dir: string, o: { deep?: boolean; json?: boolean; secret?: string; wait?: boolean }) => {
      let r: VerifyResult;
      try {
        const { verifyDir } = await import('../sync/verify.js');
        const full = await verifyDir(dir, { deep: o.deep === true, secret: o.secret ? readSecret(o.secret) : undefined, lockWaitMs: o.wait ? 24 * 3600_000 : 0 });
        const { good: _good, applied: _applied, ...rest } = full;
        r = rest;
      } catch (err) {
        const e = toSnapferryError(err);
        if (o.json) process.stdout.write(`${JSON.stringify({ intact: false, checked: false, error: { code: e.code, message: e.message } })}\n`);
        process.stderr.write(errorLine(`could not check ${path.resolve(dir)}: ${e.message}`, e.code));
        process.exitCode = 2;
        throw new ExitWith(2);
      }
      if (o.json) process.stdout.write(`${JSON.stringify(r)}\n`);
      else {
        // Names as the terminal can show them: a name holding a newline would otherwise forge a line of this report.
        const lines = r.damaged.map((d) => `  ${printable(d.path)}: ${d.problem}${d.ranges ? ` at ${d.ranges.map(([a, b]) => `${a}-${b}`).join(', ')}` : ''}${d.expectedSize !== undefined ? ` (${d.actualSize} bytes, ${d.expectedSize} expected)` : ''}${d.expectedMode ? ` (${d.actualMode}, ${d.expectedMode} expected)` : ''}${d.actualKind ? ` (a ${d.actualKind} where a ${d.expectedKind} should be)` : ''}`);
        for (const u of r.unchecked) lines.push(`  ${printable(u.path)}: not checked (${u.reason})`);
        const head = r.intact
          ? `${printable(path.resolve(dir))} is intact: generation ${r.generation} of ${r.company}`
          : r.damaged.length > 0
            ? `${printable(path.resolve(dir))} is damaged: ${r.damaged.length} problem(s) against generation ${r.generation} of ${r.company}`
            : `${printable(path.resolve(dir))}: no damage found against generation ${r.generation} of ${r.company}, but ${r.unchecked.length} entr${r.unchecked.length === 1 ? 'y' : 'ies'} could not be checked`;
        process.stdout.write(`${head} (${o.deep ? `deep, ${formatBytes(r.bytesRead)} read` : 'metadata only'}, ${r.seconds.toFixed(2)} s)\n${lines.join('\n')}${lines.length ? '\n' : ''}`);
      }
      if (r.damaged.length > 0) throw new ExitWith(1);
      // Not all could be looked at (permissions): neither intact nor damaged, which is what 2 says.
      if (r.unchecked.length > 0) throw new ExitWith(2);
    });

  program
    .command('repair')
    .description('restore DIR from the site at URL, fetching only what is damaged (or the delta, if the site moved on)')
    .argument('<dir>')
    .argument('<url>')
    .argument('<name>')
    .requiredOption('--secret <file>', 'site secret file')
    .option('--json', 'print one JSON object when done')
    .option('--no-fsync', 'do not flush to disk before commit')
    .action(async (dir: string, url: string, name: string, o: { secret: string; json?: boolean; fsync: boolean }) => {
      // pull takes URL NAME DIR, repair DIR URL NAME: a URL given first would otherwise be taken for a folder's path.
      if (isSiteUrl(dir) && !isSiteUrl(url)) fail(ErrorCodes.USAGE, `repair takes DIR URL NAME, the folder first; "${dir}" is a site URL`);
      const secret = readSecret(o.secret);
      const absDir = path.resolve(dir);
      const inside = cwdInsideDir(absDir);
      const progress = progressLine(!o.json && process.stderr.isTTY === true);
      const { pull } = await import('../sync/pull.js');
      const r = await pull({
        url,
        company: companyName(name),
        dir,
        secret,
        repair: true,
        durable: o.fsync,
        onProgress: progress.update,
        onPoint: faultPoint,
        log: (line) => {
          progress.end();
          process.stderr.write(`${printable(line)}\n`);
        },
      }).finally(progress.end);
      if (o.json) process.stdout.write(`${JSON.stringify(r)}\n`);
      else {
        const what = r.unchanged ? 'nothing was damaged' : r.peerMovedOn ? 'the site had moved on: brought to its newest generation' : 'repaired';
        process.stdout.write(`${what}. ${summary(r, printable(absDir))}\n`);
      }
      inside.check();
    });

  program
    .command('demo')
    .description('make a sample company, seed it to a second folder over a local WebSocket, then show a delta')
    .option('--size <MiB>', 'size of the sample company', '64')
    .option('--dir <folder>', 'work in this folder (kept; a new or empty one, or an earlier demo\'s) instead of a temporary one')
    .option('--keep', 'keep the temporary folder')
    .action(async (o: { size: string; dir?: string; keep?: boolean }) => {
      const { runDemo } = await import('./demo.js');
      await runDemo({ sizeMiB: wholeNumber(o.size, '--size', 1), workdir: o.dir, keep: o.keep === true });
    });

  program
    .command('bench')
    .description('measure snapferry against rsync and a tar|zstd|openssl|nc pipeline (see bench/README.md)')
    .option('--quick', 'every scenario on small data, under 2 minutes')
    .option('--json <file>', 'also write the results as JSON')
    .allowUnknownOption(true)
    .allowExcessArguments(true)
    .helpOption(false)
    .action(async () => {
      // The bench is its own program (dist/bench/main.js); every argument after "bench" goes to it as given.
      const script = fileURLToPath(new URL('../../bench/main.js', import.meta.url));
      const code = await new Promise<number>((resolve) => {
        const child = spawn(process.execPath, [script, ...process.argv.slice(process.argv.indexOf('bench') + 1)], { stdio: 'inherit' });
        child.on('exit', (c) => resolve(c ?? 1));
      });
      if (code !== 0) throw new ExitWith(code);
    });

  program
    .command('mkcompany')
    .description('make a deterministic synthetic company folder (the reference workload)')
    .argument('<dir>')
    .argument('<sizeMiB>')
    .argument('[seed]', 'seed', '1')
    .addOption(new Option('--small-files <count>', 'instead, make COUNT small files'))
    .action(async (dir: string, size: string, seed: string, o: { smallFiles?: string }) => {
      const { makeCompany, makeSmallFiles } = await import('../gen/company.js');
      const count = o.smallFiles ? wholeNumber(o.smallFiles, '--small-files', 1) : 0;
      const sizeMiB = o.smallFiles ? 0 : wholeNumber(size, 'sizeMiB', 1);
      const seedN = wholeNumber(seed, 'SEED', 0);
      checkNewCompanyDir(dir);
      const r = o.smallFiles ? await makeSmallFiles(dir, count, seedN) : await makeCompany(dir, sizeMiB, seedN);
      process.stdout.write(`${JSON.stringify(r)}\n`);
    });

  program
    .command('mutate')
    .description('change a synthetic company the way a working day does (~1% of bytes)')
    .argument('<dir>')
    .argument('[seed]', 'seed', '2')
    .action(async (dir: string, seed: string) => {
      const { mutateCompany, SYNTHETIC_TOP_NAMES } = await import('../gen/company.js');
      const seedN = wholeNumber(seed, 'SEED', 0);
      checkSyntheticCompany(dir, SYNTHETIC_TOP_NAMES);
      const r = await mutateCompany(dir, seedN);
      process.stdout.write(`${JSON.stringify({ bytesChanged: r.bytesChanged, deleted: r.deleted.length, added: r.added.length, renamed: r.renamed.length })}\n`);
    });

  return program;
}

/** Ends a command with an exit code after it has printed its own output (verify's 1 and 2). */
class ExitWith extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

/**
 * Refuses to run from a folder that no longer exists (a shell left in a copy that a commit replaced, then dropped):
 * relative paths cannot be resolved there, and Node's workers fail to start in it with a bare "uv_cwd" after the
 * command has begun writing.
 */
function checkCwd(): void {
  try {
    process.cwd();
  } catch {
    const where = process.env.PWD ? ` (${printable(process.env.PWD)})` : '';
    fail(ErrorCodes.USAGE, `the current folder${where} no longer exists (deleted, or replaced by a commit); cd to another folder and run the command again`);
  }
}

/**
 * Refuses arguments that are not valid UTF-8 (a Latin-1 folder name from an old share): Node reads them with U+FFFD in
 * place of the bytes, so a pull into `caf\xe9` would land in another folder, and `caf\xe8` in that same one.
 */
function checkUtf8(args: string[]): void {
  const bad = args.find((a) => a.includes('\ufffd'));
  if (bad !== undefined) fail(ErrorCodes.USAGE, `an argument is not valid UTF-8 (${printable(bad)}, as read); snapferry takes UTF-8 paths and names only: rename the folder, or give it through a link with a UTF-8 name`);
}

/** The one line a failure is told in; whatever the message quotes (a name holding a newline) cannot forge a second. */
function errorLine(message: string, code: string): string {
  return `snapferry: ${printable(message)} [${code}]\n`;
}

/** Runs the CLI; maps errors to one line and an exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    checkCwd();
    checkUtf8(argv.slice(2));
    // No command (a script that lost its arguments), or help for one that does not exist: one line like every other
    // usage error, naming the commands, rather than the whole help.
    const [first, second] = argv.slice(2);
    const commands = program.commands.map((c) => c.name()).filter((n) => n !== 'help');
    if (first === undefined || (first === 'help' && second !== undefined && !commands.includes(second))) {
      fail(ErrorCodes.USAGE, `${first === undefined ? 'no command given' : `unknown command ${JSON.stringify(second)}`}: one of ${commands.join(', ')} (snapferry --help says more)`);
    }
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof ExitWith) return err.code;
    const ce = err as { code?: string; exitCode?: number };
    if (typeof ce.code === 'string' && ce.code.startsWith('commander.')) {
      if (ce.code === 'commander.helpDisplayed' || ce.code === 'commander.version') return 0;
      // Help shown in place of a command commander could not run is a usage error. `snapferry help` itself exits 0.
      if (ce.code === 'commander.help') return ce.exitCode ? 64 : 0;
      return 64; // commander already printed its one-line message
    }
    const e = toSnapferryError(err);
    process.stderr.write(errorLine(e.message, e.code));
    if (process.env.SNAPFERRY_DEBUG && e.cause) process.stderr.write(`${(e.cause as Error).stack ?? e.cause}\n`);
    return e.exitCode;
  }
}

const invokedDirectly = process.argv[1] && path.resolve(process.argv[1]).replace(/\.ts$/, '.js') === new URL(import.meta.url).pathname.replace(/\.ts$/, '.js');
if (invokedDirectly || process.argv[1]?.endsWith('snapferry')) {
  // Output that could not be written (stdout a file on a full disk) fails the command: a script would read an empty
  // result as success. A reader that closed the pipe (`| head`) wanted no more and is not a failure.
  let outputError: Error | undefined;
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') outputError ??= err;
  });
  // Messages that cannot be written (stderr a closed pipe, `serve 2>&1 | tee` with tee gone, or a full disk) are lost:
  // there is nowhere left to say so. Unhandled, the error ended every command with a stack trace and exit 1 (a site
  // went down at its next log line, its store left behind).
  process.stderr.on('error', () => undefined);
  // Exit explicitly once output is flushed: a failed start may leave handles (workers, sockets) that would keep us alive.
  main(process.argv).then((code) => {
    process.stdout.write('', () =>
      setImmediate(() => {
        if (outputError && code === 0) {
          const e = toSnapferryError(outputError, 'cannot write the output');
          process.stderr.write(errorLine(e.message, e.code));
          code = e.exitCode;
        }
        process.stderr.write('', () => process.exit(code));
      }),
    );
  });
}
