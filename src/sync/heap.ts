/**
 * Bounds the heap's headroom. Keeps the main thread's young generation at the size it has once the process is up: V8
 * doubles the young generation each time the bytes that survived scavenges since its last growth exceed its size (up
 * to 2 x 16 MiB semi-spaces), so a site that scans more files, or a long transfer paced by many young-generation GCs
 * (util/gc.ts), ends with 16-32 MiB more committed heap than a short one: peak memory grew with the company size.
 * Scavenges stay cheap at the smaller size (what survives them is little). The flag is read by V8 each time it would
 * grow the young generation, so setting it at run time works; workers have their own fixed cap (work/pool.ts).
 *
 * The old generation likewise: after each full GC V8 lets the heap grow by a factor it picks from the GC's speed
 * (1.1-4x of what survived) before the next one. The live data grows with the company (chunk tables, file entries),
 * so that headroom grew with it: a site serving a 4 GiB company peaked at 181-183 MiB (three runs), 156-160 MiB with the
 * factor fixed at 1.1 (two runs; 1 GiB: 134-136 and 126-128 MiB; `bench --only memory`). Full GCs stay rare (2-6 in a
 * 1 GiB seed either way, no time lost): most garbage here is young or external buffers (util/gc.ts).
 */
import v8 from 'node:v8';
import type { Worker } from 'node:worker_threads';

let installed = false;

function setFactor(): void {
  v8.setFlagsFromString('--semi-space-growth-factor=1');
  v8.setFlagsFromString('--heap-growing-percent=10');
}

/**
 * Stops further growth of the young generation in this process and holds the old generation's headroom to 10 %
 * (idempotent; the flags are the process's, so workers have them too). V8 resets the growth factor to its
 * minimum of 2 whenever it configures a new isolate's heap, which a worker thread does on its own thread as it starts:
 * the factor is set again each time a worker comes online.
 */
export function boundHeapGrowth(): void {
  setFactor();
  if (installed) return;
  installed = true;
  process.on('worker', (w: Worker) => w.once('online', setFactor));
}
