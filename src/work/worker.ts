/** Worker thread entry: runs jobs from pool.ts and answers with their results or a typed error. */
import { parentPort } from 'node:worker_threads';
import { loadHasher } from '../chunk/hash.js';
import { Compressor, Decompressor } from './zstd.js';
import { runJob, Job, JobContext } from './tasks.js';
import { transferables } from './pool.js';
import { toSnapferryError } from '../util/errors.js';

const ctx: JobContext = {
  hasher: await loadHasher(),
  compressor: new Compressor(),
  decompressor: new Decompressor(),
};

parentPort!.on('message', (msg: { id: number; job: Job }) => {
  try {
    const value = runJob(ctx, msg.job);
    parentPort!.postMessage({ id: msg.id, ok: true, value }, transferables(value));
  } catch (err) {
    const e = toSnapferryError(err);
    parentPort!.postMessage({ id: msg.id, ok: false, code: e.code, message: e.message });
  }
});
