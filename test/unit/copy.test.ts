/** Whole-file copies (util/copy.ts) on real files in a temp folder. */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { tempDir } from '../helpers.js';
import { copyWhole } from '../../src/util/copy.js';

describe('copyWhole', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());

  for (const writeBack of [true, false]) {
    it(`copies exactly and replaces a longer file left at the destination (writeBack ${writeBack})`, async () => {
      const src = path.join(tmp.dir, `src-${writeBack}`);
      const dst = path.join(tmp.dir, `dst-${writeBack}`);
      const data = crypto.randomBytes(3 << 20);
      fs.writeFileSync(src, data);
      await copyWhole(src, dst, writeBack);
      expect(fs.readFileSync(dst).equals(data)).toBe(true);
      // What an interrupted attempt leaves: a longer file of other bytes. None of it may survive the next copy.
      fs.writeFileSync(dst, Buffer.alloc(5 << 20, 0x55));
      await copyWhole(src, dst, writeBack);
      expect(fs.readFileSync(dst).equals(data)).toBe(true);
    });
  }

  for (const writeBack of [true, false]) {
    // What a resumed pull can find in next/: a hard link to DIR's own file. A copy made through it would rewrite DIR.
    it(`never writes through a hard link at the destination (writeBack ${writeBack})`, async () => {
      const src = path.join(tmp.dir, `lsrc-${writeBack}`);
      const other = path.join(tmp.dir, `other-${writeBack}`);
      const dst = path.join(tmp.dir, `ldst-${writeBack}`);
      const data = crypto.randomBytes(1 << 20);
      const kept = crypto.randomBytes(2 << 20);
      fs.writeFileSync(src, data);
      fs.writeFileSync(other, kept);
      fs.linkSync(other, dst);
      await copyWhole(src, dst, writeBack);
      expect(fs.readFileSync(dst).equals(data)).toBe(true);
      expect(fs.readFileSync(other).equals(kept)).toBe(true);
      expect(fs.statSync(other).nlink).toBe(1);
    });
  }

  it('fails on a missing source and leaves no file behind', async () => {
    const dst = path.join(tmp.dir, 'never');
    await expect(copyWhole(path.join(tmp.dir, 'missing'), dst, false)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(fs.existsSync(dst)).toBe(false);
  });
});
