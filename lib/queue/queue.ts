/**
 * The work queue: routes publish the id of a cart that needs work, workers consume it.
 * A message only says "look at this cart"; the store holds the truth, so a message that is
 * delivered twice or late does no harm (the worker's claim decides). The in-process queue
 * (`./memory.ts`) is the embedded default; RabbitMQ (`./amqp.ts`) is for several processes;
 * `openQueue` in `./open.ts` picks one from the config.
 *
 * @module
 */
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
