/**
 * One queue for the slices of work that several requests split over turns of the event loop (the
 * items of `POST /notify/batch`), so that the loop's delay is bounded by a time budget per turn and
 * not by the number of requests in flight.
 *
 * Each request used to take one slice per turn on its own (`await setImmediate` between slices): with
 * four batches in flight, one turn ran four slices back to back (400 items, 12-16 ms here) before the
 * sockets were flushed or another request was read. From this queue a turn runs the slices that were
 * ready when it began, in arrival order, until `budgetMs` has passed (at least one slice per turn, so
 * the work always moves on); the rest wait for the next turn, after the I/O of this one. A request's
 * next slice joins the end of the queue, so concurrent batches take turns.
 */
export class TurnQueue {
  private ready: (() => void)[] = [];
  private scheduled = false;

  constructor(private readonly budgetMs: number) {}

  /** Slices waiting for a turn. */
  get waiting(): number {
    return this.ready.length;
  }

  /**
   * Runs `slice` in a coming turn and resolves with what it returns (or rejects with what it throws).
   * The slice runs synchronously in the queue's turn: the work it starts is what the budget counts.
   */
  run<T>(slice: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.ready.push(() => {
        try {
          resolve(slice());
        } catch (err) {
          reject(err);
        }
      });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.turn);
  }

  private readonly turn = (): void => {
    this.scheduled = false;
    const deadline = performance.now() + this.budgetMs;
    // Only the slices ready when the turn began: a slice queued by this turn's work waits for the next.
    const batch = this.ready;
    this.ready = [];
    let i = 0;
    while (i < batch.length) {
      (batch[i++] as () => void)();
      if (performance.now() >= deadline) break;
    }
    if (i < batch.length) this.ready = batch.slice(i).concat(this.ready);
    if (this.ready.length > 0) this.schedule();
  };
}
