/**
 * The quick bench as a smoke test (issue 5: CI runs it, no thresholds): every scenario runs on small data against
 * the real peers, and the JSON has a measured row for each. Peers that are missing (no rsync, no root for
 * namespaces) are skipped by the bench with a note; then only snapferry's rows are required.
 */
import { describe, it, expect } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { ROOT, tempDir } from '../helpers.js';

function has(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('bench --quick', () => {
  it('runs every scenario and writes a row for each tool it could run', async () => {
    const tmp = tempDir('sf-bench-');
    try {
      const json = path.join(tmp.dir, 'out.json');
      const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, [path.join(ROOT, 'dist', 'bench', 'main.js'), '--quick', '--json', json, '--chart', path.join(tmp.dir, 'ratios.svg'), '--budget', '170', '--tmp', tmp.dir], { stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d) => (stdout += d));
        child.stderr.on('data', (d) => (stderr += d));
        const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
        child.on('close', (code) => {
          clearTimeout(timer);
          resolve({ code, stdout, stderr });
        });
      });
      expect(out.code, out.stderr).toBe(0);
      const rows = JSON.parse(fs.readFileSync(json, 'utf8')) as Array<{ scenario: string; link: string; tool: string; seconds: number | null; bytesOnWire: number | null }>;
      const have = (scenario: string, tool: string) => rows.some((r) => r.scenario === scenario && r.tool === tool && r.link === 'loopback' && typeof r.seconds === 'number');
      for (const s of ['seed', 'delta', 'delta-2', 'unchanged', 'verify', 'repair', 'small-seed', 'fanout-1']) expect(have(s, 'snapferry'), s).toBe(true);
      if (has('rsync')) for (const s of ['seed', 'delta', 'delta-2', 'unchanged', 'repair', 'small-seed']) expect(have(s, 'rsync'), s).toBe(true);
      expect(rows.some((r) => r.scenario.startsWith('micro:chunker'))).toBe(true);
      if (has('rsync')) expect(fs.readFileSync(path.join(tmp.dir, 'ratios.svg'), 'utf8')).toMatch(/^<svg|<\?xml/);
      expect(out.stdout).toMatch(/seed time snapferry\/rsync|rsync.*skipped/);
      // The machine's cost of a page of new file data, read before the runs (bench/pagecache.ts).
      expect(out.stdout).toMatch(/page cache: writing a new file \d+\.\d\d s\/GiB, again right after deleting it \d+\.\d\d s\/GiB/);
    } finally {
      tmp.cleanup();
    }
  }, 300_000);
});
