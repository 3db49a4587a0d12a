import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BaseCopies, type BaseStep } from '../../src/sync/basecopies.js';

// The queue that lets a delta's base copies start while its plan is still being made (src/sync/basecopies.ts), over
// real copies of real files.
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sf-basecopies-'));
  fs.mkdirSync(path.join(dir, 'next'));
  for (let i = 0; i < 10; i++) fs.writeFileSync(path.join(dir, `f${i}`), Buffer.alloc(256 << 10, i));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A copier like the puller's, counting how many copies run at once. */
function copier() {
  const seen = { now: 0, most: 0, ran: [] as number[] };
  const run = async (s: BaseStep) => {
    seen.now++;
    seen.most = Math.max(seen.most, seen.now);
    try {
      await fs.promises.copyFile(s.from, path.join(dir, 'next', path.basename(s.from)));
      seen.ran.push(s.ei);
    } finally {
      seen.now--;
    }
  };
  return { seen, run };
}

const step = (i: number): BaseStep => ({ ei: i, from: path.join(dir, `f${i}`), spare: false, bytes: 0 });

describe('BaseCopies', () => {
  it('runs nothing before start(), then every step, at most `limit` at once; each file is whole when its promise resolves', async () => {
    const { seen, run } = copier();
    const q = new BaseCopies(run, 3);
    for (let i = 0; i < 5; i++) q.add(step(i));
    await new Promise((r) => setTimeout(r, 20));
    expect(seen.ran).toEqual([]);
    expect(fs.readdirSync(path.join(dir, 'next'))).toEqual([]);
    q.start();
    // Added after start: runs without another call.
    for (let i = 5; i < 10; i++) q.add(step(i));
    await q.readyOf(7);
    expect(fs.readFileSync(path.join(dir, 'next', 'f7')).equals(fs.readFileSync(path.join(dir, 'f7')))).toBe(true);
    await q.done();
    expect(seen.ran.sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(seen.most).toBe(3);
    expect(q.steps.map((s) => s.ei)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(q.readyOf(42)).toBeUndefined();
  });

  it('starts the queued steps largest first (the largest copy is what the delta waits for longest)', async () => {
    const { seen, run } = copier();
    const q = new BaseCopies(run, 1);
    const sizes = [5, 900, 0, 40, 900, 7];
    sizes.forEach((bytes, i) => q.add({ ...step(i), bytes }));
    await q.done();
    // Equal sizes keep the plan's order.
    expect(seen.ran).toEqual([1, 4, 3, 5, 0, 2]);
  });

  it('a failed copy (its source is gone) fails done() with its error; steps not yet begun never run and their waiters are told', async () => {
    const { seen, run } = copier();
    const q = new BaseCopies(run, 1);
    fs.rmSync(path.join(dir, 'f1'));
    for (let i = 0; i < 4; i++) q.add(step(i));
    q.start();
    await expect(q.done()).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(q.readyOf(3)!).rejects.toMatchObject({ code: 'ENOENT' });
    // Added after the failure: refused at once, not left waiting.
    q.add(step(5));
    await expect(q.readyOf(5)!).rejects.toMatchObject({ code: 'ENOENT' });
    await q.settle();
    expect(seen.ran).toEqual([0]);
    expect(fs.readdirSync(path.join(dir, 'next')).sort()).toEqual(['f0']);
  });

  it('settle() drops what has not begun and returns only once the copies already running have finished', async () => {
    const { seen, run } = copier();
    const q = new BaseCopies(run, 2);
    for (let i = 0; i < 8; i++) q.add(step(i));
    q.start();
    expect(seen.now).toBe(2);
    await q.settle();
    expect(seen.now).toBe(0);
    // The two that had begun are complete; nothing else was written, nor is written later.
    const copied = fs.readdirSync(path.join(dir, 'next')).sort();
    expect(copied).toEqual(['f0', 'f1']);
    for (const f of copied) expect(fs.statSync(path.join(dir, 'next', f)).size).toBe(256 << 10);
    await new Promise((r) => setTimeout(r, 20));
    expect(fs.readdirSync(path.join(dir, 'next')).sort()).toEqual(['f0', 'f1']);
    await expect(q.readyOf(7)!).rejects.toThrow(/stopped/);
  });
});
