/**
 * The work queue: routes publish the id of a cart that needs work, workers consume it.
 * A message only says "look at this cart"; the store holds the truth, so a message that is
 * delivered twice or late does no harm (the worker's claim decides). The in-process queue
 * ({@linkcode MemoryQueue}) is the embedded default; RabbitMQ ({@linkcode ./queue_amqp.ts})
 * is for several processes.
 *
 * @module
 */
import type { QueueConfig } from "./config.ts";

/** Handles one message; the message is acknowledged when the promise settles. */
export type QueueHandler = (cartId: string) => Promise<void>;

/** A durable (or in-process) queue of cart ids. */
export interface Queue {
  /** Asks a worker to look at the cart. */
  publish(cartId: string): Promise<void>;
  /**
   * Delivers messages to `handler`, at most `prefetch` at once, until {@linkcode close}.
   * A message is acknowledged only after `handler` settles.
   */
  consume(handler: QueueHandler, prefetch: number): Promise<void>;
  /** Stops consuming and releases the connection. */
  close(): Promise<void>;
}

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
      this.#handler(cartId).catch(() => {}).finally(() => {
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

/** Opens the queue the config names. */
export async function openQueue(config: QueueConfig): Promise<Queue> {
  if (config.kind === "memory") return new MemoryQueue();
  const { AmqpQueue } = await import("./queue_amqp.ts");
  return await AmqpQueue.connect(config.url, { queueName: config.queue });
}
