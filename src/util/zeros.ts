/** Runs of zero bytes: what a sparse file's holes and a database's preallocated pages read as. */

const ZEROS = Buffer.alloc(64 << 10);

/** Whether every byte of `data` is zero (its ends first: data that is not seldom gets further). */
export function allZero(data: Uint8Array): boolean {
  if (data.length === 0 || data[0] !== 0 || data[data.length - 1] !== 0) return data.length === 0;
  const b = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  for (let o = 0; o < b.length; o += ZEROS.length) {
    const n = Math.min(ZEROS.length, b.length - o);
    if (!b.subarray(o, o + n).equals(ZEROS.subarray(0, n))) return false;
  }
  return true;
}
