/**
 * The real services the tests use — MariaDB and RabbitMQ on this machine — and the small
 * helpers every test file needs around them.
 *
 * - `CARTD_TEST_MYSQL_HOST` / `_PORT` / `_USER` / `_PASSWORD` and `CARTD_TEST_AMQP_URL` point
 *   the tests elsewhere.
 * - `CARTD_TEST_MYSQL=off` / `CARTD_TEST_AMQP=off` skip the tests that need a service: they
 *   are reported as ignored, with `[skipped: CARTD_TEST_…=off]` in their names.
 * - A service that is not switched off is probed once per test process (a TCP connect, at most
 *   {@linkcode PROBE_TIMEOUT_MS}). When it does not answer, one test fails saying so and naming
 *   the switch, and the tests that need the service are skipped (`[skipped: … unreachable]`),
 *   instead of each of them failing on its own after its own timeouts.
 *
 * Test files mark what they need with {@linkcode test} or {@linkcode needs}.
 *
 * @module
 */
// @ts-types="@types/amqplib"
import amqp from "amqplib";
import type { DatabaseConfig } from "../../lib/config/config.ts";

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

/** How long the probe of a service waits for its TCP connection. */
export const PROBE_TIMEOUT_MS = 1500;

/** A service some tests need. */
export type Service = "mysql" | "amqp";

interface ServiceInfo {
  /** What the messages call it. */
  title: string;
  /** The variable whose value `off` skips its tests. */
  switch: string;
  /** The variables that point the tests elsewhere. */
  settings: string;
  host: string;
  port: number;
}

const SERVICES: Record<Service, ServiceInfo> = {
  mysql: {
    title: "MariaDB",
    switch: "CARTD_TEST_MYSQL",
    settings: "CARTD_TEST_MYSQL_HOST / CARTD_TEST_MYSQL_PORT",
    host: MYSQL_HOST,
    port: MYSQL_PORT,
  },
  amqp: {
    title: "RabbitMQ",
    switch: "CARTD_TEST_AMQP",
    settings: "CARTD_TEST_AMQP_URL",
    host: BROKER_HOST,
    port: BROKER_PORT,
  },
};

/**
 * Whether a TCP connection to `host:port` opens within `timeoutMs`: null if it does, else why
 * not.
 */
export async function probe(
  host: string,
  port: number,
  timeoutMs: number = PROBE_TIMEOUT_MS,
): Promise<string | null> {
  try {
    const conn = await Deno.connect({
      hostname: host,
      port,
      signal: AbortSignal.timeout(timeoutMs),
    });
    conn.close();
    return null;
  } catch (e) {
    if (e instanceof DOMException && (e.name === "TimeoutError" || e.name === "AbortError")) {
      return `no connection within ${timeoutMs} ms`;
    }
    return e instanceof Error ? e.message : String(e);
  }
}

/**
 * Why the tests that need `service` cannot use it (null: they can). The probe's answer is kept
 * in the process's environment, which every test file of a `deno test` run shares, so it runs
 * once per process and address.
 */
async function problemOf(service: Service): Promise<string | null> {
  const info = SERVICES[service];
  if (Deno.env.get(info.switch) === "off") return `${info.switch}=off`;
  const address = `${info.host}:${info.port}`;
  const key = `CARTD_TEST_PROBED_${service.toUpperCase()}`;
  const cached = Deno.env.get(key);
  let reason: string | null;
  if (cached?.startsWith(`${address} `)) {
    const answer = cached.slice(address.length + 1);
    reason = answer === "ok" ? null : answer;
  } else {
    reason = await probe(info.host, info.port);
    Deno.env.set(key, `${address} ${reason ?? "ok"}`);
  }
  if (reason === null) return null;
  reportOnce(service, address, reason);
  return `${info.title} unreachable`;
}

/** Registers the one failing test that says `service` is unreachable, once per process. */
function reportOnce(service: Service, address: string, reason: string): void {
  const info = SERVICES[service];
  const key = `CARTD_TEST_REPORTED_${service.toUpperCase()}`;
  if (Deno.env.get(key) === address) return;
  Deno.env.set(key, address);
  const message = `${info.title} at ${address} is unreachable (${reason}), so the tests that ` +
    `need it are skipped. Start it, point the tests at it with ${info.settings}, or set ` +
    `${info.switch}=off to skip those tests without this failure.`;
  Deno.test(`${info.title} is reachable at ${address}`, () => {
    throw new Error(message);
  });
}

const [mysqlProblem, amqpProblem] = await Promise.all([problemOf("mysql"), problemOf("amqp")]);
const PROBLEMS: Record<Service, string | null> = { mysql: mysqlProblem, amqp: amqpProblem };

/**
 * The tests that need MariaDB do not run: `CARTD_TEST_MYSQL=off`, or it is unreachable (which
 * one test reports).
 */
export const MYSQL_OFF: boolean = mysqlProblem !== null;
/** The tests that need RabbitMQ do not run: `CARTD_TEST_AMQP=off`, or it is unreachable. */
export const AMQP_OFF: boolean = amqpProblem !== null;

/**
 * The options of the test `name`, which needs `services`: as they are when every one of them
 * is usable, else ignored, with the reason at the end of the name.
 *
 * @example
 * ```ts
 * Deno.test(needs(["mysql"], "counts rows"), async () => {});
 * ```
 */
export function needs(
  services: readonly Service[],
  name: string,
): { name: string; ignore: boolean } {
  const reasons = services.map((s) => PROBLEMS[s]).filter((r): r is string => r !== null);
  if (reasons.length === 0) return { name, ignore: false };
  return { name: `${name} [skipped: ${reasons.join(", ")}]`, ignore: true };
}

/** Registers a test (as `Deno.test(name, fn)` does). */
export type Register = (name: string, fn: (t: Deno.TestContext) => void | Promise<void>) => void;

/**
 * `Deno.test` for the tests that need services, ignored as {@linkcode needs} says:
 * `test.mysql(name, fn)`, `test.amqp(name, fn)`, `test.mysqlAndAmqp(name, fn)`.
 */
export const test: { mysql: Register; amqp: Register; mysqlAndAmqp: Register } = {
  mysql: (name, fn) => Deno.test({ ...needs(["mysql"], name), fn }),
  amqp: (name, fn) => Deno.test({ ...needs(["amqp"], name), fn }),
  mysqlAndAmqp: (name, fn) => Deno.test({ ...needs(["mysql", "amqp"], name), fn }),
};

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
