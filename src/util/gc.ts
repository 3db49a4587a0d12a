/**
 * Bounded memory for buffer-heavy threads. V8 frees a dead ArrayBuffer's memory only at a garbage collection and
 * starts one only after ~64 MiB of such external garbage per thread; with a main thread and two workers that is most
 * of a process's peak memory. A young-generation collection every few MiB of buffers costs well under a millisecond
 * and keeps the peak flat whatever the company size.
 */
import v8 from 'node:v8';
import vm from 'node:vm';

v8.setFlagsFromString('--expose-gc');
const collect = vm.runInNewContext('gc') as (opts?: { type: 'minor' | 'major' }) => void;
let since = 0;

/** Notes that `bytes` of buffers became garbage on this thread; collects when enough accumulated. */
export function noteGarbage(bytes: number, every = 16 << 20): void {
  since += bytes;
  if (since >= every) {
    since = 0;
    collect({ type: 'minor' });
  }
}
