/** Live progress on a terminal (stderr) and the one-paragraph summary of a pull. */
import type { PullProgress, PullResult } from '../sync/pull.js';
import { formatBytes } from '../util/rate.js';

/** Where the transfer phase of the pull being shown began: its bytes done and elapsed time then. */
export interface TransferStart {
  bytesDone: number;
  elapsedMs: number;
}

/**
 * The progress line for one report. The rate and ETA count only what the transfer phase has done since it began
 * (`start`): a delta's plan credits at once every byte it finds in place, and a rate over those would promise the
 * rest in no time.
 */
export function progressText(p: PullProgress, start: TransferStart | undefined): string {
  if (p.phase !== 'transfer') return `${p.phase}...`;
  const from = start ?? { bytesDone: p.bytesDone, elapsedMs: p.elapsedMs };
  const secs = (p.elapsedMs - from.elapsedMs) / 1000;
  const moved = p.bytesDone - from.bytesDone;
  const rate = secs > 0 ? moved / secs : 0;
  const pct = p.bytesTotal > 0 ? Math.min(100, (100 * p.bytesDone) / p.bytesTotal) : 0;
  const eta = rate > 0 && p.bytesTotal > p.bytesDone ? `${Math.ceil((p.bytesTotal - p.bytesDone) / rate)} s` : '-';
  return `${pct.toFixed(1).padStart(5)}%  ${formatBytes(p.bytesDone)} of ${formatBytes(p.bytesTotal)}  ${formatBytes(rate)}/s  ${formatBytes(p.bytesOnWire)} on the wire  ETA ${eta}`;
}

/** Returns a progress callback that redraws one line on stderr at most 10 times a second, or nothing off a TTY. */
export function progressLine(enabled: boolean): { update: (p: PullProgress) => void; end: () => void } {
  if (!enabled) return { update: () => undefined, end: () => undefined };
  let last = 0;
  let drawn = false;
  // Per pull (a follower shows one after another): set by its first transfer report, cleared by any other phase.
  let start: TransferStart | undefined;
  const update = (p: PullProgress) => {
    if (p.phase !== 'transfer') start = undefined;
    else start ??= { bytesDone: p.bytesDone, elapsedMs: p.elapsedMs };
    const now = performance.now();
    if (now - last < 100 && p.phase === 'transfer') return;
    last = now;
    process.stderr.write(`\r\x1b[K${progressText(p, start)}`);
    drawn = true;
  };
  const end = () => {
    if (drawn) process.stderr.write('\r\x1b[K');
  };
  return { update, end };
}

/** The human summary of a pull. */
export function summary(r: PullResult, dir: string): string {
  if (r.unchanged) {
    return `${dir} already holds generation ${r.generation} of ${r.company} (${r.files} files, ${formatBytes(r.bytes)}); nothing to transfer. ${formatBytes(r.bytesOnWire)} on the wire in ${r.seconds.toFixed(2)} s.`;
  }
  const rate = r.seconds > 0 ? r.bytes / r.seconds : 0;
  return (
    `${dir} now holds generation ${r.generation} of ${r.company}: ${r.files} files, ${formatBytes(r.bytes)} ` +
    `(root ${r.rootHash.slice(0, 16)}). ${r.chunksFetched} chunks fetched (${r.chunksPatched} as block patches), ` +
    `${r.chunksReused} reused from local data; ${formatBytes(r.bytesOnWire)} on the wire in ${r.seconds.toFixed(2)} s ` +
    `(${formatBytes(rate)}/s of company data).`
  );
}
