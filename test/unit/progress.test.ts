/** The terminal's progress line: what it says of rate and ETA (a pure function of the reports). */
import { describe, it, expect } from 'vitest';
import { progressText } from '../../src/cli/progress.js';

describe('progressText', () => {
  // Found in review: the rate was the bytes done over the whole pull's time, and a delta's plan credits at once every
  // byte already in place, so a delta with 9 of 10 kB in place showed a rate of 4.5 kB/s and an ETA of 1 s for work
  // going at 100 B/s. The rate now counts the transfer phase's own bytes and time.
  it('takes the rate and ETA from the transfer phase, not from bytes the plan found in place', () => {
    const p = { phase: 'transfer' as const, bytesDone: 9_100, bytesTotal: 10_000, bytesOnWire: 500, elapsedMs: 2000 };
    const line = progressText(p, { bytesDone: 9_000, elapsedMs: 1000 });
    expect(line).toContain('91.0%');
    expect(line).toMatch(/ 100 B\/s /);
    expect(line).toMatch(/ETA 9 s$/);
  });

  it('shows no ETA before the transfer has moved anything, and the phase name outside the transfer', () => {
    const p = { phase: 'transfer' as const, bytesDone: 5, bytesTotal: 10, bytesOnWire: 0, elapsedMs: 300 };
    expect(progressText(p, undefined)).toMatch(/ETA -$/);
    expect(progressText({ ...p, phase: 'plan' }, undefined)).toBe('plan...');
  });
});
