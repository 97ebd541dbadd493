/**
 * Write-behind batching: items are collected and written together, when enough have come or
 * a short time has passed, so that a cart of 10,000 files costs tens of database commits
 * instead of 10,000.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { Batcher } from "./batcher.ts";
 * const written: number[][] = [];
 * const batch = new Batcher<number>(async (items) => void written.push(items), 2, 50);
 * for (const n of [1, 2, 3]) await batch.add(n); // 1 and 2 make a full batch
 * await batch.flush(); // 3 goes now rather than after 50 ms
 * assert.deepEqual(written, [[1, 2], [3]]);
 * ```
 * @module
 */

/** Collects items and hands them to `write` in batches. */
export class Batcher<T> {
  #items: T[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #writing: Promise<void> = Promise.resolve();
  #failure: { error: unknown } | null = null;

  /**
   * An empty batcher.
   *
   * @param write writes one batch; batches are written one after another, in order
   * @param maxItems a batch is written as soon as it has this many items
   * @param maxDelayMs …or this long after its first item came
   */
  constructor(
    readonly write: (items: T[]) => Promise<void>,
    readonly maxItems: number,
    readonly maxDelayMs: number,
  ) {}

  /** Adds an item; rejects with the error of an earlier batch that failed. */
  async add(item: T): Promise<void> {
    this.#throwIfFailed();
    this.#items.push(item);
    if (this.#items.length >= this.maxItems) {
      await this.#start();
    } else {
      this.#timer ??= setTimeout(() => void this.#start(), this.maxDelayMs);
    }
  }

  /** Writes what is collected and waits for every batch; throws a batch's error. */
  async flush(): Promise<void> {
    await this.#start();
    this.#throwIfFailed();
  }

  /** Drops what is collected and stops the timer (for work that was abandoned). */
  discard(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#items = [];
  }

  #throwIfFailed(): void {
    if (this.#failure) throw this.#failure.error;
  }

  #start(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const items = this.#items;
    this.#items = [];
    if (items.length) {
      this.#writing = this.#writing.then(() => this.write(items)).catch((error) => {
        this.#failure ??= { error };
      });
    }
    return this.#writing;
  }
}
