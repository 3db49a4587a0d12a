/**
 * Peers that never authenticate cannot write the site's log without bound. Each refused handshake (garbage, a wrong
 * proof, a version from elsewhere) was one log line: one process opening connections as fast as the site refused them
 * wrote about 250 lines (24 KB) a second here, 2 GB a day into whatever keeps serve's stderr, and it needs no secret.
 *
 * What must hold: a few refusals a minute are logged one by one (an operator still sees who is knocking), the rest
 * counted and said in one line (at the latest when the site stops); a real pull still completes.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { tempDir, secretFile, runCli, startServe, Served } from '../helpers.js';
import { RawWs, sleep } from './netfault.js';

const FLOOD = 200;

describe('a flood of refused handshakes against a real site', () => {
  let tmp: ReturnType<typeof tempDir>;
  let keyFile: string;
  let served: Served;

  beforeAll(async () => {
    tmp = tempDir('sf-preauth-log-');
    keyFile = secretFile(tmp.dir);
    const company = path.join(tmp.dir, 'acme');
    fs.mkdirSync(company);
    fs.writeFileSync(path.join(company, 'ledger.dat'), randomBytes(10_000));
    served = await startServe(['--secret', keyFile, '--company', `acme=${company}`]);
  });

  afterAll(async () => {
    await served?.stop();
    tmp?.cleanup();
  });

  it(`${FLOOD} garbage handshakes: a bounded number of log lines, one that counts the rest, and the site still serves`, async () => {
    const port = Number(new URL(served.url).port);
    let done = 0;
    // 8 at a time, each until the site has closed it (bounded: the site ends a refused peer in ~0.1 s).
    const one = async () => {
      const ws = await RawWs.open(port);
      ws.send(randomBytes(64));
      await Promise.race([ws.closed, sleep(5000)]);
      ws.destroy();
      done++;
    };
    const workers = Array.from({ length: 8 }, async () => {
      while (done < FLOOD) await one();
    });
    await Promise.all(workers);
    await sleep(300);
    const refusalLines = () => served.stderr().split('\n').filter((l) => / session from 127\.0\.0\.1 ended: /.test(l));
    expect(refusalLines().length, 'refusals logged one by one').toBeLessThanOrEqual(20);
    expect(refusalLines().length).toBeGreaterThan(0);

    const dest = path.join(tmp.dir, 'branch', 'acme');
    fs.mkdirSync(path.dirname(dest));
    const r = await runCli(['pull', served.url, 'acme', dest, '--secret', keyFile], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);

    // The rest is said in one line, at the latest as the site stops.
    await served.stop();
    const summary = served.stderr().split('\n').filter((l) => /more connection\(s\) that did not authenticate/.test(l));
    expect(summary, served.stderr().slice(-2000)).toHaveLength(1);
    const counted = Number(/(\d+) more connection/.exec(summary[0]!)![1]);
    expect(counted + refusalLines().length).toBeGreaterThanOrEqual(FLOOD - 8);
  });
});
