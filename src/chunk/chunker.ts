/**
 * Content-defined chunking (FastCDC-style gear hash with normalized chunking). Pure: bytes in, cut lengths out.
 *
 * Files are cut in independent segments of SEGMENT_SIZE bytes (a forced cut at every segment boundary) so that one
 * large file can be chunked by several workers at once. The cost is small: an insert shifts content only across a
 * few segment boundaries, each of which adds at most two changed chunks to a delta.
 */

/** Chunking parameters. All sizes in bytes. */
export interface ChunkParams {
  minSize: number;
  avgSize: number;
  maxSize: number;
}

/**
 * Defaults. Measured against 64 KiB chunks (16/64/256 KiB) on the reference company, by hand: a first delta moved
 * 15.9 MB against 21.3 MB (rsync 23.3 MB), for 3.6x the chunk count (a site serving 4 GiB peaked 27 MiB higher).
 */
export const DEFAULT_CHUNK_PARAMS: ChunkParams = { minSize: 4 << 10, avgSize: 16 << 10, maxSize: 64 << 10 };

/**
 * The levels a site chooses from by the company's size: the defaults, then each four times larger. Up to 32 GiB a
 * company has no more chunks than a 2 GiB one at 16 KiB, so every table kept per chunk (the manifest's lists, the
 * layouts, the site's store index, the branch's plan) stays the size it is at 2 GiB: memory does not grow with the
 * company (Syncthing bounds its block lists the same way, with block sizes by file size). Beyond 32 GiB counts grow
 * again: 1 MiB is the largest chunk a manifest may carry.
 * The cost is in deltas of large companies: a changed page takes a larger chunk with it (patched, so mostly only its
 * changed blocks travel; 64 KiB chunks moved 21.3 MB against 15.9 MB for the 1 GiB reference change).
 */
export const CHUNK_LEVELS: readonly ChunkParams[] = [
  DEFAULT_CHUNK_PARAMS,
  { minSize: 16 << 10, avgSize: 64 << 10, maxSize: 256 << 10 },
  { minSize: 64 << 10, avgSize: 256 << 10, maxSize: 1 << 20 },
];

/** Largest company (bytes of files) chunked at level k when no level is in use yet: 2 GiB, 8 GiB, then unbounded. */
function levelLimit(k: number): number {
  return k >= CHUNK_LEVELS.length - 1 ? Infinity : 2 ** 31 * 4 ** k;
}

/**
 * Chunk parameters for a company of `totalBytes` bytes of files. `current` is the level in use (the last scan's, or
 * the saved scan cache's): it is kept while the company stays within twice its bounds, so a company that hovers about
 * a bound does not change level back and forth (a change makes every chunk new: the site stores the company again and
 * the next delta patches every file). Parameters that are not one of the levels (a caller's own) are always kept.
 */
export function chunkParamsFor(totalBytes: number, current?: ChunkParams): ChunkParams {
  const c = current ? CHUNK_LEVELS.findIndex((l) => sameChunkParams(l, current)) : -1;
  if (current && c < 0) return current;
  if (c >= 0 && totalBytes <= 2 * levelLimit(c) && (c === 0 || totalBytes > levelLimit(c - 1) / 2)) return CHUNK_LEVELS[c]!;
  let k = 0;
  while (totalBytes > levelLimit(k)) k++;
  return CHUNK_LEVELS[k]!;
}

/** Chooses chunk parameters from a company's bytes of files and the parameters in use; chunkParamsFor is the site's. */
export type ChunkPolicy = (totalBytes: number, current?: ChunkParams) => ChunkParams;

/** Whether two parameter sets are the same. */
export function sameChunkParams(a: ChunkParams, b: ChunkParams): boolean {
  return a.minSize === b.minSize && a.avgSize === b.avgSize && a.maxSize === b.maxSize;
}

/** Files are chunked in independent segments of this size (a multiple of every maxSize we use). */
export const SEGMENT_SIZE = 4 << 20;

/** 256 pseudo-random 32-bit gear values from a fixed seed: part of the chunk identity, never change it. */
const GEAR: Int32Array = (() => {
  const table = new Int32Array(256);
  let state = 0x9e3779b9 | 0;
  for (let i = 0; i < 256; i++) {
    // splitmix32
    state = (state + 0x9e3779b9) | 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    table[i] = z ^ (z >>> 16);
  }
  return table;
})();

/** A mask with `bits` bits set, taken from the top of the word: those bits depend on the last 32 bytes seen. */
function topMask(bits: number): number {
  return bits <= 0 ? 0 : (0xffffffff << (32 - bits)) | 0;
}

function log2(n: number): number {
  return Math.round(Math.log2(n));
}

/**
 * Finds the cut points of one segment.
 * @param data the segment's bytes (a whole segment: chunking restarts at its first byte)
 * @returns the chunk lengths, in order, summing to data.length
 */
export function chunkLengths(data: Uint8Array, params: ChunkParams = DEFAULT_CHUNK_PARAMS): number[] {
  const { minSize, avgSize, maxSize } = params;
  const bits = log2(avgSize);
  // Normalized chunking: a harder mask before the average size, an easier one after it.
  const maskHard = topMask(bits + 2);
  const maskEasy = topMask(bits - 2);
  const gear = GEAR;
  const out: number[] = [];
  const n = data.length;
  let start = 0;
  while (start < n) {
    const remaining = n - start;
    if (remaining <= minSize) {
      out.push(remaining);
      break;
    }
    const end = start + Math.min(remaining, maxSize);
    const normal = start + Math.min(remaining, avgSize);
    let i = start + minSize;
    let h = 0;
    let cut = end;
    for (; i < normal; i++) {
      h = ((h << 1) + gear[data[i]!]!) | 0;
      if ((h & maskHard) === 0) {
        cut = i + 1;
        break;
      }
    }
    if (cut === end) {
      for (; i < end; i++) {
        h = ((h << 1) + gear[data[i]!]!) | 0;
        if ((h & maskEasy) === 0) {
          cut = i + 1;
          break;
        }
      }
    }
    out.push(cut - start);
    start = cut;
  }
  return out;
}

/** Checks parameters a peer or user supplied. */
export function validateChunkParams(p: ChunkParams): boolean {
  const pow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
  return (
    pow2(p.avgSize) &&
    p.minSize >= 256 &&
    p.minSize < p.avgSize &&
    p.avgSize < p.maxSize &&
    p.maxSize <= 1 << 20 &&
    SEGMENT_SIZE % p.maxSize === 0
  );
}
