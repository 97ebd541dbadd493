/**
 * An unbounded hand-over from one producer to the consumers of an async iterable: the producer
 * pushes items as they become ready and closes the channel (or fails it) when there are no
 * more; a consumer (a `for await` loop, or {@linkcode ./limit.ts}'s `forEachLimited`) takes them
 * in order, waiting while the channel is empty. Staging uses it to fetch a cart's files while
 * the archive is still being asked for the sizes of the rest.
 *
 * @example
 * ```ts
 * import { Channel } from "./channel.ts";
 * const sized = new Channel<number>();
 * sized.push(1);
 * sized.push(2);
 * sized.close();
 * for await (const n of sized) console.log(n); // 1, 2
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

  /** No more items will come: the consumer ends once it has taken those pushed. */
  close(): void {
    this.#closed = true;
    this.#wakeUp();
  }

  /** No more items will come, because of `error`: the consumer's next take throws it. */
  fail(error: unknown): void {
    this.#failure ??= { error };
    this.#closed = true;
    this.#wakeUp();
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
        yield item;
        continue;
      }
      if (this.#closed) return;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}
