/**
 * The base copies of a delta's changed files (each starts in next/ as its old version or its spare), run a few at a
 * time once started, each with its own promise so that a patch waits only for the file it writes to. The plan queues
 * them; transfer() starts them after the disk-space check. (Starting them while the plan was still being made was
 * measured twice with identical first deltas on 2 cores and gained nothing: 2.00 vs 2.05 s, 1.34 vs 1.26 s.)
 */

/** One file's start: what `run` does with it is the puller's business. */
export interface BaseStep {
  /** Entry index in the new manifest. */
  ei: number;
  /** The file the copy is made from (DIR's version), or where the spare was before the plan moved it into next/. */
  from: string;
  /** A spare already moved into next/ (no bytes to copy). */
  spare: boolean;
  /** Bytes the step copies (0 for a spare). */
  bytes: number;
}

/** A bounded queue of base steps with one promise per entry, so that a chunk waits only for its own file's base. */
export class BaseCopies {
  private readonly queue: BaseStep[] = [];
  private readonly ready = new Map<number, Promise<void>>();
  private readonly settleOf = new Map<number, { resolve: () => void; reject: (e: unknown) => void }>();
  private readonly inFlight = new Set<Promise<void>>();
  private started = false;
  private failure: unknown;

  constructor(
    private readonly run: (step: BaseStep) => Promise<void>,
    private readonly limit = 4,
  ) {}

  /** Queues a step (it starts at once when the queue has been started and a slot is free). */
  add(step: BaseStep): void {
    let resolve!: () => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
    promise.catch(() => undefined); // reported through done(); a patch waiting on it sees it too
    this.ready.set(step.ei, promise);
    this.settleOf.set(step.ei, { resolve, reject });
    this.queue.push(step);
    this.all.push(step);
    if (this.failure !== undefined) this.dropQueued();
    this.pump();
  }

  /**
   * Lets the queued steps run (until then they only wait), largest first: the copy of the largest changed file is
   * what a first delta waits for longest, and started last it ends last (measured on a 1 GiB company: its 483 MB
   * ledger started fifth, once a slot was free).
   */
  start(): void {
    if (!this.started) this.queue.sort((a, b) => b.bytes - a.bytes);
    this.started = true;
    this.pump();
  }

  /** Every step added, in order (the disk-space check counts them). */
  get steps(): readonly BaseStep[] {
    return this.all;
  }
  private readonly all: BaseStep[] = [];

  /** Resolves when entry `ei`'s base is in place; undefined when it has no base step. */
  readyOf(ei: number): Promise<void> | undefined {
    return this.ready.get(ei);
  }

  /** Starts the queue and resolves when every step added so far is done; rejects with the first failure. */
  async done(): Promise<void> {
    this.start();
    await Promise.allSettled([...this.ready.values()]);
    if (this.failure !== undefined) throw this.failure;
  }

  /**
   * Stops starting new steps and waits for those running (never rejects): after a failure nothing may still write
   * into next/ when the attempt ends, or a retry that clears next/ would race with it.
   */
  async settle(): Promise<void> {
    this.failure ??= new Error('base copies stopped');
    this.dropQueued();
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /** Steps that will not run now: their waiters learn of the failure instead of waiting forever. */
  private dropQueued(): void {
    for (const step of this.queue.splice(0)) this.settleOf.get(step.ei)!.reject(this.failure);
  }

  private pump(): void {
    while (this.started && this.failure === undefined && this.inFlight.size < this.limit && this.queue.length > 0) {
      const step = this.queue.shift()!;
      const s = this.settleOf.get(step.ei)!;
      const t: Promise<void> = this.run(step)
        .then(s.resolve, (err) => {
          this.failure ??= err;
          s.reject(err);
          this.dropQueued();
        })
        .finally(() => {
          this.inFlight.delete(t);
          this.pump();
        });
      this.inFlight.add(t);
    }
  }
}
