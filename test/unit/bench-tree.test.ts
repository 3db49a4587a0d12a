/**
 * The bench's copy check: a run that leaves a wrong copy is marked failed and not timed. A page rewritten in place
 * changes no size, so the check compares contents, not only paths and sizes.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, it, expect } from 'vitest';
import { sameTree } from '../../bench/e2e.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function tree(files: Record<string, Buffer | { link: string }>): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-tree-'));
  dirs.push(d);
  for (const [p, v] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(d, p)), { recursive: true });
    if (Buffer.isBuffer(v)) fs.writeFileSync(path.join(d, p), v);
    else fs.symlinkSync(v.link, path.join(d, p));
  }
  return d;
}

describe('bench sameTree', () => {
  const big = Buffer.alloc(3 << 20, 0x41);
  it('accepts an equal copy and ignores the branch state folder', () => {
    const src = tree({ 'a.900': big, 'm/x.xml': Buffer.from('x'), l: { link: 'a.900' } });
    const dst = tree({ 'a.900': big, 'm/x.xml': Buffer.from('x'), l: { link: 'a.900' }, '.snapferry/state': Buffer.from('s') });
    expect(sameTree(src, dst)).toBeUndefined();
  });

  it('reports a 4 KiB page that was not applied, though every size matches', () => {
    const changed = Buffer.from(big);
    changed.fill(0x42, (2 << 20) + 4096, (2 << 20) + 8192);
    const src = tree({ 'a.900': changed });
    const dst = tree({ 'a.900': big });
    expect(sameTree(src, dst)).toBe(`a.900: content differs at byte ${(2 << 20) + 4096}`);
  });

  it('reports a link whose target differs', () => {
    expect(sameTree(tree({ l: { link: 'a' } }), tree({ l: { link: 'b' } }))).toBe('l: link target differs');
  });
});
