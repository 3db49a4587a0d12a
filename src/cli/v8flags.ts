/**
 * V8 settings for snapferry's processes, set before any other module is compiled (main.ts imports this first).
 *
 * Why: a pull lives a few seconds, and V8's optimizing compiler (TurboFan) spent ~0.56 s of CPU on its background
 * threads in a second-day delta of the 1 GiB company, on a machine with two cores that the pull's workers and the site
 * need. An interrupt budget 8x the default (V8 11's 67,584) leaves functions run a few times to the baseline tiers and
 * still optimizes the hot loops (chunk writes, manifest decoding, the per-block work). By hand, five alternated pairs of
 * second deltas: 1.20-1.55 s against 1.34-1.88 s (medians 1.30 and 1.42 s), user CPU 1.05-1.21 s against 1.37-2.01 s
 * (docs/RESULTS.md, seventy-sixth run). V8's flags are the process's: the worker threads started later share them.
 */
import v8 from 'node:v8';

/** The interrupt budget (in bytecode bytes) before V8 considers a function for optimization. */
export const INTERRUPT_BUDGET = 8 * 67584;

if (!process.execArgv.some((a) => a.startsWith('--interrupt-budget'))) v8.setFlagsFromString(`--interrupt-budget=${INTERRUPT_BUDGET}`);
