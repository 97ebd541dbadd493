/**
 * File-system calls made synchronously while they are quick, asynchronously once one was not.
 *
 * An asynchronous call (`Deno.rename`) hands the work to an I/O thread and wakes this one when
 * it is done; for a small file on a local disk those two thread wake-ups cost more than the
 * call itself (staging 10,000 small files, they were the largest single cost of the staging
 * thread). A synchronous call blocks this thread instead, which is harmless while calls take
 * microseconds and harmful on a slow volume (a network file system), where one blocked call
 * stalls every download the thread runs. So {@linkcode QuickFs} times each synchronous call
 * and keeps a moving average (each call weighs a tenth, so a thread that was merely preempted
 * once does not count as a slow disk); when the average passes `slowMs` it makes asynchronous
 * calls for `backoffMs` before it tries again.
 *
 * @example
 * ```ts
 * import { QuickFs } from "./quick_fs.ts";
 * const fs = new QuickFs();
 * await fs.call(() => Deno.renameSync("a.part", "a"), () => Deno.rename("a.part", "a"));
 * ```
 *
 * @module
 */

/** Chooses, call by call, between the synchronous and the asynchronous form of an fs call. */
export class QuickFs {
  #asyncUntil = -Infinity;
  #averageMs = 0;

  /**
   * A chooser that starts with synchronous calls.
   *
   * @param slowMs synchronous calls slower than this on average switch to asynchronous calls
   * @param backoffMs for this long
   * @param now the clock (tests replace it)
   */
  constructor(
    readonly slowMs = 2,
    readonly backoffMs = 60_000,
    readonly now: () => number = () => performance.now(),
  ) {}

  /** Whether the next call runs synchronously. */
  get quick(): boolean {
    return this.now() >= this.#asyncUntil;
  }

  /** The moving average of the synchronous calls' durations, in milliseconds. */
  get averageMs(): number {
    return this.#averageMs;
  }

  /** Runs `sync` (timed) while calls are quick, else `async`. Errors pass through as thrown. */
  async call<T>(sync: () => T, async: () => Promise<T>): Promise<T> {
    if (!this.quick) return await async();
    const start = this.now();
    try {
      return sync();
    } finally {
      this.#averageMs = 0.9 * this.#averageMs + 0.1 * (this.now() - start);
      if (this.#averageMs > this.slowMs) {
        this.#asyncUntil = this.now() + this.backoffMs;
        this.#averageMs = 0; // a fresh start when synchronous calls are tried again
      }
    }
  }
}
