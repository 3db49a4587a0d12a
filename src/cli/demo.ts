/**
 * The demo: makes a sample company, serves it on a local WebSocket, seeds it into a second folder with live
 * progress and a summary, changes the company the way a working day does, and pulls again to show a delta.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { makeCompany, mutateCompany } from '../gen/company.js';
import { SnapferryServer } from '../sync/server.js';
import { pull } from '../sync/pull.js';
import { progressLine, summary } from './progress.js';
import { formatBytes } from '../util/rate.js';
import { makeDirs } from '../util/mkdirs.js';
import { ErrorCodes, fail, fsProblem } from '../util/errors.js';

export interface DemoOptions {
  sizeMiB: number;
  workdir?: string;
  keep: boolean;
}

/** The file that marks a --dir folder as the demo's own (it replaces head-office/ and branch/ there). */
const DEMO_MARK = '.snapferry-demo';

/** A --dir folder must be new, empty or the demo's own: the demo removes its head-office and branch folders first. */
function checkDemoDir(root: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(root);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    return fail(ErrorCodes.USAGE, `cannot use ${root} for the demo: ${fsProblem(err)}`);
  }
  if (names.length > 0 && !names.includes(DEMO_MARK)) {
    fail(ErrorCodes.DIR_FOREIGN, `${root} is not empty and was not made by snapferry demo; the demo replaces the head-office and branch folders in it, so it takes a new or empty folder, or one of its own`);
  }
}

export async function runDemo(o: DemoOptions): Promise<void> {
  if (o.workdir) checkDemoDir(path.resolve(o.workdir));
  const root = o.workdir ? path.resolve(o.workdir) : fs.mkdtempSync(path.join(os.tmpdir(), 'snapferry-demo-'));
  // A temporary folder goes whatever ends the demo: a failure (a full disk while making the company), Ctrl-C.
  const temporary = !o.keep && !o.workdir;
  const removeRoot = () => {
    if (temporary) fs.rmSync(root, { recursive: true, force: true, maxRetries: 10, retryDelay: 20 });
  };
  // A signal stops the site (the pull under way then ends: it does not retry) and the demo between its steps; the
  // folder is removed once nothing writes into it any more (removed at once, it met the pull's workers still making
  // files: ENOTEMPTY, a stack trace, the folder left). Later signals are let go until then.
  const stop: DemoStop = {};
  const onSignal = (signal: NodeJS.Signals) => {
    if (stop.signal) return;
    stop.signal = signal;
    stop.stopSite?.();
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const sig of signals) process.on(sig, onSignal);
  try {
    await demoIn(root, o, stop);
  } catch (err) {
    if (!stop.signal) throw err;
  } finally {
    try {
      removeRoot();
    } finally {
      for (const sig of signals) process.off(sig, onSignal);
    }
  }
  if (stop.signal) process.exit(128 + (os.constants.signals[stop.signal] ?? 15));
  process.stdout.write(`${o.keep || o.workdir ? `kept ${root}` : 'done (the demo folders were removed; --keep keeps them)'}\n`);
}

/** How a signal reaches the demo's steps: the signal once one came, and how to stop the site once it serves. */
interface DemoStop {
  signal?: NodeJS.Signals;
  stopSite?: () => void;
}

/** The demo's steps in `root` (see runDemo); ends early (throws) once `stop` has a signal. */
async function demoIn(root: string, o: DemoOptions, stop: DemoStop): Promise<void> {
  const going = () => {
    if (stop.signal) fail(ErrorCodes.CONNECTION_LOST, 'stopped');
  };
  makeDirs(root);
  fs.writeFileSync(path.join(root, DEMO_MARK), 'made by snapferry demo: its head-office and branch folders are replaced by the next demo\n');
  const head = path.join(root, 'head-office', 'acme');
  const branch = path.join(root, 'branch', 'acme');
  const say = (s: string) => process.stdout.write(`${s}\n`);
  fs.rmSync(path.join(root, 'head-office'), { recursive: true, force: true });
  fs.rmSync(path.join(root, 'branch'), { recursive: true, force: true });
  // The site's chunk store in the demo's folder, not a temporary one of its own: removed with it however the demo ends.
  const cacheDir = path.join(root, 'site-cache');
  fs.rmSync(cacheDir, { recursive: true, force: true });
  makeDirs(path.dirname(branch));
  say(`snapferry demo in ${root}`);
  const made = await makeCompany(head, o.sizeMiB, 1);
  going();
  say(`1. made a sample company "acme": ${made.files} files, ${formatBytes(made.bytes)} in ${head}`);
  const secret = randomBytes(32);
  const server = new SnapferryServer({ host: '127.0.0.1', port: 0, secretFor: () => secret, companies: new Map([['acme', head]]), cacheDir });
  let closing: Promise<void> | undefined;
  const closeSite = () => (closing ??= server.close());
  stop.stopSite = () => void closeSite();
  try {
    const url = await server.start();
    going();
    say(`2. head office serves it on ${url} (mutual authentication, AES-256-GCM sealed frames)`);
    const p1 = progressLine(process.stderr.isTTY === true);
    // No retries: a signal closes the site, and the pull under way must end then, not try again.
    const seed = await pull({ url, company: 'acme', dir: branch, secret, onProgress: p1.update, retries: 0 });
    p1.end();
    going();
    say(`3. seed:  ${summary(seed, branch)}`);
    const m = await mutateCompany(head, 2);
    going();
    say(`4. a working day at the head office: ${formatBytes(m.bytesChanged)} of 4 KiB pages rewritten, an append to Journal.log, a 64 KiB insert, ${m.deleted.length} files deleted, ${m.added.length} added, ${m.renamed.length} renamed`);
    const p2 = progressLine(process.stderr.isTTY === true);
    const delta = await pull({ url, company: 'acme', dir: branch, secret, onProgress: p2.update, retries: 0 });
    p2.end();
    going();
    say(`5. delta: ${summary(delta, branch)}`);
    say(`   the delta moved ${((100 * delta.bytesOnWire) / Math.max(1, seed.bytesOnWire)).toFixed(1)}% of the seed's bytes on the wire.`);
    const again = await pull({ url, company: 'acme', dir: branch, secret, retries: 0 });
    say(`6. again: ${summary(again, branch)}`);
  } finally {
    stop.stopSite = undefined;
    await closeSite();
  }
}
