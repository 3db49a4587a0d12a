/**
 * Live data: the company is open in its application while it is served. A writer process (a real child process
 * appending to Journal.log every few milliseconds) keeps one file from holding still; the site then delays the
 * generation for its settle timeout and reports the file by name. Once the writer stops, the pull completes exactly.
 */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { tempDir, secretFile, runCli, startServe, treeFingerprint, fingerprintDiff } from '../helpers.js';
import { makeCompany } from '../../src/gen/company.js';

describe('live data at the serving site', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());

  it('a file that will not hold still is reported by name; once it settles the copy is exact', async () => {
    const src = path.join(tmp.dir, 'src', 'acme');
    await makeCompany(src, 4, 41);
    const key = secretFile(tmp.dir);
    const served = await startServe(['--secret', key, '--company', `acme=${src}`, '--settle-timeout', '2']);
    const journal = path.join(src, 'Journal.log');
    // Appends for at most 30 s, whatever happens to the test.
    const writer = spawn(
      process.execPath,
      ['-e', `const fs=require('fs');const end=Date.now()+30000;const t=setInterval(()=>{fs.appendFileSync(${JSON.stringify(journal)},'VCH|live|'+Date.now()+'\\n');if(Date.now()>end)clearInterval(t)},3)`],
      { stdio: 'ignore' },
    );
    try {
      await new Promise((r) => setTimeout(r, 300));
      const dest = path.join(tmp.dir, 'b1', 'acme');
      fs.mkdirSync(path.dirname(dest));
      const busy = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--retries', '0']);
      expect(busy.code).not.toBe(0);
      expect(busy.stderr).toMatch(/Journal\.log kept changing.*SNAPFERRY_E_UNSTABLE_FILE/);
      expect(fs.existsSync(dest)).toBe(false);
      writer.kill('SIGKILL');
      await new Promise((r) => writer.once('exit', r));
      const ok = await runCli(['pull', served.url, 'acme', dest, '--secret', key, '--json']);
      expect(ok.code, ok.stderr).toBe(0);
      expect(fingerprintDiff(treeFingerprint(src), treeFingerprint(dest))).toEqual([]);
    } finally {
      writer.kill('SIGKILL');
      await served.stop();
    }
  });
});
