/**
 * writeFileDurable (records, the site's scan cache): a write cut short leaves the file as it was and no temporary file.
 * Found by a helper review: a scan cache save on a full --cache-dir disk left NAME.scan.tmp behind. Produced with a
 * real full filesystem where the test may mount one (a 1 MiB tmpfs), and everywhere with a writer that fails midway.
 */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { tempDir, tmpfsUnavailable } from '../helpers.js';
import { writeFileDurable } from '../../src/store/state.js';

describe('writeFileDurable cut short', () => {
  const tmp = tempDir('sf-durable-');
  afterAll(() => tmp.cleanup());

  it('a writer that fails midway leaves the old file and no .tmp', () => {
    const file = path.join(tmp.dir, 'record.json');
    fs.writeFileSync(file, 'old');
    expect(() =>
      writeFileDurable(file, (write) => {
        write(Buffer.from('half of the new'));
        throw new Error('cut');
      }),
    ).toThrow('cut');
    expect(fs.readFileSync(file, 'utf8')).toBe('old');
    expect(fs.readdirSync(tmp.dir)).toEqual(['record.json']);
  });

  it.skipIf(tmpfsUnavailable() !== undefined)('a full disk (ENOSPC) leaves the old file and no .tmp', () => {
    const m = path.join(tmp.dir, 'mnt');
    fs.mkdirSync(m);
    expect(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', m]).status).toBe(0);
    try {
      const file = path.join(m, 'acme.scan');
      fs.writeFileSync(file, 'old');
      expect(() => writeFileDurable(file, Buffer.alloc(2 << 20, 7))).toThrow(/ENOSPC/);
      expect(fs.readFileSync(file, 'utf8')).toBe('old');
      expect(fs.readdirSync(m)).toEqual(['acme.scan']);
    } finally {
      spawnSync('umount', [m]);
    }
  });
});
