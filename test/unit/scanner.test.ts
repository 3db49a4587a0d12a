/**
 * CompanyScanner's rescans: what they keep from the generation before (no new object per unchanged file) and what
 * they make new (the changed files). Over real files in a temp folder and a real worker pool (the built modules).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { tempDir, ROOT } from '../helpers.js';
import type { CompanyScanner as Scanner } from '../../src/scan/scanner.js';
import type { WorkerPool as Pool } from '../../src/work/pool.js';

const built = async <T>(rel: string): Promise<T> => (await import(pathToFileURL(path.join(ROOT, 'dist', 'src', rel)).href)) as T;

describe('CompanyScanner rescans', () => {
  let tmp: ReturnType<typeof tempDir>;
  let pool: Pool;
  let CompanyScanner: typeof Scanner;
  beforeAll(async () => {
    tmp = tempDir();
    ({ CompanyScanner } = await built<{ CompanyScanner: typeof Scanner }>('scan/scanner.js'));
    const { WorkerPool } = await built<{ WorkerPool: typeof Pool }>('work/pool.js');
    pool = new WorkerPool(1);
  });
  afterAll(async () => {
    await pool.close();
    tmp.cleanup();
  });

  it('keeps the entry objects of unchanged paths and makes new ones for what changed', async () => {
    const root = path.join(tmp.dir, 'co');
    fs.mkdirSync(path.join(root, 'masters'), { recursive: true });
    for (let k = 0; k < 20; k++) fs.writeFileSync(path.join(root, 'masters', `m${k}.xml`), `<ledger n="${k}"/>\n`.repeat(50));
    fs.writeFileSync(path.join(root, 'Company.900'), Buffer.alloc(300_000, 7));
    fs.symlinkSync('masters/m1.xml', path.join(root, 'current.xml'));
    // Older than the scanner's quiet time, so that nothing is waited for.
    const old = new Date(Date.now() - 60_000);
    for (const f of ['Company.900', ...Array.from({ length: 20 }, (_, k) => `masters/m${k}.xml`)]) fs.utimesSync(path.join(root, f), old, old);
    const scanner = new CompanyScanner(root, pool);
    const g1 = await scanner.scan();
    fs.writeFileSync(path.join(root, 'masters', 'm3.xml'), '<ledger n="3" changed="yes"/>\n');
    fs.utimesSync(path.join(root, 'masters', 'm3.xml'), old, new Date(Date.now() - 30_000));
    const g2 = await scanner.scan();
    expect(g2.rootHash).not.toBe(g1.rootHash);
    const before = new Map(g1.manifest.entries.map((e) => [e.path, e]));
    const changed = g2.manifest.entries.filter((e) => e !== before.get(e.path)).map((e) => e.path);
    // Only the rewritten file is a new object; the folder, the link, the large file and 19 small ones are the old ones.
    expect(changed).toEqual(['masters/m3.xml']);
    expect(g2.manifest.entries.length).toBe(g1.manifest.entries.length);
    expect(scanner.lastBytesRead).toBe(fs.statSync(path.join(root, 'masters', 'm3.xml')).size);
  });
});
