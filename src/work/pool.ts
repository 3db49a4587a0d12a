/**
 * A fixed pool of worker threads for CPU-bound jobs (chunk, hash, compress, decompress, verify, write), so that both
 * cores work while the main thread runs the sockets. Callers bound how many jobs they have in flight; the pool only
 * queues.
 */
import { Worker } from 'node:worker_threads';
import os from 'node:os';
import { SnapferryError, ErrorCodes, ErrorCode, toSnapferryError } from '../util/errors.js';
import type { Job } from './tasks.js';

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

interface Slot {
  worker: Worker;
  busy: number;
  /** Resolves once the worker has loaded its modules (or exited). */
  ready: Promise<void>;
}

/** Collects the ArrayBuffers of a message that can be moved rather than copied (never a shared Buffer pool slab). */
export function transferables(value: unknown, out: ArrayBuffer[] = [], depth = 0): ArrayBuffer[] {
  if (depth > 3 || value === null || typeof value !== 'object') return out;
  if (ArrayBuffer.isView(value)) {
    const b = value.buffer;
    if (b instanceof ArrayBuffer && value.byteOffset === 0 && value.byteLength === b.byteLength && !out.includes(b)) out.push(b);
    return out;
  }
  for (const v of Object.values(value as Record<string, unknown>)) transferables(v, out, depth + 1);
  return out;
}

/** Default number of worker threads: the machine's cores, at most 4. */
export function defaultPoolSize(): number {
  return Math.max(1, Math.min(4, os.availableParallelism()));
}

/** A pool of worker threads running `runJob` from tasks.ts. */
export class WorkerPool {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;

  /** `exactPaths`: a site's pool, whose jobs name files by paths without links (JobContext.exactPaths). */
  constructor(size = defaultPoolSize(), opts: { exactPaths?: boolean } = {}) {
    const url = new URL('./worker.js', import.meta.url);
    for (let i = 0; i < size; i++) {
      // Small young generations: the workers' garbage is large buffers, and big semi-spaces only raise peak memory.
      const worker = new Worker(url, {
        resourceLimits: { maxYoungGenerationSizeMb: 4, maxOldGenerationSizeMb: 256 },
        workerData: { exactPaths: opts.exactPaths === true },
      });
      worker.unref();
      let loaded!: () => void;
      const slot: Slot = { worker, busy: 0, ready: new Promise<void>((r) => (loaded = r)) };
      worker.once('exit', (code) => {
        loaded();
        // A worker that ends while the pool is open (killed by an out-of-memory limit, or one that could not load its
        // modules: EMFILE) would be given jobs that nobody answers, and its caller would wait for ever.
        if (!this.closed) this.broken(new SnapferryError(ErrorCodes.INTERNAL, `a worker thread ended (exit code ${code})`));
      });
      worker.on('message', (msg: { id: number; ok: boolean; value?: unknown; code?: ErrorCode; message?: string; ready?: boolean }) => {
        if (msg.ready) return loaded();
        slot.busy--;
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        if (msg.ok) p.resolve(msg.value);
        else p.reject(new SnapferryError(msg.code ?? ErrorCodes.INTERNAL, msg.message ?? 'worker job failed'));
      });
      worker.on('error', (err: NodeJS.ErrnoException) => {
        // A worker that dies takes its jobs with it: fail them all rather than hang.
        // Out of descriptors (its code, or only its message, says so) is told as everywhere else (toSnapferryError).
        const emfile = err.code === 'EMFILE' || /EMFILE/.test(err.message);
        this.broken(
          emfile
            ? toSnapferryError({ code: 'EMFILE', path: err.path } as NodeJS.ErrnoException, 'a worker thread could not start')
            : new SnapferryError(ErrorCodes.INTERNAL, `worker thread failed: ${err.message}`),
        );
      });
      this.slots.push(slot);
    }
  }

  /** Number of worker threads. */
  get size(): number {
    return this.slots.length;
  }

  /**
   * Runs a job on the least busy worker, or on worker `affinity % size` when given (jobs that write one file go to one
   * thread: two threads writing one file contend for its inode lock). Array buffers in the job are moved to the worker,
   * not copied.
   */
  run<T>(job: Job, transfer = true, affinity?: number): Promise<T> {
    if (this.closed) return Promise.reject(new SnapferryError(ErrorCodes.INTERNAL, 'worker pool closed'));
    if (this.failure) return Promise.reject(this.failure);
    let slot = this.slots[0]!;
    if (affinity !== undefined) slot = this.slots[affinity % this.slots.length]!;
    else for (const s of this.slots) if (s.busy < slot.busy) slot = s;
    const id = this.nextId++;
    slot.busy++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      slot.worker.postMessage({ id, job }, transfer ? transferables(job) : []);
    });
  }

  /** The first worker's death: every pending job fails with it, and every later one at once. */
  private broken(err: SnapferryError): void {
    this.failure ??= err;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }
  private failure?: SnapferryError;

  /** Runs a job once on every worker (per-thread state: see ReleaseSegmentJob). */
  runOnEach<T>(job: Job): Promise<T[]> {
    return Promise.all(this.slots.map((_, i) => this.run<T>(job, false, i)));
  }

  /** Stops the workers; pending jobs fail. */
  async close(): Promise<void> {
    this.closed = true;
    // Not while a worker still imports its modules: terminating it then leaks the descriptor of the file being read
    // (a follower's pool per pull: 133 after 235 generations). Referenced meanwhile: the workers are unreferenced, and
    // a process with nothing else to wait for would end in the middle of this close.
    await Promise.all(
      this.slots.map((s) => {
        s.worker.ref();
        return s.ready.then(() => s.worker.terminate());
      }),
    );
    for (const p of this.pending.values()) p.reject(new SnapferryError(ErrorCodes.INTERNAL, 'worker pool closed'));
    this.pending.clear();
  }
}

/** A Uint8Array that crossed a thread boundary, seen as a Buffer again without copying. */
export function asBuffer(u8: Uint8Array): Buffer {
  return Buffer.isBuffer(u8) ? u8 : Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}
