/**
 * makeDirs against real folders in a temporary folder, and against procfs, whose mkdir answers ENOENT under a parent
 * that exists (Node's recursive mkdir looped on that forever: the test's timeout is what fails then).
 */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { makeDirs, dirProblem } from '../../src/util/mkdirs.js';
import { tempDir } from '../helpers.js';

const tmp = tempDir('sf-mkdirs-');
afterAll(() => tmp.cleanup());

describe('makeDirs', () => {
  it('makes the missing folders top down with the mode, returning the first it made', () => {
    const deep = path.join(tmp.dir, 'a', 'b', 'c');
    expect(makeDirs(deep, 0o700)).toBe(path.join(tmp.dir, 'a'));
    for (const d of ['a', 'a/b', 'a/b/c']) expect(fs.statSync(path.join(tmp.dir, d)).mode & 0o777).toBe(0o700);
    expect(makeDirs(path.join(tmp.dir, 'a', 'b', 'd'))).toBe(path.join(tmp.dir, 'a', 'b', 'd'));
  });

  it('returns undefined for a folder that exists, also through a symlink', () => {
    fs.mkdirSync(path.join(tmp.dir, 'here'));
    fs.symlinkSync('here', path.join(tmp.dir, 'there'));
    expect(makeDirs(path.join(tmp.dir, 'here'))).toBeUndefined();
    expect(makeDirs(path.join(tmp.dir, 'there'))).toBeUndefined();
  });

  it('throws EEXIST (ENOTDIR below it) when a file stands where a folder should be', () => {
    fs.writeFileSync(path.join(tmp.dir, 'file'), 'x');
    let err: unknown;
    try {
      makeDirs(path.join(tmp.dir, 'file'));
    } catch (e) {
      err = e;
    }
    expect((err as NodeJS.ErrnoException).code).toBe('EEXIST');
    expect(dirProblem(err)).toBe('something that is not a folder has its name');
    expect(() => makeDirs(path.join(tmp.dir, 'file', 'sub'))).toThrow(expect.objectContaining({ code: 'ENOTDIR' }));
    expect(fs.statSync(path.join(tmp.dir, 'file')).isFile()).toBe(true);
  });

  it.skipIf(!fs.existsSync('/proc/self'))('fails at once on procfs, which takes no new folders', () => {
    let err: unknown;
    try {
      makeDirs(`/proc/sf-mkdirs-test-${process.pid}/sub`);
    } catch (e) {
      err = e;
    }
    // ENOENT as root (procfs refuses), EACCES otherwise: either way an error, not a loop.
    expect((err as NodeJS.ErrnoException).code).toMatch(/^(ENOENT|EACCES)$/);
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') expect(dirProblem(err)).toBe('the filesystem there takes no new folders');
  }, 10_000);
});
