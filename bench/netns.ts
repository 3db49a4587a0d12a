/**
 * The two links the e2e scenarios run over.
 *
 * - loopback: both ends in the bench's own network namespace, 127.0.0.1.
 * - shaped: two network namespaces the bench creates (`sfb-a-SFX` serving side, `sfb-b-SFX` branch side) joined by a
 *   veth pair with 10.199.N.1 / 10.199.N.2 (addresses that exist only inside those namespaces), each end shaped with
 *   `tc qdisc add dev VETH root tbf rate 100mbit burst 32kbit latency 50ms`. Both namespaces (and so the veth pair)
 *   are deleted when the bench ends, including on SIGINT/SIGTERM and errors (see util.atExit).
 *
 * Making namespaces needs root or CAP_NET_ADMIN; without it the shaped runs are skipped with a printed note.
 */
import { spawnSync } from 'node:child_process';
import { atExit, LinkName } from './util.js';

export interface Link {
  name: LinkName;
  /** Namespace of the serving side (snapferry serve, rsync client, tar sender); undefined = the bench's own. */
  srcNs?: string;
  /** Namespace of the branch side (snapferry pull, rsync daemon, tar receiver). */
  dstNs?: string;
  /** Address of the serving side, as the branch side reaches it. */
  srcAddr: string;
  /** Address of the branch side, as the serving side reaches it. */
  dstAddr: string;
  /** Human description for the report. */
  describe: string;
}

export const LOOPBACK: Link = { name: 'loopback', srcAddr: '127.0.0.1', dstAddr: '127.0.0.1', describe: '127.0.0.1, both ends on this machine' };

export const SHAPED_RATE = '100mbit';

function run(args: string[]): { ok: boolean; err: string } {
  const r = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8', timeout: 15_000 });
  return { ok: r.status === 0, err: (r.stderr || r.error?.message || '').trim() };
}

export interface ShapedLink extends Link {
  destroy(): void;
}

/** Creates the shaped link, or returns why it cannot. */
export function makeShapedLink(): ShapedLink | { skip: string } {
  if (process.platform !== 'linux') return { skip: 'network namespaces need Linux' };
  const hasIp = run(['ip', '-V']);
  if (!hasIp.ok) return { skip: 'the `ip` command (iproute2) is missing: run scripts/install-deps.sh' };
  if (!run(['tc', '-V']).ok) return { skip: 'the `tc` command (iproute2) is missing: run scripts/install-deps.sh' };

  const sfx = (process.pid % 46656).toString(36) + Math.floor(Math.random() * 1296).toString(36);
  const nsA = `sfb-a-${sfx}`;
  const nsB = `sfb-b-${sfx}`;
  const vA = `sfba${sfx}`;
  const vB = `sfbb${sfx}`;
  const net = 1 + (process.pid % 250);
  const addrA = `10.199.${net}.1`;
  const addrB = `10.199.${net}.2`;

  let destroyed = false;
  const destroy = (): void => {
    if (destroyed) return;
    destroyed = true;
    run(['ip', 'netns', 'del', nsA]);
    run(['ip', 'netns', 'del', nsB]);
    run(['ip', 'link', 'del', vA]); // only exists if setup failed before it was moved
  };
  const remove = atExit(`delete namespaces ${nsA} ${nsB}`, destroy);

  const steps: string[][] = [
    ['ip', 'netns', 'add', nsA],
    ['ip', 'netns', 'add', nsB],
    ['ip', 'link', 'add', vA, 'type', 'veth', 'peer', 'name', vB],
    ['ip', 'link', 'set', vA, 'netns', nsA],
    ['ip', 'link', 'set', vB, 'netns', nsB],
    ['ip', '-n', nsA, 'addr', 'add', `${addrA}/24`, 'dev', vA],
    ['ip', '-n', nsB, 'addr', 'add', `${addrB}/24`, 'dev', vB],
    ['ip', '-n', nsA, 'link', 'set', 'lo', 'up'],
    ['ip', '-n', nsB, 'link', 'set', 'lo', 'up'],
    ['ip', '-n', nsA, 'link', 'set', vA, 'up'],
    ['ip', '-n', nsB, 'link', 'set', vB, 'up'],
    ['ip', 'netns', 'exec', nsA, 'tc', 'qdisc', 'add', 'dev', vA, 'root', 'tbf', 'rate', SHAPED_RATE, 'burst', '32kbit', 'latency', '50ms'],
    ['ip', 'netns', 'exec', nsB, 'tc', 'qdisc', 'add', 'dev', vB, 'root', 'tbf', 'rate', SHAPED_RATE, 'burst', '32kbit', 'latency', '50ms'],
  ];
  for (const s of steps) {
    const r = run(s);
    if (!r.ok) {
      destroy();
      remove();
      const hint = /Operation not permitted|Permission denied/i.test(r.err) ? ' (needs root or CAP_NET_ADMIN)' : '';
      return { skip: `cannot make the shaped link: \`${s.join(' ')}\` failed: ${r.err || 'error'}${hint}` };
    }
  }
  return {
    name: 'shaped',
    srcNs: nsA,
    dstNs: nsB,
    srcAddr: addrA,
    dstAddr: addrB,
    describe: `veth ${addrA} (ns ${nsA}) <-> ${addrB} (ns ${nsB}), tbf ${SHAPED_RATE} burst 32kbit latency 50ms each way`,
    destroy: () => {
      destroy();
      remove();
    },
  };
}
