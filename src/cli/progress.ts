/** Live progress on a terminal (stderr) and the one-paragraph summary of a pull. */
import type { PullProgress, PullResult } from '../sync/pull.js';
import { formatBytes } from '../util/rate.js';

/** Returns a progress callback that redraws one line on stderr at most 10 times a second, or nothing off a TTY. */
export function progressLine(enabled: boolean): { update: (p: PullProgress) => void; end: () => void } {
  if (!enabled) return { update: () => undefined, end: () => undefined };
  let last = 0;
  let drawn = false;
  const update = (p: PullProgress) => {
    const now = performance.now();
    if (now - last < 100 && p.phase === 'transfer') return;
    last = now;
    const secs = p.elapsedMs / 1000;
    const rate = secs > 0 ? p.bytesDone / secs : 0;
    const pct = p.bytesTotal > 0 ? Math.min(100, (100 * p.bytesDone) / p.bytesTotal) : 0;
    const eta = rate > 0 && p.bytesTotal > p.bytesDone ? `${Math.ceil((p.bytesTotal - p.bytesDone) / rate)} s` : '-';
    const line =
      p.phase === 'transfer'
        ? `${pct.toFixed(1).padStart(5)}%  ${formatBytes(p.bytesDone)} of ${formatBytes(p.bytesTotal)}  ${formatBytes(rate)}/s  ${formatBytes(p.bytesOnWire)} on the wire  ETA ${eta}`
        : `${p.phase}...`;
    process.stderr.write(`\r\x1b[K${line}`);
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
