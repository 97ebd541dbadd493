/**
 * Opens the queue a config names: the in-process queue, or RabbitMQ (amqplib is loaded only
 * when asked for).
 *
 * @example
 * ```ts
 * import { openQueue } from "./open.ts";
 * const queue = await openQueue({ kind: "memory" });
 * await queue.close();
 * ```
 * @module
 */
import type { QueueConfig } from "../config/config.ts";
import { MemoryQueue } from "./memory.ts";
import type { Queue } from "./queue.ts";

/** Opens the queue the config names. */
export async function openQueue(config: QueueConfig): Promise<Queue> {
  if (config.kind === "memory") return new MemoryQueue();
  const { AmqpQueue } = await import("./amqp.ts");
  return await AmqpQueue.connect(config.url, { queueName: config.queue });
}
