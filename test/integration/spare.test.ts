/**
 * The spare generation (store/spare.ts): the files a commit replaced are kept and rewritten by the next delta instead of
 * copying DIR's versions whole. Real sites over 127.0.0.1, the CLI as child processes, a real reader process holding a
 * file open, and kill -9 at the commit point (SNAPFERRY_FAULT_KILL_AT).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff, Served, NO_DAC_OVERRIDE } from '../helpers.js';
import { makeCompany, mutateCompany } from '../../src/gen/company.js';

const BIG = ['Tranmgr.900', 'Company.900', 'LinkMgr.900', 'Manager.900'];

describe('deltas built on the spare generation', () => {
  let tmp: ReturnType<typeof tempDir>;
  let key: string;

  beforeAll(() => {
    tmp = tempDir();
    key = secretFile(tmp.dir);
  });
  afterAll(() => tmp?.cleanup());

  /** A company seeded at a branch and brought through one delta, so that the branch holds a spare generation. */
  async function twoGenerations(name: string): Promise<{ src: string; dest: string; state: string; served: Served }> {
    const src = path.join(tmp.dir, `${name}-src`, 'acme');
    await makeCompany(src, 16, 31);
    const served = await startServe(['--secret', key, '--company', `acme=${src}`]);
    const dest = path.join(tmp.dir, `${name}-dst`, 'acme');
    fs.mkdirSync(path.dirname(dest));
    const pull = async () => {
      const r = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json']);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout);
    };
    await pull();
    await mutateCompany(src, 4);
    const first = await pull();
    // The first delta has no spare yet: every changed file starts as a whole copy.
    expect(first.spareFiles).toBe(0);
    return { src, dest, state: path.join(path.dirname(dest), '.acme.snapferry'), served };
  }

  const pullJson = async (served: Served, dest: string, env?: NodeJS.ProcessEnv) => {
    const r = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json'], { env });
    return { r, j: r.code === 0 ? JSON.parse(r.stdout) : undefined };
  };
  const sizeOf = (dir: string, names: string[]) => names.reduce((a, n) => a + fs.statSync(path.join(dir, n)).size, 0);

  it('the next delta rewrites the replaced files where they differ and lands the exact generation', async () => {
    const { src, dest, state, served } = await twoGenerations('reuse');
    try {
      for (const n of BIG) expect(fs.statSync(path.join(state, 'spare', n)).nlink).toBe(1);
      await mutateCompany(src, 5);
      const { r, j } = await pullJson(served, dest);
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
      expect(j.spareFiles).toBeGreaterThanOrEqual(BIG.length);
      // Without spares every changed big file would be written whole; with them, only what differs from two
      // generations back (here, on a small company with two mid-file inserts, about a quarter).
      expect(j.bytesWritten).toBeLessThan(sizeOf(src, BIG) / 2);
      // --no-spare: the next delta copies, and the commit keeps no spare.
      await mutateCompany(src, 6);
      const r2 = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json', '--no-spare']);
      expect(r2.code, r2.stderr).toBe(0);
      const j2 = JSON.parse(r2.stdout);
      expect(j2.spareFiles).toBe(0);
      expect(j2.bytesWritten).toBeGreaterThan(sizeOf(src, BIG));
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
      expect(fs.readdirSync(state).sort()).toEqual(['applied.json', 'applied.manifest', 'applied.stats']);
    } finally {
      await served.stop();
    }
  });

  it('a replaced file that a process still holds open is not rewritten: that reader keeps its bytes', async () => {
    const { src, dest, state, served } = await twoGenerations('held');
    const held = path.join(state, 'spare', 'Company.900');
    const before = createHash('sha256').update(fs.readFileSync(held)).digest('hex');
    // A real reader: opens the file, says so, and on any input hashes what it reads through its descriptor.
    const reader = spawn(
      process.execPath,
      [
        '-e',
        `const fs=require('fs'),c=require('crypto');const fd=fs.openSync(process.argv[1],'r');console.log('open');
         process.stdin.once('data',()=>{const h=c.createHash('sha256'),b=Buffer.alloc(1<<20);let p=0,n;
         while((n=fs.readSync(fd,b,0,b.length,p))>0){h.update(b.subarray(0,n));p+=n}console.log(h.digest('hex'));process.exit(0)});`,
        held,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    try {
      let out = '';
      reader.stdout!.on('data', (d) => (out += d));
      const deadline = Date.now() + 20_000;
      while (!out.includes('open') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(out).toContain('open');
      await mutateCompany(src, 5);
      const { r, j } = await pullJson(served, dest);
      expect(r.code, r.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
      // The held file was copied whole; the other three big files and the journal were rewritten.
      expect(j.spareFiles).toBe(BIG.length);
      reader.stdin!.write('hash\n');
      // 'close', not 'exit': the hash it printed is read by then.
      await new Promise((r) => reader.once('close', r));
      expect(out.trim().split('\n')[1]).toBe(before);
    } finally {
      reader.kill('SIGKILL');
      await served.stop();
    }
  });

  it('a delta on spares killed before its commit leaves DIR exactly the old generation; resumed, it fetches nothing again', async () => {
    const { src, dest, state, served } = await twoGenerations('kill');
    try {
      // The spare holds only files no other path shares: never DIR's own inodes.
      const spareFiles = (fs.readdirSync(path.join(state, 'spare'), { recursive: true }) as string[]).map((n) => path.join(state, 'spare', n));
      for (const f of spareFiles) expect(fs.lstatSync(f).isDirectory() || fs.lstatSync(f).nlink === 1, f).toBe(true);
      await mutateCompany(src, 5);
      // A file the first delta did not change (so it has no spare) changes now as well.
      const master = (fs.readdirSync(src, { recursive: true }) as string[])
        .filter((n) => n.endsWith('.xml') && fs.existsSync(path.join(dest, n)))
        .find((n) => !fs.existsSync(path.join(state, 'spare', n)))!;
      expect(master).toBeDefined();
      fs.appendFileSync(path.join(src, master), 'VCH999999999|2026-11-30|Ledger 7|Sales|1.00|INR|appended\n');
      const oldGen = treeFingerprint(dest);
      const killed = await pullJson(served, dest, { SNAPFERRY_FAULT_KILL_AT: 'commit' });
      expect(killed.r.signal).toBe('SIGKILL');
      expect(fingerprintDiff(oldGen, treeFingerprint(dest))).toEqual([]);
      const { r, j } = await pullJson(served, dest);
      expect(r.code, r.stderr).toBe(0);
      expect(j.chunksFetched).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    } finally {
      await served.stop();
    }
  });

  it('a read-only folder of the company (555) does not stop later deltas for a branch without root', async () => {
    // Produced for real: the pulls run without the capabilities that override file permissions (NO_DAC_OVERRIDE, as
    // root) or as the user the tests run as. Before, the second delta failed for good: "permission denied" taking the
    // spare out of the read-only folder, and a commit that had to unlink there failed after its swap.
    const src = path.join(tmp.dir, 'ro-src', 'acme');
    fs.mkdirSync(path.join(src, 'archive'), { recursive: true });
    fs.writeFileSync(path.join(src, 'archive', 'ledger.dat'), Buffer.alloc(600_000, 1));
    fs.writeFileSync(path.join(src, 'archive', 'closed-2025.dat'), Buffer.alloc(300_000, 2));
    fs.chmodSync(path.join(src, 'archive'), 0o555);
    const served = await startServe(['--secret', key, '--company', `acme=${src}`]);
    const dest = path.join(tmp.dir, 'ro-dst', 'acme');
    fs.mkdirSync(path.dirname(dest));
    try {
      const spares: number[] = [];
      for (let day = 0; day < 4; day++) {
        if (day > 0) {
          const fd = fs.openSync(path.join(src, 'archive', 'ledger.dat'), 'r+');
          fs.writeSync(fd, Buffer.from(`day ${day}`), 0, undefined, day * 100_000);
          fs.closeSync(fd);
        }
        const r = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json'], { wrap: NO_DAC_OVERRIDE });
        expect(r.code, `day ${day}: ${r.stderr}`).toBe(0);
        spares.push(JSON.parse(r.stdout).spareFiles);
        expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest)), `day ${day}`).toEqual([]);
      }
      // From the second delta on, the changed file is rewritten from its spare.
      expect(spares.slice(2).every((n) => n >= 1), `spare files used per day: ${spares.join(', ')}`).toBe(true);
    } finally {
      await served.stop();
      fs.chmodSync(path.join(src, 'archive'), 0o755);
    }
  });

  it('a resumed delta whose spare record was lost meanwhile rebuilds those files from copies, exactly', async () => {
    const { src, dest, state, served } = await twoGenerations('lost');
    try {
      await mutateCompany(src, 5);
      const killed = await pullJson(served, dest, { SNAPFERRY_FAULT_KILL_AT: 'commit' });
      expect(killed.r.signal).toBe('SIGKILL');
      fs.rmSync(path.join(state, 'spare.manifest'));
      const { r, j } = await pullJson(served, dest);
      expect(r.code, r.stderr).toBe(0);
      expect(j.chunksFetched).toBeGreaterThan(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    } finally {
      await served.stop();
    }
  });
});
