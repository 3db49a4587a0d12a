/** The terminal's progress line: what it says of rate and ETA (a pure function of the reports). */
import { describe, it, expect } from 'vitest';
import { progressText, duration, redraw } from '../../src/cli/progress.js';

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
  // Found by a helper review: the ETA was raw seconds ("ETA 8122765 s"); the line ignored the terminal's width (each
  // redraw of a wrapped line left a stale one, 18 for a 2.5 s pull on 40 columns) and sent ESC[K to TERM=dumb.
  it('gives the ETA in hours and minutes, fits the line to the terminal, and clears without ESC[K on a dumb one', () => {
    expect([duration(9), duration(59), duration(185), duration(3600 + 7 * 60 + 30), duration(8_122_765)]).toEqual(['9 s', '59 s', '3m05s', '1h07m', '2256h19m']);
    const text = 'x'.repeat(82);
    expect(redraw(text, 40, false, 0)).toBe(`\r\x1b[K${'x'.repeat(39)}`);
    expect(redraw(text, undefined, false, 0)).toBe(`\r\x1b[K${text}`);
    expect(redraw('abc', 80, true, 6)).toBe('\rabc   ');
    expect(redraw('abc', 80, true, 6)).not.toContain('\x1b');
  });
});
