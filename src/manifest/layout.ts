/**
 * The flat chunk layout of a manifest: every chunk occurrence of every file numbered in manifest order (a "global
 * chunk index"), with its entry, offset, length and id. Both ends derive the same numbering from the same manifest,
 * so a request names chunks by number instead of by id. Pure.
 */
import type { Manifest } from './manifest.js';

export interface Layout {
  /** Number of chunk occurrences. */
  total: number;
  /** First global index of each entry (entries without chunks get the index their chunks would have). */
  entryStart: Uint32Array;
  /** Per occurrence: entry index, offset in file, length, id. */
  entry: Uint32Array;
  offset: Float64Array;
  len: Uint32Array;
  id: BigUint64Array;
}

/** Computes the layout of a manifest. */
export function layoutOf(m: Manifest): Layout {
  let total = 0;
  for (const e of m.entries) total += e.lens?.length ?? 0;
  const entryStart = new Uint32Array(m.entries.length + 1);
  const entry = new Uint32Array(total);
  const offset = new Float64Array(total);
  const len = new Uint32Array(total);
  const id = new BigUint64Array(total);
  let g = 0;
  m.entries.forEach((e, ei) => {
    entryStart[ei] = g;
    const lens = e.lens; // read once: a PackedEntry makes a view at each read
    if (!lens) return;
    // Whole-array copies: reading ids one by one would make a BigInt per chunk.
    len.set(lens, g);
    id.set(e.ids!, g);
    entry.fill(ei, g, g + lens.length);
    let o = 0;
    for (let i = 0; i < lens.length; i++, g++) {
      offset[g] = o;
      o += lens[i]!;
    }
  });
  entryStart[m.entries.length] = g;
  return { total, entryStart, entry, offset, len, id };
}

/** Where chunks are read from: per chunk, its file (index into paths), offset, length and expected id. */
export interface ChunkSources {
  paths: string[];
  pathIdx: Uint32Array;
  offsets: Float64Array;
  lens: Uint32Array;
  ids: BigUint64Array;
}

/**
 * The sources of chunks `gs` (global indexes, in the order given) of a layout whose entry ei is at `absPath(ei)`: the
 * shape of the jobs that read chunks from a company (readPack, storeChunks).
 */
export function chunkSources(layout: Layout, absPath: (ei: number) => string, gs: ArrayLike<number>): ChunkSources {
  const n = gs.length;
  const src: ChunkSources = { paths: [], pathIdx: new Uint32Array(n), offsets: new Float64Array(n), lens: new Uint32Array(n), ids: new BigUint64Array(n) };
  const pathIndex = new Map<number, number>();
  for (let k = 0; k < n; k++) {
    const g = gs[k]!;
    const ei = layout.entry[g]!;
    let pi = pathIndex.get(ei);
    if (pi === undefined) {
      pi = src.paths.push(absPath(ei)) - 1;
      pathIndex.set(ei, pi);
    }
    src.pathIdx[k] = pi;
    src.offsets[k] = layout.offset[g]!;
    src.lens[k] = layout.len[g]!;
    src.ids[k] = layout.id[g]!;
  }
  return src;
}
