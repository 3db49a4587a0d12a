/** What a site's address looks like (no I/O, no ws: the CLI checks arguments with it before loading either). */

/** Whether `s` is written as a site URL, ws:// or wss:// (whether it parses is the caller's next check). */
export function isSiteUrl(s: string): boolean {
  return /^wss?:\/\//.test(s);
}
