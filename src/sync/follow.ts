/**
 * Follow: after the seed (or delta), stay connected and apply each new generation the site announces. The site
 * announces a generation other than the one we hold as soon as it is settled, including changes made while the seed
 * ran, so nothing is missed and nothing is rescanned. A dropped link reconnects with capped backoff.
 */
import fs from 'node:fs';
import os from 'node:os';
import { connect, SecureSession } from './session.js';
import { pull, PullOptions, PullResult } from './pull.js';
import { MsgType, decodeJson } from '../protocol/messages.js';
import { SnapferryError, ErrorCodes, toSnapferryError } from '../util/errors.js';
import { StatePaths, DirLock, takeFollowLock } from '../store/state.js';
import { prepareSpare } from '../store/spare.js';

/** Options of follow: those of pull, plus a stop signal. */
export interface FollowOptions extends PullOptions {
  signal?: AbortSignal;
  /** Keep-alive interval while waiting (default 15 s). */
  pingMs?: number;
  /** Longest backoff between reconnects (default 30 s). */
  maxBackoffMs?: number;
}

/** Waits ms, or less if the signal aborts (at once if it already has); leaves no listener behind. */
const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const onAbort = () => {
      clearTimeout(t);
      resolve();
    };
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/**
 * Errors after which a follower tries again later instead of ending: the link's (retryable ones, a lost connection, a
 * timeout), a site busy or unable to hold a file still for now (a long posting run), and, once DIR holds a
 * generation, DIR's lock held by another command (a nightly verify --deep, a repair).
 */
function passing(e: SnapferryError, holding: boolean): boolean {
  if (e.retryable || e.code === ErrorCodes.CONNECTION_LOST || e.code === ErrorCodes.TIMEOUT) return true;
  if (e.code === ErrorCodes.BUSY || e.code === ErrorCodes.UNSTABLE_FILE) return true;
  return holding && e.code === ErrorCodes.DIR_LOCKED;
}

/** How many times in a row a follower that never reached its site tries before it says so and ends. */
const FIRST_CONTACT_TRIES = 4;

/** A wait that had its session up this long was a healthy link: its end (a drop, a change) starts the backoff anew. */
const HEALTHY_MS = 2_000;

/**
 * Waits until the site holds a generation other than `have`. Resolves false if stopped. `link.since` is set when the
 * site has taken the FOLLOW (performance.now(): a step of the wall clock does not make a link look healthy or not).
 */
async function waitForChange(opts: FollowOptions, have: string, link: { since: number }): Promise<boolean> {
  let session: SecureSession | undefined;
  try {
    session = await connect(opts.url, { secret: opts.secret, peerId: opts.peerId ?? os.hostname(), timeoutMs: opts.timeoutMs, signal: opts.signal });
    await session.sendJson(MsgType.FOLLOW, { company: opts.company, have });
    link.since = performance.now();
    // A stop asked for while connecting: the abort event has fired already and would not fire again.
    if (opts.signal?.aborted) return false;
    const s = session;
    const ping = setInterval(() => void s.send(Buffer.from([MsgType.PING])).catch(() => undefined), opts.pingMs ?? 15_000);
    const onAbort = () => s.close('stopped');
    opts.signal?.addEventListener('abort', onAbort);
    try {
      for (;;) {
        const msg = await s.recv((opts.pingMs ?? 15_000) * 4);
        if (msg[0] === MsgType.CHANGED) {
          // One naming the generation held is no change (a site that said so each time had the follower pull in a loop).
          if (decodeJson<{ rootHash?: unknown }>(msg).rootHash === have) continue;
          return true;
        }
        if (msg[0] !== MsgType.PONG) throw new SnapferryError(ErrorCodes.PROTOCOL, `unexpected message type ${msg[0]} while following`);
      }
    } finally {
      clearInterval(ping);
      opts.signal?.removeEventListener('abort', onAbort);
    }
  } catch (err) {
    if (opts.signal?.aborted) return false;
    throw err;
  } finally {
    session?.close();
  }
}

/**
 * While waiting, makes the spare generation a seed leaves without (store/spare.ts, prepareSpare), so that the first
 * delta costs what later ones do. Holds DIR's lock until stopped; `stop()` aborts it and resolves once it let go.
 */
function sparePrep(opts: FollowOptions): { stop: () => Promise<void> } {
  const ac = new AbortController();
  const done = (async () => {
    const paths = new StatePaths(opts.dir);
    const lock = new DirLock(paths);
    try {
      await lock.acquire(0);
    } catch {
      return; // busy: another command has DIR
    }
    try {
      const n = await prepareSpare(paths, ac.signal);
      if (n > 0) opts.log?.(`prepared ${n} spare file(s) for the next delta`);
    } catch (err) {
      opts.log?.(`no spare prepared: ${toSnapferryError(err).message}`);
    } finally {
      lock.release();
    }
  })();
  return {
    stop: async () => {
      ac.abort();
      await done;
    },
  };
}

/**
 * Pulls, then keeps DIR current until the signal aborts. `onApplied` gets each pull that changed DIR (the first one
 * always). Final errors (authentication, unknown company, hostile data, disk full) end follow; passing ones (see
 * `passing`) are tried again with capped backoff.
 */
export async function follow(opts: FollowOptions, onApplied: (r: PullResult) => void): Promise<'stopped' | 'stopped-in-pull'> {
  let backoff = 500;
  let unreachable = 0;
  // Whether any pull has had a session with the site: one lost in the middle of the seed is waited for, not taken for
  // a wrong address (each later pull, never connected itself, fails at once while the site is down).
  let reached = false;
  const pullOpts: FollowOptions = {
    ...opts,
    keepSpares: opts.spare !== false,
    onConnected: () => {
      reached = true;
      opts.onConnected?.();
    },
  };
  let have: string | undefined;
  let first = true;
  // Backoff is for attempts that fail in a row: one that follows a long healthy wait starts again at the shortest
  // (doubled across isolated drops hours apart, every later drop kept the branch away 30 s).
  const link = { since: 0 };
  const afterWait = () => {
    if (link.since > 0 && performance.now() - link.since >= HEALTHY_MS) backoff = 500;
    link.since = 0;
  };
  let prep: { stop: () => Promise<void> } | undefined;
  const stopPrep = async () => {
    await prep?.stop();
    prep = undefined;
  };
  // One follower per DIR, taken before the first pull where DIR is a copy already, else right after it.
  const paths = new StatePaths(opts.dir);
  let releaseFollow = takeFollowLock(paths);
  let followTaken: unknown;
  try {
    while (!opts.signal?.aborted) {
      try {
        if (have === undefined || (await waitForChange(opts, have, link))) {
          afterWait();
          await stopPrep();
          if (opts.signal?.aborted) break;
          const r = await untilStopped(pull(pullOpts), opts.signal);
          if (!r) {
            // The pull goes on in the background until the caller ends the process: as safe as a kill -9 there.
            opts.log?.('stopped during a pull; the next pull resumes it');
            return 'stopped-in-pull';
          }
          // Told of a change, the pull found none (a change undone at once, or a site that says so each time): the
          // next wait begins after the backoff, so that such a site cannot keep the follower pulling in a loop.
          const nothing = !first && r.unchanged;
          if (first || !r.unchanged) onApplied(r);
          first = false;
          have = r.rootHash;
          if (!releaseFollow) {
            // Another follower took DIR while this one seeded it: final, not a lock to wait out (see passing).
            try {
              releaseFollow = takeFollowLock(paths);
            } catch (err) {
              followTaken = err;
              break;
            }
          }
          if (opts.spare !== false) prep = sparePrep(opts);
          if (nothing) {
            await sleep(backoff, opts.signal);
            backoff = Math.min(opts.maxBackoffMs ?? 30_000, backoff * 2);
            continue;
          }
        }
        backoff = 500;
        unreachable = 0;
      } catch (err) {
        const e = toSnapferryError(err);
        afterWait();
        // DIR holds a generation when this process applied one, or when it was started on a copy (a restarted
        // follower meeting a nightly verify is to wait, not end).
        if (!passing(e, have !== undefined || fs.existsSync(paths.appliedJson))) throw e;
        // A site never reached at all (a wrong address, most likely) is reported, as a one-shot pull does, after a few
        // tries (the network may come up a little after the follower).
        if (!reached && e.code === ErrorCodes.UNREACHABLE && ++unreachable >= FIRST_CONTACT_TRIES) throw e;
        opts.log?.(`${e.message}; trying again in ${(backoff / 1000).toFixed(1)} s`);
        await sleep(backoff, opts.signal);
        backoff = Math.min(opts.maxBackoffMs ?? 30_000, backoff * 2);
      }
    }
  } finally {
    await stopPrep();
    releaseFollow?.();
  }
  if (followTaken) throw followTaken;
  return 'stopped';
}

/** The pull's result, or undefined as soon as the signal aborts (a pull takes no signal: it may run for hours). */
function untilStopped(p: Promise<PullResult>, signal?: AbortSignal): Promise<PullResult | undefined> {
  if (!signal) return p;
  if (signal.aborted) {
    p.catch(() => undefined);
    return Promise.resolve(undefined);
  }
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      p.catch(() => undefined);
      resolve(undefined);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (r) => {
        signal.removeEventListener('abort', onAbort);
        resolve(r);
      },
      (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}
