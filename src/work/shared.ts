/**
 * Runs jobs on a worker pool and on the calling thread at once. For a short read-bound task (verify --deep) the
 * calling thread would otherwise sit idle while the workers boot (~0.1 s each): here it takes jobs from the same queue
 * from the start, and the workers join in as soon as they are ready.
 */
import { loadHasher } from '../chunk/hash.js';
import { WorkerPool } from './pool.js';
import { Compressor, Decompressor } from './zstd.js';
import { Job, JobContext, runJob } from './tasks.js';

interface Queued {
  job: Job;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** A job queue served by the pool's workers (one job in flight each) and by this thread between event-loop turns. */
export class SharedRunner {
  private readonly queue: Queued[] = [];
  private head = 0;
  private inWorkers = 0;
  private localScheduled = false;

  /** `pool` may be undefined: then every job runs here. */
  constructor(
    private readonly ctx: JobContext,
    private readonly pool?: WorkerPool,
  ) {}

  /** A context for running jobs on this thread. */
  static async localContext(): Promise<JobContext> {
    return { hasher: await loadHasher(), compressor: new Compressor(), decompressor: new Decompressor() };
  }

  /** Queues a job; it runs on whichever thread is free first. */
  run<T>(job: Job): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ job, resolve: resolve as (v: unknown) => void, reject });
      this.kick();
    });
  }

  private take(): Queued | undefined {
    if (this.head >= this.queue.length) return undefined;
    const q = this.queue[this.head]!;
    this.queue[this.head++] = undefined as never;
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    return q;
  }

  private kick(): void {
    while (this.pool && this.inWorkers < this.pool.size) {
      const q = this.take();
      if (!q) break;
      this.inWorkers++;
      this.pool
        .run(q.job)
        .then(q.resolve, q.reject)
        .finally(() => {
          this.inWorkers--;
          this.kick();
        });
    }
    if (!this.localScheduled && this.head < this.queue.length) {
      this.localScheduled = true;
      // One job per turn, so the workers' answers (and new jobs) are taken in between.
      setImmediate(() => {
        this.localScheduled = false;
        const q = this.take();
        if (q) {
          try {
            q.resolve(runJob(this.ctx, q.job));
          } catch (err) {
            q.reject(err);
          }
        }
        this.kick();
      });
    }
  }
}
