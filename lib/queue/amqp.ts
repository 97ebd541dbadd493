/**
 * The work queue on RabbitMQ (AMQP 0-9-1, through amqplib), for several cartd processes.
 *
 * - The queue is durable and every message persistent; `publish` uses publisher confirms, so
 *   it resolves only once the broker has taken the message, and it never drops one silently:
 *   during an outage it waits for the reconnection (up to `publishTimeoutMs`) and then throws.
 * - The consumer channel has a prefetch, and a message is acknowledged only after its handler
 *   settles (also when the handler throws: the store decides about retries; an unfinished cart
 *   is queued again by the workers' orphan sweep). If the connection dies first, the broker
 *   delivers the message again, to this or another consumer.
 * - When the connection or a channel is lost, the queue reconnects with a growing delay
 *   (1 s → 30 s), declares the queue again and resumes consuming with the same handler.
 *
 * @example
 * ```ts
 * import { AmqpQueue } from "./amqp.ts";
 * const queue = await AmqpQueue.connect("amqp://guest:guest@127.0.0.1:5672/");
 * await queue.consume(async (cartId) => console.log("work on", cartId), 4);
 * await queue.publish("5f0c…");
 * await queue.close();
 * ```
 * @module
 */
// @ts-types="@types/amqplib"
import amqp from "amqplib";
import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage } from "amqplib";
import { Buffer } from "node:buffer";
import type { Queue, QueueHandler } from "./queue.ts";
import { errorMessage, log } from "../util/log.ts";
import { backoffDelays, sleep } from "../util/backoff.ts";

/** Settings of {@linkcode AmqpQueue.connect}; all optional. */
export interface AmqpQueueOptions {
  /** The durable queue's name (default "cartd.carts"). */
  queueName?: string;
  /** First delay before a reconnection try, in ms (default 1000); it doubles each try. */
  reconnectInitialMs?: number;
  /** Longest delay between reconnection tries, in ms (default 30000). */
  reconnectMaxMs?: number;
  /**
   * How long `publish` (and the first `connect`) wait for the broker before throwing, in ms
   * (default 30000).
   */
  publishTimeoutMs?: number;
  /** AMQP heartbeat in seconds, to notice a dead connection (default 10). */
  heartbeatSeconds?: number;
}

/** One live connection with its channels. */
interface Link {
  generation: number;
  model: ChannelModel;
  publisher: ConfirmChannel;
  consumer: Channel | null;
  subscribing: Promise<void> | null;
}

/** Where the broker is, for messages (never the password). */
function brokerAddress(url: string): string {
  try {
    const u = new URL(url);
    const port = u.port || (u.protocol === "amqps:" ? "5671" : "5672");
    return `${u.hostname || "localhost"}:${port}`;
  } catch {
    return "(unparsable broker URL)";
  }
}

function withHeartbeat(url: string, seconds: number): string {
  if (/[?&]heartbeat=/.test(url)) return url;
  return url + (url.includes("?") ? "&" : "?") + `heartbeat=${seconds}`;
}

/** A RabbitMQ-backed {@linkcode Queue}; see the module documentation. */
export class AmqpQueue implements Queue {
  /** The RabbitMQ queue that carts are published to and consumed from. */
  readonly queueName: string;
  /** The broker's host and port, for messages (never the password). */
  readonly broker: string;
  readonly #url: string;
  readonly #reconnectInitialMs: number;
  readonly #reconnectMaxMs: number;
  readonly #publishTimeoutMs: number;

  #link: Link | null = null;
  #generation = 0;
  #closed = false;
  readonly #stop = new AbortController();
  #reconnecting: Promise<void> | null = null;
  #waiters = new Set<() => void>();

  #handler: QueueHandler | null = null;
  #prefetch = 1;
  #running = 0;
  #backlog: Array<() => void> = [];

  private constructor(url: string, options: AmqpQueueOptions) {
    this.queueName = options.queueName ?? "cartd.carts";
    this.broker = brokerAddress(url);
    this.#url = withHeartbeat(url, options.heartbeatSeconds ?? 10);
    this.#reconnectInitialMs = options.reconnectInitialMs ?? 1_000;
    this.#reconnectMaxMs = options.reconnectMaxMs ?? 30_000;
    this.#publishTimeoutMs = options.publishTimeoutMs ?? 30_000;
  }

  /**
   * Connects to the broker at `url` and declares the queue. Retries with a growing delay for
   * up to `publishTimeoutMs`, then throws an Error naming the broker's host and port.
   */
  static async connect(url: string, options: AmqpQueueOptions = {}): Promise<AmqpQueue> {
    const queue = new AmqpQueue(url, options);
    try {
      await queue.#open();
    } catch (e) {
      log.warn("cannot reach the message broker, retrying", {
        broker: queue.broker,
        error: errorMessage(e),
      });
      queue.#startReconnecting();
      try {
        await queue.#connected(Date.now() + queue.#publishTimeoutMs);
      } catch (e) {
        await queue.close();
        throw e;
      }
    }
    return queue;
  }

  /** True while a connection to the broker is up. */
  get connected(): boolean {
    return this.#link !== null;
  }

  async publish(cartId: string): Promise<void> {
    const deadline = Date.now() + this.#publishTimeoutMs;
    while (true) {
      const link = await this.#connected(deadline);
      try {
        await this.#confirmed(link, cartId, deadline);
        return;
      } catch (e) {
        if (this.#closed) throw new Error("The queue is closed", { cause: e });
        // Still connected: the broker refused the message (or we ran out of time).
        if (this.#link === link || Date.now() >= deadline) throw e;
        // The connection went away before the confirm: send again once reconnected.
        // (A message may then arrive twice; a duplicate is harmless, a lost one is not.)
      }
    }
  }

  #confirmed(link: Link, cartId: string, deadline: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `The message broker at ${this.broker} did not confirm a message within ` +
              `${Math.round(this.#publishTimeoutMs / 1000)} s`,
          ),
        );
      }, Math.max(0, deadline - Date.now()));
      try {
        link.publisher.sendToQueue(
          this.queueName,
          Buffer.from(cartId, "utf8"),
          { persistent: true, contentType: "text/plain" },
          (err: unknown) => {
            clearTimeout(timer);
            if (err) reject(err instanceof Error ? err : new Error(String(err)));
            else resolve();
          },
        );
      } catch (e) {
        clearTimeout(timer);
        reject(e);
      }
    });
  }

  async consume(handler: QueueHandler, prefetch: number): Promise<void> {
    if (this.#closed) throw new Error("The queue is closed");
    if (this.#handler) throw new Error("This queue already has a consumer");
    this.#handler = handler;
    this.#prefetch = Math.max(1, Math.floor(prefetch));
    const link = this.#link;
    if (link) {
      try {
        await this.#subscribe(link);
      } catch (e) {
        // The reconnection will subscribe again; only an open connection's failure matters.
        if (this.#link === link) throw e;
      }
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#handler = null;
    this.#backlog = [];
    this.#stop.abort();
    for (const wake of this.#waiters) wake();
    const link = this.#link;
    this.#link = null;
    this.#generation++;
    if (link) await this.#closeModel(link.model, "closing the queue");
    await this.#reconnecting;
  }

  /** Connects, opens the channels and declares the queue; subscribes when consuming. */
  async #open(): Promise<void> {
    const model = await amqp.connect(this.#url);
    const generation = ++this.#generation;
    model.on("error", (e: unknown) => {
      log.debug("message broker connection error", {
        broker: this.broker,
        error: errorMessage(e),
      });
    });
    model.on("close", (e: unknown) => this.#lost(generation, e ?? "connection closed"));
    model.on("blocked", (reason: unknown) => {
      log.warn("the message broker blocks publishing", {
        broker: this.broker,
        reason: String(reason),
      });
    });
    try {
      const publisher = await model.createConfirmChannel();
      this.#watch(publisher, generation, "publish channel");
      await publisher.assertQueue(this.queueName, { durable: true });
      if (this.#closed || generation !== this.#generation) {
        await this.#closeModel(model, "closed while opening");
        return;
      }
      const link: Link = { generation, model, publisher, consumer: null, subscribing: null };
      this.#link = link;
      if (this.#handler) await this.#subscribe(link);
    } catch (e) {
      if (this.#link?.generation === generation) this.#link = null;
      await this.#closeModel(model, "opening failed");
      throw e;
    }
    for (const wake of this.#waiters) wake();
  }

  #watch(channel: Channel, generation: number, what: string): void {
    channel.on("error", (e: unknown) => {
      log.debug(`message broker ${what} error`, { broker: this.broker, error: errorMessage(e) });
    });
    // After the connection's own close event, when that is the cause (it names the error).
    channel.on("close", () => queueMicrotask(() => this.#lost(generation, `${what} closed`)));
  }

  /** Opens the consumer channel on `link` (once). */
  #subscribe(link: Link): Promise<void> {
    if (link.subscribing) return link.subscribing;
    link.subscribing = (async () => {
      const channel = await link.model.createChannel();
      this.#watch(channel, link.generation, "consumer channel");
      await channel.assertQueue(this.queueName, { durable: true });
      await channel.prefetch(this.#prefetch);
      await channel.consume(
        this.queueName,
        (message: ConsumeMessage | null) => this.#deliver(link, channel, message),
        { noAck: false },
      );
      link.consumer = channel;
    })();
    return link.subscribing;
  }

  #deliver(link: Link, channel: Channel, message: ConsumeMessage | null): void {
    if (message === null) {
      // The broker cancelled the consumer (the queue was deleted, say): start afresh.
      this.#lost(link.generation, "the broker cancelled the consumer");
      this.#closeModel(link.model, "the consumer was cancelled");
      return;
    }
    const cartId = message.content.toString("utf8");
    const run = async () => {
      const handler = this.#handler;
      try {
        if (handler) await handler(cartId);
      } catch (e) {
        log.warn("queue handler failed", { cart: cartId, error: errorMessage(e) });
      } finally {
        try {
          // On a dead channel this throws, and the broker delivers the message again.
          if (handler) channel.ack(message);
        } catch {
          // redelivered
        }
        this.#running--;
        this.#backlog.shift()?.();
      }
    };
    // Never more than `prefetch` handlers at once, also while an old channel's finish.
    if (this.#running < this.#prefetch) {
      this.#running++;
      run();
    } else {
      this.#backlog.push(() => {
        this.#running++;
        run();
      });
    }
  }

  /** The connection of `generation` (or one of its channels) is gone. */
  #lost(generation: number, reason: unknown): void {
    if (this.#closed || generation !== this.#link?.generation) return;
    const link = this.#link;
    this.#link = null;
    this.#backlog = []; // those messages go back to the broker with their channel
    log.warn("lost the connection to the message broker, reconnecting", {
      broker: this.broker,
      error: errorMessage(reason),
    });
    this.#closeModel(link.model, "the connection was lost");
    this.#startReconnecting();
  }

  /**
   * Closes a connection that is given up (`why`). It is often half gone already, so closing
   * it may fail; nothing then depends on it (its messages go back to the broker unacknowledged),
   * and the failure is only logged.
   */
  #closeModel(model: ChannelModel, why: string): Promise<void> {
    return model.close().catch((e: unknown) => {
      log.debug("closing a message broker connection failed", {
        broker: this.broker,
        why,
        error: errorMessage(e),
      });
    });
  }

  #startReconnecting(): void {
    if (this.#reconnecting || this.#closed) return;
    this.#reconnecting = (async () => {
      const delays = backoffDelays({
        initialMs: this.#reconnectInitialMs,
        maxMs: this.#reconnectMaxMs,
      });
      let tries = 0;
      while (!this.#closed) {
        const delay = delays.next().value;
        try {
          await sleep(delay, this.#stop.signal);
        } catch {
          break; // closed
        }
        tries++;
        try {
          await this.#open();
          if (this.#link) {
            log.info("reconnected to the message broker", { broker: this.broker, tries });
          }
          break;
        } catch (e) {
          log.warn("the message broker is still unreachable", {
            broker: this.broker,
            tries,
            error: errorMessage(e),
          });
        }
      }
    })().finally(() => {
      this.#reconnecting = null;
      // Lost again while this attempt was finishing.
      if (!this.#closed && !this.#link) this.#startReconnecting();
    });
  }

  /** The current link, waiting for a reconnection until `deadline`. */
  async #connected(deadline: number): Promise<Link> {
    while (true) {
      if (this.#closed) throw new Error("The queue is closed");
      const link = this.#link;
      if (link) return link;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `The message broker at ${this.broker} is unreachable: no connection for ` +
            `${Math.round(this.#publishTimeoutMs / 1000)} s (check that RabbitMQ runs there ` +
            "and that BROKER_URL or AMQP_* are right)",
        );
      }
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          this.#waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, left);
        this.#waiters.add(wake);
      });
    }
  }
}
