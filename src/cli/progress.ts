/** Live progress on a terminal (stderr) and the one-paragraph summary of a pull. */
import type { PullProgress, PullResult } from '../sync/pull.js';
import { formatBytes } from '../util/rate.js';
import { heldBackText } from '../protocol/messages.js';

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
  const eta = rate > 0 && p.bytesTotal > p.bytesDone ? duration(Math.ceil((p.bytesTotal - p.bytesDone) / rate)) : '-';
  return `${pct.toFixed(1).padStart(5)}%  ${formatBytes(p.bytesDone)} of ${formatBytes(p.bytesTotal)}  ${formatBytes(rate)}/s  ${formatBytes(p.bytesOnWire)} on the wire  ETA ${eta}`;
}

/** A number of seconds as an operator reads it: "42 s", "3m05s", "2h07m". */
export function duration(secs: number): string {
  if (secs < 60) return `${secs} s`;
  const pad = (n: number) => String(n).padStart(2, '0');
  if (secs < 3600) return `${Math.floor(secs / 60)}m${pad(secs % 60)}s`;
  return `${Math.floor(secs / 3600)}h${pad(Math.floor((secs % 3600) / 60))}m`;
}

/**
 * What to write to redraw the progress line as `text`: cut to the terminal's width (a line that wraps cannot be
 * redrawn in place: each redraw left a stale line on a 40-column terminal), cleared with ESC[K, or, on a terminal that
 * has no such control (TERM=dumb), by spaces over what the last line left.
 */
export function redraw(text: string, columns: number | undefined, dumb: boolean, lastLength: number): string {
  const line = columns && columns > 1 ? text.slice(0, columns - 1) : text;
  return dumb ? `\r${line}${' '.repeat(Math.max(0, lastLength - line.length))}` : `\r\x1b[K${line}`;
}

/** Returns a progress callback that redraws one line on stderr at most 10 times a second, or nothing off a TTY. */
export function progressLine(enabled: boolean): { update: (p: PullProgress) => void; end: () => void } {
  if (!enabled) return { update: () => undefined, end: () => undefined };
  let last = 0;
  let drawn = false;
  const dumb = process.env.TERM === 'dumb';
  let lastLength = 0;
  // Per pull (a follower shows one after another): set by its first transfer report, cleared by any other phase.
  let start: TransferStart | undefined;
  const update = (p: PullProgress) => {
    if (p.phase !== 'transfer') start = undefined;
    else start ??= { bytesDone: p.bytesDone, elapsedMs: p.elapsedMs };
    const now = performance.now();
    if (now - last < 100 && p.phase === 'transfer') return;
    last = now;
    const body = progressText(p, start);
    const cols = process.stderr.columns;
    process.stderr.write(redraw(body, cols, dumb, lastLength));
    lastLength = cols && cols > 1 ? Math.min(body.length, cols - 1) : body.length;
    drawn = true;
  };
  const end = () => {
    if (drawn) process.stderr.write(`${redraw('', process.stderr.columns, dumb, lastLength)}\r`);
  };
  return { update, end };
}

/** The human summary of a pull. */
export function summary(r: PullResult, dir: string): string {
  const held = r.heldBack ? ` ${heldBackText(r.heldBack.names, r.heldBack.count)}.` : '';
  if (r.unchanged) {
    return `${dir} already holds generation ${r.generation} of ${r.company} (${r.files} files, ${formatBytes(r.bytes)}); nothing to transfer. ${formatBytes(r.bytesOnWire)} on the wire in ${r.seconds.toFixed(2)} s.${held}`;
  }
  const rate = r.seconds > 0 ? r.bytes / r.seconds : 0;
  return (
    `${dir} now holds generation ${r.generation} of ${r.company}: ${r.files} files, ${formatBytes(r.bytes)} ` +
    `(root ${r.rootHash.slice(0, 16)}). ${r.chunksFetched} chunks fetched (${r.chunksPatched} as block patches), ` +
    `${r.chunksReused} reused from local data; ${formatBytes(r.bytesOnWire)} on the wire in ${r.seconds.toFixed(2)} s ` +
    `(${formatBytes(rate)}/s of company data).${held}`
  );
}
