/**
 * The embedded queue: cart ids in a list in this process, for a cartd that runs API and
 * worker in one process.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MemoryQueue } from "./memory.ts";
 * const queue = new MemoryQueue();
 * await queue.publish("42");
 * await queue.publish("42"); // a cart that waits already is not queued twice
 * assert.equal(queue.length, 1);
 * const seen: string[] = [];
 * await queue.consume(async (cartId) => void seen.push(cartId), 4);
 * await queue.close();
 * assert.deepEqual(seen, ["42"]);
 * ```
 * @module
 */
import { errorMessage, log } from "../util/log.ts";
import type { Queue, QueueHandler } from "./queue.ts";

/** The embedded queue: a list in this process, deduplicated while a cart waits. */
export class MemoryQueue implements Queue {
  #waiting: string[] = [];
  #queued = new Set<string>();
  #handler: QueueHandler | null = null;
  #prefetch = 1;
  #running = 0;
  #closed = false;

  publish(cartId: string): Promise<void> {
    if (this.#closed) return Promise.reject(new Error("The queue is closed"));
    if (!this.#queued.has(cartId)) {
      this.#queued.add(cartId);
      this.#waiting.push(cartId);
      this.#pump();
    }
    return Promise.resolve();
  }

  consume(handler: QueueHandler, prefetch: number): Promise<void> {
    this.#handler = handler;
    this.#prefetch = Math.max(1, prefetch);
    this.#pump();
    return Promise.resolve();
  }

  /** Messages not yet handed to the handler. */
  get length(): number {
    return this.#waiting.length;
  }

  #pump(): void {
    while (
      this.#handler && !this.#closed && this.#running < this.#prefetch && this.#waiting.length
    ) {
      const cartId = this.#waiting.shift()!;
      this.#queued.delete(cartId);
      this.#running++;
      this.#handler(cartId).catch((e) => {
        // As AmqpQueue does: the cart stays as the handler left it; the sweep finds it again.
        log.warn("queue handler failed", { cart: cartId, error: errorMessage(e) });
      }).finally(() => {
        this.#running--;
        this.#pump();
      });
    }
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#handler = null;
    return Promise.resolve();
  }
}
