/** What a site's address looks like (no I/O, no ws: the CLI checks arguments with it before loading either). */

/**
 * Whether `s` is written as a site URL, ws:// or wss:// in any case (a scheme is case-insensitive: WS://HOST:PORT, as
 * copied from a document that capitalised it, is the same site); whether it parses is the caller's next check.
 */
export function isSiteUrl(s: string): boolean {
  return /^wss?:\/\//i.test(s);
}
