/**
 * The serving site's scan cache on disk (serve --cache-dir): what each file's chunks were at a given size, mtime,
 * ctime and inode, plus the generation counter, so that a restarted site re-reads only files that changed and keeps
 * numbering generations where it left off. A file that does not decode, or was made for another folder or other chunk
 * parameters, is ignored (the site then simply reads everything once).
 */
import fs from 'node:fs';
import { Writer, Reader, ChunkArrays } from '../manifest/manifest.js';
import { idWords } from '../manifest/idindex.js';
import type { ChunkParams } from '../chunk/chunker.js';
import { writeFileDurable } from '../store/state.js';

/** One cached file. */
export interface CachedFile {
  size: number;
  mtimeNs: bigint;
  ctimeNs: bigint;
  ino: bigint;
  lens: Uint32Array;
  ids: BigUint64Array;
}

/** What the cache file holds. */
export interface ScanCacheData {
  root: string;
  params: ChunkParams;
  generation: number;
  rootHash: string;
  files: Map<string, CachedFile>;
}

const MAGIC = Buffer.from('SFC1');

/** Writes the cache atomically. */
export function saveScanCache(file: string, d: ScanCacheData): void {
  const w = new Writer();
  w.bytes(MAGIC);
  w.str(d.root);
  w.varint(d.params.minSize);
  w.varint(d.params.avgSize);
  w.varint(d.params.maxSize);
  w.varint(d.generation);
  w.str(d.rootHash);
  w.varint(d.files.size);
  for (const [p, f] of d.files) {
    w.str(p);
    w.varint(f.size);
    w.i64(f.mtimeNs);
    w.i64(f.ctimeNs);
    w.u64(f.ino);
    w.varint(f.lens.length);
    const words = idWords(f.ids);
    for (let i = 0; i < f.lens.length; i++) {
      w.varint(f.lens[i]!);
      w.u64At(words, i);
    }
  }
  writeFileDurable(file, w.finish());
}

/** Reads the cache for this folder and these parameters, or undefined. */
export function loadScanCache(file: string, root: string, params: ChunkParams): ScanCacheData | undefined {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch {
    return undefined;
  }
  try {
    const r = new Reader(buf);
    if (!Buffer.from(r.bytes(4)).equals(MAGIC)) return undefined;
    const savedRoot = r.str(4096);
    const p = { minSize: r.varint(), avgSize: r.varint(), maxSize: r.varint() };
    if (savedRoot !== root || p.minSize !== params.minSize || p.avgSize !== params.avgSize || p.maxSize !== params.maxSize) return undefined;
    const generation = r.varint();
    const rootHash = r.str(128);
    const n = r.varint();
    const files = new Map<string, CachedFile>();
    const arrays = new ChunkArrays();
    for (let k = 0; k < n; k++) {
      const path = r.str(4096);
      const size = r.varint();
      const mtimeNs = r.i64();
      const ctimeNs = r.i64();
      const ino = r.u64();
      const c = r.varint(r.remaining);
      const { lens, ids } = arrays.take(c);
      const words = idWords(ids);
      for (let i = 0; i < c; i++) {
        lens[i] = r.varint();
        r.u64Into(words, i);
      }
      files.set(path, { size, mtimeNs, ctimeNs, ino, lens, ids });
    }
    return { root, params, generation, rootHash, files };
  } catch {
    return undefined;
  }
}
