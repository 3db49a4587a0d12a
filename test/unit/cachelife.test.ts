/**
 * The page cache life that next.unsynced's records are trusted under (store/cachelife.ts): which mount a folder is on,
 * read from mountinfo text (synthetic lines over real folders, and this machine's own /proc/self/mountinfo).
 */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir } from '../helpers.js';
import { mountIdOf, cacheLifeOf } from '../../src/store/cachelife.js';

describe('cache life', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());

  it('names the mount of the longest mount point above a folder, the latest mount on a point, escapes undone', () => {
    const dir = path.join(tmp.dir, 'a b', 'co');
    fs.mkdirSync(dir, { recursive: true });
    const real = fs.realpathSync(path.join(tmp.dir, 'a b'));
    const st = fs.statSync(real, { bigint: true });
    const dev = `${Number((st.dev >> 8n) & 0xfffn)}:${Number((st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn))}`;
    const point = real.replace(/ /g, '\\040');
    const lines = [
      `1 0 ${dev} / / rw - ext4 /dev/x rw`,
      `2 1 ${dev} / ${point}x rw - ext4 /dev/x rw`, // a sibling whose name only begins like the folder's
      `3 1 ${dev} / ${point} rw - ext4 /dev/x rw`,
      `4 1 0:99 / ${point}/co rw - tmpfs tmpfs rw`, // another device below: not above the folder's parent
    ];
    expect(mountIdOf(real, lines.join('\n'))).toBe('3');
    expect(mountIdOf(dir, [...lines, `5 3 ${dev} / ${point} rw - ext4 /dev/y rw`].join('\n'))).toBe('5');
    expect(mountIdOf(real, lines.slice(0, 2).join('\n'))).toBe('1');
    expect(mountIdOf(path.join(tmp.dir, 'missing'), lines.join('\n'))).toBeUndefined();
  });

  it.skipIf(process.platform !== 'linux')('is the same for two folders on one mount and 28 bytes long', () => {
    const a = cacheLifeOf(tmp.dir);
    expect(a?.length).toBe(28);
    fs.mkdirSync(path.join(tmp.dir, 'x'));
    expect(cacheLifeOf(path.join(tmp.dir, 'x'))!.equals(a!)).toBe(true);
  });
});
