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

/**
 * Seconds since the epoch with microsecond precision, as utimes takes them, from nanoseconds. Half a microsecond away
 * from zero is added: libuv cuts the seconds it is given to whole microseconds, and a float a hair below the exact
 * value (1764686400.123457 held as ...123456999) lost one (a third of the files came out 1 us off).
 */
export function utimesSeconds(ns: bigint): number {
  const us = Number(ns / 1000n);
  return (us + (us < 0 ? -0.5 : 0.5)) / 1e6;
}

/**
 * A time for fs.utimes, futimes and lutimes: Node replaces a negative number (a stamp before 1970) with the current
 * time, and takes a numeric string as it is.
 */
export function utimesArg(seconds: number): number | string {
  return seconds < 0 ? String(seconds) : seconds;
}
