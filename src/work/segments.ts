/**
 * Chunk lists made in pieces: the chunkSegment jobs that chunk a whole file, one per segment (the scanner's big files,
 * and repair or adopt chunking a branch's own files), and the joining of pieces into one pair of arrays. Type imports
 * only: a pull that never chunks (an unchanged re-pull) loads no job code or zstd.
 */
import { ChunkParams, SEGMENT_SIZE } from '../chunk/chunker.js';
import type { ChunkSegmentResult, Job } from './tasks.js';

/** The chunkSegment jobs of a whole file of `size` bytes, one per segment, all queued on `pool` at once. */
export function chunkSegmentsOf(pool: { run<T>(job: Job): Promise<T> }, file: string, size: number, params: ChunkParams): Array<Promise<ChunkSegmentResult>> {
  const segs: Array<Promise<ChunkSegmentResult>> = [];
  for (let off = 0; off < size; off += SEGMENT_SIZE) {
    segs.push(pool.run<ChunkSegmentResult>({ kind: 'chunkSegment', path: file, offset: off, length: Math.min(SEGMENT_SIZE, size - off), params }));
  }
  return segs;
}

/** The chunk lists `parts` (null ones skipped) one after the other, in one pair of arrays. */
export function joinChunkLists(parts: ReadonlyArray<ChunkSegmentResult | null>): ChunkSegmentResult {
  let n = 0;
  for (const p of parts) if (p) n += p.lens.length;
  const lens = new Uint32Array(n);
  const ids = new BigUint64Array(n);
  let k = 0;
  for (const p of parts) {
    if (!p) continue;
    lens.set(p.lens, k);
    ids.set(p.ids, k);
    k += p.lens.length;
  }
  return { lens, ids };
}
