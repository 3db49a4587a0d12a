/**
 * The identity of a file as the branch records it after writing it: inode and ctime. Written by the finishing jobs and
 * the commit, compared by every later check that trusts a file without reading it (pull, unchanged re-pull, spare,
 * resume); one format, so that a writer and a reader can never disagree.
 */
import type { BigIntStats } from 'node:fs';

/** "ino:ctimeNs" of a file's stats (taken with `{ bigint: true }`). */
export function inodeStamp(st: BigIntStats): string {
  return `${st.ino}:${st.ctimeNs}`;
}

/** Seconds since the epoch with microsecond precision, as utimes takes them, from nanoseconds. */
export function utimesSeconds(ns: bigint): number {
  return Number(ns / 1000n) / 1e6;
}
