/**
 * The real services the tests use — MariaDB and RabbitMQ on this machine — and the small
 * helpers every test file needs around them. `CARTD_TEST_MYSQL=off` / `CARTD_TEST_AMQP=off`
 * skip the tests that need them; `CARTD_TEST_MYSQL_HOST` / `_PORT` / `_USER` / `_PASSWORD` and
 * `CARTD_TEST_AMQP_URL` point them elsewhere.
 *
 * @module
 */
// @ts-types="@types/amqplib"
import amqp from "amqplib";
import type { DatabaseConfig } from "../lib/config.ts";

/** Tests that need MariaDB are skipped. */
export const MYSQL_OFF: boolean = Deno.env.get("CARTD_TEST_MYSQL") === "off";
/** Tests that need RabbitMQ are skipped. */
export const AMQP_OFF: boolean = Deno.env.get("CARTD_TEST_AMQP") === "off";

/** Where MariaDB listens. */
export const MYSQL_HOST: string = Deno.env.get("CARTD_TEST_MYSQL_HOST") ?? "127.0.0.1";
/** Its port. */
export const MYSQL_PORT: number = Number(Deno.env.get("CARTD_TEST_MYSQL_PORT") ?? 3306);
/** The broker the tests use. */
export const AMQP_URL: string = Deno.env.get("CARTD_TEST_AMQP_URL") ??
  "amqp://guest:guest@127.0.0.1:5672/";
/** The broker's host and port, for proxies in front of it. */
export const BROKER_HOST: string = new URL(AMQP_URL).hostname;
/** The broker's port. */
export const BROKER_PORT: number = Number(new URL(AMQP_URL).port || 5672);

/** MySQL settings for a database of the test's own (created on open; drop it afterwards). */
export function testMysqlConfig(
  overrides: Partial<Extract<DatabaseConfig, { kind: "mysql" }>> = {},
): Extract<DatabaseConfig, { kind: "mysql" }> {
  return {
    kind: "mysql",
    host: MYSQL_HOST,
    port: MYSQL_PORT,
    user: Deno.env.get("CARTD_TEST_MYSQL_USER") ?? "root",
    password: Deno.env.get("CARTD_TEST_MYSQL_PASSWORD") ?? "",
    database: `cartd_test_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`,
    logging: false,
    connectAttempts: 1,
    waitMs: 0,
    ...overrides,
  };
}

/** Deletes a test queue, with a connection of its own. */
export async function deleteQueue(name: string): Promise<void> {
  const model = await amqp.connect(AMQP_URL);
  try {
    const channel = await model.createChannel();
    await channel.deleteQueue(name);
    await channel.close();
  } finally {
    await model.close();
  }
}

/** How many messages wait in a queue (not delivered to any consumer). */
export async function waitingMessages(name: string): Promise<number> {
  const model = await amqp.connect(AMQP_URL);
  try {
    const channel = await model.createChannel();
    const { messageCount } = await channel.checkQueue(name);
    await channel.close();
    return messageCount;
  } finally {
    await model.close();
  }
}
