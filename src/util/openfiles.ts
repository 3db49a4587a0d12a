/** Open files kept by key, a bounded number of them. */

/**
 * Descriptors (or handles) kept open by key, at most `limit` of them: the least recently used is closed (`closeOne`)
 * when one more is opened. Who reads or writes thousands of small files in a row (a pack of 100-byte vouchers, a
 * delta's read-ahead) would otherwise hold one for each until the end, and run the process out of them (EMFILE).
 */
export class OpenFiles<K, V> {
  private readonly open = new Map<K, V>();
  constructor(
    private readonly limit: number,
    private readonly closeOne: (v: V) => void,
  ) {}

  /** The descriptor kept for `key`, made by `opener` if there is none. */
  get(key: K, opener: () => V): V {
    let v = this.open.get(key);
    if (v !== undefined) {
      // Most recently used last (a Map keeps insertion order).
      this.open.delete(key);
      this.open.set(key, v);
      return v;
    }
    v = opener();
    if (this.open.size >= this.limit) {
      const [oldKey, old] = this.open.entries().next().value as [K, V];
      this.open.delete(oldKey);
      this.closeOne(old);
    }
    this.open.set(key, v);
    return v;
  }

  /** Those still open, forgotten here (the caller closes them). */
  takeAll(): V[] {
    const all = [...this.open.values()];
    this.open.clear();
    return all;
  }

  /** Closes every one still open. */
  close(): void {
    for (const v of this.takeAll()) this.closeOne(v);
  }
}
