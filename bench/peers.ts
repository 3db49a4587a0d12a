/**
 * The peers snapferry is measured against, run the way their users run them.
 *
 * rsync: the serving side pushes into an rsync daemon at the branch:
 *   branch:  rsync --daemon --no-detach --config=CONF --port=PORT --address=ADDR   (module m, use chroot = no, uid/gid root)
 *   serving: rsync -a -z --compress-choice=zstd --compress-level=1 --stats --delete SRC/ rsync://ADDR:PORT/m/SUB/
 * (--delete so that deletions travel as they do with snapferry; repair adds -c, since only checksums find a page
 * flipped under an unchanged size and mtime.) Bytes on the wire = the client's "Total bytes sent", i.e. what the
 * branch received (the client pushes); the reverse direction (file list acks, block checksums the receiver sends
 * back) is "Total bytes received", kept as bytesBack.
 *
 * tar pipeline (seed only; no delta, no resume, no repair):
 *   branch:  nc -d -l ADDR PORT | dd bs=1M | openssl enc -d -aes-256-ctr -pbkdf2 -pass file:KEY | zstd -d | tar -x
 *   serving: tar -c . | zstd -1 | openssl enc -aes-256-ctr -pbkdf2 -pass file:KEY | nc -N ADDR PORT
 * Bytes on the wire = the bytes nc delivered to the branch, counted by the `dd` pass-through (its summary line).
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Server, startTimed, runTimed, RunResult, waitListening, failure } from './measure.js';
import { Link } from './netns.js';
import { shq, sleep } from './util.js';

export interface SideUsage {
  cpuSeconds: number;
  peakRssKiB: number;
}

/** One measured transfer, both sides. */
export interface Transfer {
  ok: boolean;
  note?: string;
  seconds: number;
  bytesOnWire: number | null;
  src: SideUsage;
  dst: SideUsage;
  extra?: Record<string, number | string | boolean | null>;
}

// ---------------------------------------------------------------------------------------------------------------
// rsync
// ---------------------------------------------------------------------------------------------------------------

export class RsyncDaemon {
  private constructor(
    readonly server: Server,
    readonly root: string,
    readonly addr: string,
    readonly port: number,
  ) {}

  /** Starts a daemon on the branch side of the link serving module `m` at `root` (created). */
  static async start(workDir: string, root: string, link: Link, port: number, timeoutMs: number): Promise<RsyncDaemon> {
    fs.mkdirSync(root, { recursive: true });
    const conf = path.join(workDir, `rsyncd-${link.name}-${port}.conf`);
    fs.writeFileSync(
      conf,
      [
        `log file = ${path.join(workDir, `rsyncd-${link.name}-${port}.log`)}`,
        'use chroot = no',
        // As root, the daemon would switch to nobody; keep root so it can set owners like the client's -a asks.
        // As another user it cannot switch at all: leave uid/gid out and it runs as that user.
        ...(process.getuid?.() === 0 ? ['uid = root', 'gid = root'] : []),
        'reverse lookup = no',
        'max connections = 0',
        '',
        '[m]',
        `  path = ${root}`,
        '  read only = false',
        '',
      ].join('\n'),
    );
    const server = await Server.start(
      'rsync daemon',
      'rsync',
      ['--daemon', '--no-detach', `--config=${conf}`, `--port=${port}`, `--address=${link.dstAddr}`],
      { ns: link.dstNs, readyPort: port, timeoutMs },
    );
    return new RsyncDaemon(server, root, link.dstAddr, port);
  }

  url(sub: string): string {
    return `rsync://${this.addr}:${this.port}/m/${sub}/`;
  }

  dir(sub: string): string {
    return path.join(this.root, sub);
  }

  stop(): Promise<void> {
    return this.server.stop();
  }
}

export interface RsyncStats {
  totalBytesSent: number;
  totalBytesReceived: number;
  literalData: number;
  matchedData: number;
  filesTransferred: number;
}

/** Parses `rsync --stats` output (numbers may have thousands separators). */
export function parseRsyncStats(out: string): RsyncStats | undefined {
  const get = (label: string): number => {
    const m = new RegExp(`^${label}:\\s*([\\d,.]+)`, 'm').exec(out);
    return m ? Number(m[1]!.replace(/[,.]/g, '')) : NaN;
  };
  const s: RsyncStats = {
    totalBytesSent: get('Total bytes sent'),
    totalBytesReceived: get('Total bytes received'),
    literalData: get('Literal data'),
    matchedData: get('Matched data'),
    filesTransferred: get('Number of regular files transferred'),
  };
  return Number.isNaN(s.totalBytesSent) ? undefined : s;
}

export const RSYNC_ARGS = ['-a', '-z', '--compress-choice=zstd', '--compress-level=1', '--stats', '--delete'];

/** Pushes src into the daemon (sub-folder `sub`); measures the client (serving side) and the daemon (branch side). */
export async function rsyncPush(
  daemon: RsyncDaemon,
  src: string,
  sub: string,
  link: Link,
  opts: { checksum?: boolean; timeoutMs: number },
): Promise<Transfer> {
  const win = daemon.server.window();
  // --durable: rsync flushes too (--fsync, every written file), so the tools are compared at the same durability.
  const durable = process.env.SNAPFERRY_BENCH_DURABLE ? ['--fsync'] : [];
  const args = [...RSYNC_ARGS, ...durable, ...(opts.checksum ? ['-c'] : []), `${src}/`, daemon.url(sub)];
  const r = await runTimed('rsync', args, { ns: link.srcNs, timeoutMs: opts.timeoutMs });
  // The daemon's per-connection process exits just after the client: wait for it (bounded) so its CPU is counted.
  const d = await win.stop(5000);
  const stats = parseRsyncStats(r.stdout);
  const err = failure(r) ?? (stats ? undefined : 'no --stats output');
  return {
    ok: !err,
    note: err,
    seconds: r.seconds,
    bytesOnWire: stats ? stats.totalBytesSent : null,
    src: { cpuSeconds: r.cpuSeconds, peakRssKiB: r.peakRssKiB },
    dst: { cpuSeconds: d.cpuSeconds, peakRssKiB: d.peakRssKiB },
    extra: stats
      ? { bytesBack: stats.totalBytesReceived, literalData: stats.literalData, matchedData: stats.matchedData, filesTransferred: stats.filesTransferred }
      : undefined,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// tar | zstd | openssl | nc
// ---------------------------------------------------------------------------------------------------------------

/** Writes a random pass-phrase file for openssl (mode 0600). */
export function makeTarKey(file: string): void {
  fs.writeFileSync(file, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
}

/** Seeds dst from src through the pipeline; both halves measured separately. */
export async function tarPipeline(src: string, dst: string, key: string, link: Link, port: number, timeoutMs: number): Promise<Transfer> {
  fs.mkdirSync(dst, { recursive: true });
  const countFile = `${dst}.ddcount`;
  const recvCmd =
    `set -o pipefail; nc -d -l ${shq(link.dstAddr)} ${port} | dd bs=1M 2>${shq(countFile)} | ` +
    `openssl enc -d -aes-256-ctr -pbkdf2 -pass file:${shq(key)} | zstd -d -q -c | tar -C ${shq(dst)} -xf -`;
  const sendCmd =
    `set -o pipefail; tar -C ${shq(src)} -cf - . | zstd -1 -q -c | ` +
    `openssl enc -aes-256-ctr -pbkdf2 -pass file:${shq(key)} | nc -N ${shq(link.dstAddr)} ${port}`;
  const recv = startTimed('bash', ['-c', recvCmd], { ns: link.dstNs, timeoutMs });
  let recvDone: RunResult | undefined;
  void recv.done.then((r) => (recvDone = r));
  const listening = await waitListening(recv.child.pid!, port, 10_000, () => recvDone === undefined);
  if (!listening) {
    recv.kill();
    const r = await recv.done;
    return failed(`receiver did not listen (${failure(r) ?? 'no listener'})`);
  }
  const send = await runTimed('bash', ['-c', sendCmd], { ns: link.srcNs, timeoutMs });
  // The receiver ends when nc sees EOF; bound the wait in case the sender failed before connecting.
  const r = await Promise.race([recv.done, sleep(send.code === 0 ? timeoutMs : 3000).then(() => undefined)]);
  if (!r) recv.kill();
  const rr = r ?? (await recv.done);
  let bytes: number | null = null;
  try {
    const m = /^(\d+) bytes/m.exec(fs.readFileSync(countFile, 'utf8'));
    if (m) bytes = Number(m[1]);
    fs.rmSync(countFile, { force: true });
  } catch {
    /* no count */
  }
  const err = failure(send) ?? failure(rr);
  return {
    ok: !err,
    note: err ? `tar pipeline: ${err}` : undefined,
    seconds: (Math.max(send.endedAt, rr.endedAt) - send.startedAt) / 1000,
    bytesOnWire: bytes,
    src: { cpuSeconds: send.cpuSeconds, peakRssKiB: send.peakRssKiB },
    dst: { cpuSeconds: rr.cpuSeconds, peakRssKiB: rr.peakRssKiB },
  };
}

export function failed(note: string): Transfer {
  return { ok: false, note, seconds: NaN, bytesOnWire: null, src: { cpuSeconds: NaN, peakRssKiB: 0 }, dst: { cpuSeconds: NaN, peakRssKiB: 0 } };
}
