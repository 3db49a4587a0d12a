/** Typed-array columns that grow: the compact per-file tables (scan cache, walk listing) keep no object per row. */

type Column = Uint8Array | Uint16Array | Uint32Array | Float64Array | BigInt64Array | BigUint64Array;

/** A copy of `column` with room for `rows` rows (rows >= its length). */
export function widen<T extends Column>(column: T, rows: number): T {
  const out = new (column.constructor as new (n: number) => T)(rows);
  out.set(column as never);
  return out;
}

/** A new column holding `column`'s rows at the indices in `rows`, in that order. */
export function selectRows<T extends Column>(column: T, rows: readonly number[]): T {
  const out = new (column.constructor as new (n: number) => T)(rows.length);
  rows.forEach((r, k) => (out[k] = column[r]!));
  return out;
}

/** The next capacity for columns holding `rows` rows: doubling, from 1024. */
export function nextCapacity(rows: number): number {
  return Math.max(1024, rows * 2);
}
