/**
 * A hand-over from one producer to the consumer of an async iterable: the producer pushes
 * items as they become ready (waiting with {@linkcode Channel.room} when it is far enough
 * ahead) and closes the channel (or fails it) when there are no more; the consumer (a
 * `for await` loop, or {@linkcode ./limit.ts}'s `forEachLimited`) takes them in order,
 * waiting while the channel is empty. Staging uses it to fetch a cart's files while
 * the archive is still being asked for the sizes of the rest.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { Channel } from "./channel.ts";
 * const sized = new Channel<number>();
 * sized.push(1);
 * sized.push(2);
 * sized.close();
 * const taken: number[] = [];
 * for await (const n of sized) taken.push(n);
 * assert.deepEqual(taken, [1, 2]);
 * ```
 * @module
 */

/** A queue of items that one producer fills and one consumer iterates. */
export class Channel<T> implements AsyncIterable<T> {
  #items: T[] = [];
  #head = 0;
  #closed = false;
  #failure: { error: unknown } | null = null;
  #wake: (() => void) | null = null;
  #roomWaiters: { most: number; resolve: () => void }[] = [];

  /** Items pushed and not yet taken. */
  get size(): number {
    return this.#items.length - this.#head;
  }

  /** Adds an item. Throws when the channel was closed or failed (a producer's mistake). */
  push(item: T): void {
    if (this.#closed) throw new Error("Channel.push after close(): the producer ended already");
    this.#items.push(item);
    this.#wakeUp();
  }

  /**
   * Resolves once at most `most` items wait to be taken (at once when that is so already, or
   * when the channel has ended); rejects with the reason when `signal` aborts first. A
   * producer awaits it to stay at most that far ahead of its consumer.
   */
  room(most: number, signal?: AbortSignal): Promise<void> {
    if (this.size <= most || this.#closed) return Promise.resolve();
    signal?.throwIfAborted();
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.#roomWaiters = this.#roomWaiters.filter((w) => w !== waiter);
        reject(signal!.reason);
      };
      const waiter = {
        most,
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
      };
      this.#roomWaiters.push(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** No more items will come: the consumer ends once it has taken those pushed. */
  close(): void {
    this.#closed = true;
    this.#wakeUp();
    this.#makeRoom();
  }

  /** No more items will come, because of `error`: the consumer's next take throws it. */
  fail(error: unknown): void {
    this.#failure ??= { error };
    this.#closed = true;
    this.#wakeUp();
    this.#makeRoom();
  }

  /** Takes the items in the order they were pushed, waiting for more until the channel ends. */
  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    for (;;) {
      if (this.#failure) throw this.#failure.error;
      if (this.#head < this.#items.length) {
        const item = this.#items[this.#head];
        this.#items[this.#head++] = undefined as T; // let it go
        if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
          this.#items = this.#items.slice(this.#head);
          this.#head = 0;
        }
        this.#makeRoom();
        yield item;
        continue;
      }
      if (this.#closed) return;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
  }

  /** Lets the producers waiting in {@linkcode Channel.room} go on, where there is room now. */
  #makeRoom(): void {
    if (this.#roomWaiters.length === 0) return;
    const size = this.size;
    const waiting = this.#roomWaiters;
    this.#roomWaiters = [];
    for (const waiter of waiting) {
      if (this.#closed || size <= waiter.most) waiter.resolve();
      else this.#roomWaiters.push(waiter);
    }
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}
