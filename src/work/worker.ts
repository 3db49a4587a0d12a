/** Worker thread entry: runs jobs from pool.ts and answers with their results or a typed error. */
import { parentPort, workerData } from 'node:worker_threads';
import { loadHasher } from '../chunk/hash.js';
import { Compressor, Decompressor } from './zstd.js';
import { runJob, Job, JobContext } from './tasks.js';
import { transferables } from './pool.js';
import { toSnapferryError } from '../util/errors.js';
import { noteGarbage } from '../util/gc.js';

const ctx: JobContext = {
  hasher: await loadHasher(),
  compressor: new Compressor(),
  decompressor: new Decompressor(),
  exactPaths: (workerData as { exactPaths?: boolean } | null)?.exactPaths === true,
};

// Loaded: a terminate() from now on cannot cut an import's file read short (a leaked descriptor each time).
parentPort!.postMessage({ ready: true });

parentPort!.on('message', (msg: { id: number; job: Job }) => {
  try {
    const value = runJob(ctx, msg.job);
    const moved = transferables(value);
    parentPort!.postMessage({ id: msg.id, ok: true, value }, moved);
    noteGarbage(jobBytes(msg.job));
  } catch (err) {
    const e = toSnapferryError(err);
    parentPort!.postMessage({ id: msg.id, ok: false, code: e.code, message: e.message });
  }
});

/** Roughly how many bytes of buffers a job allocated or received. */
function jobBytes(job: Job): number {
  switch (job.kind) {
    case 'chunkSegment':
      return job.length;
    case 'chunkFiles':
      return job.sizes.reduce((a, b) => a + b, 0);
    case 'writePack':
      return job.payload.byteLength + job.rawLen;
    case 'makePatch':
      return job.runs.reduce((n, r) => n + r.lens.reduce((a, b) => a + b, 0), 0) * 2;
    case 'readPack':
    case 'storeChunks':
    case 'copyRanges': {
      let n = 0;
      for (const l of job.lens) n += l;
      return n * 2;
    }
    default:
      return 1 << 16;
  }
}
