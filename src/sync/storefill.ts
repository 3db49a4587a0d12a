/**
 * Fills a site's chunk store with the chunks of a generation it lacks: read, checked against their ids, compressed one
 * frame per chunk and appended by the worker threads, in file order (so a pull's pack is mostly one read).
 */
import type { Generation } from '../scan/scanner.js';
import { chunkSources, type Layout } from '../manifest/layout.js';
import { IdIndex, idWords } from '../manifest/idindex.js';
import type { WorkerPool } from '../work/pool.js';
import type { StoreChunksJob, StoreChunksResult } from '../work/tasks.js';
import { type ChunkStore, claimWrites, pendingWrites } from '../store/chunkstore.js';
import { diskReserve, diskSpace } from '../store/state.js';
import { selectRows } from '../util/columns.js';

/** Raw bytes per storeChunks job: large enough for few messages, small enough to keep the workers' buffers small. */
const JOB_BYTES = 2 << 20;

/** What a fill did. */
export interface FillResult {
  /** Chunks compressed and stored. */
  chunks: number;
  /** Their raw bytes. */
  bytes: number;
  /** Chunks left out because their file changed since the scan (the next generation stores them, if it still has them). */
  stale: number;
  /** Whether the fill stopped early because `current()` said the generation was superseded. */
  superseded: boolean;
  /** Set when the fill stopped to keep this much free on the store's filesystem (bytes). */
  reserveKept?: number;
}

/**
 * Stores every chunk of gen that store lacks, `pool.size` jobs at a time; stops early (between jobs) once current()
 * turns false, or before a job could take the store's filesystem below its reserve (diskReserve: the store is an
 * accelerator, the company's disk is not its own).
 */
export async function fillStore(
  store: ChunkStore,
  pool: WorkerPool,
  gen: Generation,
  layout: Layout,
  level: number,
  current: () => boolean,
): Promise<FillResult> {
  const words = idWords(layout.id);
  // The chunks the store lacks, counted first: the store's index and `seen` are sized once, to them.
  let missing = 0;
  for (let g = 0; g < layout.total; g++) if (!store.hasIn(words, g)) missing++;
  store.reserve(missing);
  const seen = new IdIndex(layout.id, missing);
  const result: FillResult = { chunks: 0, bytes: 0, stale: 0, superseded: false };
  const running = new Set<Promise<void>>();
  let failure: unknown;
  for (const job of jobsOf()) {
    if (!current()) {
      result.superseded = true;
      break;
    }
    while (running.size >= pool.size) await Promise.race(running);
    if (failure) break;
    // The job's arrays move to the worker (detached here): keep what the answer needs.
    const ids = job.ids.slice();
    const lens = job.lens.slice();
    let raw = 0;
    for (const l of job.lens) raw += l;
    // Every job in flight, of any fill on this disk, may write its raw size (incompressible data), and then some.
    const space = diskSpace(store.dir);
    const writes = raw + (64 << 10);
    if (space && space.free - pendingWrites(store.dir) - writes < diskReserve(space.total)) {
      result.reserveKept = diskReserve(space.total);
      break;
    }
    const release = claimWrites(store.dir, writes);
    const p: Promise<void> = pool
      .run<StoreChunksResult>(job)
      .then(async (r) => {
        const kept = storedOnly(ids, lens, r);
        result.stale += ids.length - kept.ids.length;
        if (!kept.ids.length) return;
        await store.add(r.segment, kept.ids, kept.lens, kept.offsets, kept.clens, kept.checks);
        result.chunks += kept.ids.length;
        for (const l of kept.lens) result.bytes += l;
      })
      .catch((err) => void (failure ??= err))
      .finally(() => {
        running.delete(p);
        release();
      });
    running.add(p);
  }
  await Promise.all(running);
  if (failure) throw failure;
  return result;

  /** The missing chunks, each once, in chunk order, as jobs of about JOB_BYTES. */
  function* jobsOf(): Generator<StoreChunksJob> {
    let gs: number[] = [];
    let bytes = 0;
    const make = (): StoreChunksJob => {
      const job: StoreChunksJob = { kind: 'storeChunks', ...chunkSources(layout, gen.absPath, gs), level, segDir: store.dir };
      gs = [];
      bytes = 0;
      return job;
    };
    for (let g = 0; g < layout.total; g++) {
      if (store.hasIn(words, g) || seen.add(g) !== -1) continue;
      gs.push(g);
      bytes += layout.len[g]!;
      if (bytes >= JOB_BYTES || gs.length >= 1024) yield make();
    }
    if (gs.length) yield make();
  }
}

/** The chunks of a storeChunks job that were stored (a file changed since the scan leaves its chunks out: clens 0). */
function storedOnly(ids: BigUint64Array, lens: Uint32Array, r: StoreChunksResult): Pick<StoreChunksResult, 'offsets' | 'clens' | 'checks'> & { ids: BigUint64Array; lens: Uint32Array } {
  const keep: number[] = [];
  for (let i = 0; i < ids.length; i++) if (r.clens[i] !== 0) keep.push(i);
  if (keep.length === ids.length) return { ids, lens, offsets: r.offsets, clens: r.clens, checks: r.checks };
  return { ids: selectRows(ids, keep), lens: selectRows(lens, keep), offsets: selectRows(r.offsets, keep), clens: selectRows(r.clens, keep), checks: selectRows(r.checks, keep) };
}
