/**
 * MySQL / MariaDB through a mysql2 connection pool, for several cartd processes on several
 * machines. Behaves like the SQLite driver ({@linkcode ./db_sqlite.ts}):
 *
 * - `run` reports rows *matched* (the `FOUND_ROWS` client flag), as SQLite does, so a
 *   conditional UPDATE that writes the values a row already has still counts as 1.
 * - Transactions run at SERIALIZABLE isolation on one dedicated connection, so the
 *   read-then-write transactions of the store cannot interleave; when MySQL resolves a
 *   conflict by rolling one of them back (a deadlock), the whole transaction is run again
 *   (its `work` must therefore only touch the database, as the store's do).
 * - A lost or unreachable server surfaces as {@linkcode DbUnavailableError} (the API answers
 *   503); the pool opens fresh connections by itself once the server is back.
 *
 * @module
 */
import mysql from "mysql2/promise";
import { asWriteError, type Db, DbUnavailableError, type Row, type SqlValue } from "./db.ts";
import type { DatabaseConfig } from "../config/config.ts";
import { errorMessage, log } from "../util/log.ts";
import { backoffDelays, retry } from "../util/backoff.ts";

/** The settings {@linkcode openMysql} needs. */
export type MysqlConfig = Extract<DatabaseConfig, { kind: "mysql" }>;

/** How long one attempt to open a connection may take. */
const CONNECT_TIMEOUT_MS = 5_000;
/**
 * Longest a query may take. The store's queries are short; one that has no answer this long
 * sits on a connection that died without a word (no FIN, no RST): the driver drops that
 * connection and the caller gets {@linkcode DbUnavailableError} instead of hanging.
 */
const QUERY_TIMEOUT_MS = 30_000;
/**
 * How often a transaction (or statement) chosen as a deadlock victim is run again. Under
 * SERIALIZABLE, many writers on the same rows (50 carts posted at once while two workers
 * claim) make several deadlocks in a row likely; the delay between tries grows (see
 * {@linkcode deadlockPause}), so ten tries span about two seconds at worst.
 */
const DEADLOCK_RETRIES = 10;

/**
 * The random pauses before deadlock retries 1, 2, …: up to 10 ms · 1.6^retry (full jitter:
 * 8 ms · 1.6^(retry-1), spread over 0 to twice that).
 */
function deadlockPauses(): Iterator<number> {
  return backoffDelays({ initialMs: 8, factor: 1.6, maxMs: Infinity, jitter: 1 });
}

/** Error codes (mysql2, Node sockets, server) that mean "the server cannot be reached". */
const UNAVAILABLE_CODES = new Set([
  "PROTOCOL_SEQUENCE_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "EHOSTDOWN",
  "ENETUNREACH",
  "ENETDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ENOTCONN",
  "PROTOCOL_CONNECTION_LOST",
  "PROTOCOL_SEQUENCE_TIMEOUT",
  "PROTOCOL_ENQUEUE_AFTER_FATAL_ERROR",
  "PROTOCOL_ENQUEUE_AFTER_QUIT",
  "ER_SERVER_SHUTDOWN",
  "ER_CON_COUNT_ERROR",
  "ER_TOO_MANY_USER_CONNECTIONS",
  "ER_CONNECTION_KILLED",
  "ER_NORMAL_SHUTDOWN",
]);

const UNAVAILABLE_MESSAGES =
  /Pool is closed|connection is in closed state|Connection lost|closed state|socket hang up|read ECONNRESET|connect ETIMEDOUT|Can't add new command/i;

const DEADLOCK_CODES = new Set(["ER_LOCK_DEADLOCK"]);

interface DriverError {
  code?: string;
  errno?: number;
  fatal?: boolean;
  message?: string;
}

/** True when `e` means the database is away rather than that the SQL was wrong. */
export function isConnectionError(e: unknown): boolean {
  if (e instanceof DbUnavailableError) return true;
  if (typeof e !== "object" || e === null) return false;
  const err = e as DriverError;
  if (err.code && UNAVAILABLE_CODES.has(err.code)) return true;
  if (err.fatal === true) return true;
  return UNAVAILABLE_MESSAGES.test(String(err.message ?? ""));
}

function isDeadlock(e: unknown): boolean {
  const code = (e as DriverError | null)?.code;
  return typeof code === "string" && DEADLOCK_CODES.has(code);
}

function where(config: MysqlConfig): string {
  return `${config.host}:${config.port}`;
}

/**
 * Turns a driver error into {@linkcode DbUnavailableError} when it is about the connection,
 * and into a {@linkcode DbWriteError} when a write failed on a full table or disk or a
 * read-only server.
 */
function translate(e: unknown, config: MysqlConfig): unknown {
  if (e instanceof DbUnavailableError) return e;
  if (!isConnectionError(e)) return asWriteError(e) ?? e;
  const code = (e as DriverError).code;
  return new DbUnavailableError(
    `The MySQL database at ${where(config)} is unavailable${code ? ` (${code})` : ""}: ${
      errorMessage(e)
    }`,
    { cause: e },
  );
}

function bigintJson(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString() : value;
}

/** Something that runs a query: the pool, or one pool connection. */
interface Runner {
  query(options: { sql: string; timeout: number }, values?: unknown[]): Promise<[unknown, unknown]>;
}

class MysqlDb implements Db {
  readonly dialect = "mysql" as const;

  constructor(
    readonly pool: mysql.Pool,
    readonly config: MysqlConfig,
    /** The transaction's connection, or null outside a transaction. */
    readonly connection: mysql.PoolConnection | null = null,
  ) {}

  async #query(sql: string, params: SqlValue[]): Promise<unknown> {
    if (this.config.logging) {
      log.info("sql", { sql, params: JSON.stringify(params, bigintJson) });
    }
    const runner: Runner = this.connection ?? this.pool;
    try {
      return await retry(async () => {
        const [result] = await runner.query({ sql, timeout: QUERY_TIMEOUT_MS }, params);
        return result;
      }, {
        // Outside a transaction a deadlock victim statement was rolled back whole: run it again.
        attempts: this.connection ? 1 : DEADLOCK_RETRIES,
        delays: deadlockPauses(),
        isRetryable: isDeadlock,
      });
    } catch (e) {
      throw translate(e, this.config);
    }
  }

  async all<T extends Row = Row>(sql: string, params: SqlValue[] = []): Promise<T[]> {
    const result = await this.#query(sql, params);
    return Array.isArray(result) ? result as T[] : [];
  }

  async run(sql: string, params: SqlValue[] = []): Promise<{ changes: number }> {
    const result = await this.#query(sql, params) as { affectedRows?: number };
    return { changes: Number(result?.affectedRows ?? 0) };
  }

  async transaction<T>(work: (tx: Db) => Promise<T>): Promise<T> {
    if (this.connection) return await work(this);
    return await retry(() => this.#transactionOnce(work), {
      attempts: DEADLOCK_RETRIES,
      delays: deadlockPauses(),
      isRetryable: isDeadlock,
      onFailure: (_, { attempt, retrying }) => {
        if (retrying && this.config.logging) {
          log.info("sql transaction deadlocked, retrying", { attempt });
        }
      },
    });
  }

  async #transactionOnce<T>(work: (tx: Db) => Promise<T>): Promise<T> {
    let connection: mysql.PoolConnection;
    try {
      connection = await this.pool.getConnection();
    } catch (e) {
      throw translate(e, this.config);
    }
    const tx = new MysqlDb(this.pool, this.config, connection);
    // Only a connection known to be outside any transaction goes back to the pool.
    let clean = false;
    try {
      await tx.run("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE");
      await tx.run("START TRANSACTION");
      let result: T;
      try {
        result = await work(tx);
      } catch (e) {
        await tx.run("ROLLBACK").then(() => clean = true, () => {});
        throw translate(e, this.config);
      }
      await tx.run("COMMIT");
      clean = true;
      return result;
    } finally {
      if (clean) connection.release();
      else connection.destroy();
    }
  }

  checkpoint(): Promise<boolean> {
    return Promise.resolve(true); // InnoDB flushes its log in the background by itself
  }

  async close(): Promise<void> {
    if (this.connection) return;
    await this.pool.end();
  }
}

function quoteName(name: string): string {
  return "`" + name.replaceAll("`", "``") + "`";
}

async function createDatabase(config: MysqlConfig): Promise<void> {
  const connection = await mysql.createConnection({
    host: config.host,
    port: config.port,
    user: config.user,
    password: config.password,
    connectTimeout: CONNECT_TIMEOUT_MS,
    charset: "utf8mb4",
  });
  try {
    await connection.query(
      `CREATE DATABASE IF NOT EXISTS ${quoteName(config.database)} CHARACTER SET utf8mb4`,
    );
  } catch (e) {
    // A user without CREATE rights may still use a database an administrator made.
    const code = (e as DriverError).code;
    if (code !== "ER_DBACCESS_DENIED_ERROR" && code !== "ER_SPECIFIC_ACCESS_DENIED_ERROR") {
      throw e;
    }
  } finally {
    await connection.end().catch(() => connection.destroy());
  }
}

function createPool(config: MysqlConfig): mysql.Pool {
  return mysql.createPool({
    host: config.host,
    port: config.port,
    user: config.user,
    password: config.password,
    database: config.database,
    charset: "utf8mb4",
    connectTimeout: CONNECT_TIMEOUT_MS,
    connectionLimit: 10,
    waitForConnections: true,
    // Rows matched, not rows changed, like SQLite (mysql2 sets it by default; say so anyway).
    flags: ["FOUND_ROWS"],
    // BIGINT and DECIMAL (SUM) come back as numbers, or as exact strings beyond 2^53.
    supportBigNumbers: true,
    bigNumberStrings: false,
    decimalNumbers: true,
    dateStrings: true,
    enableKeepAlive: true,
  });
}

/**
 * Opens the MySQL database `config` names, creating the database when it does not exist.
 * Tries `connectAttempts` times, `waitMs` apart, then throws {@linkcode DbUnavailableError}.
 */
export async function openMysql(config: MysqlConfig): Promise<Db> {
  const attempts = Math.max(1, config.connectAttempts);
  try {
    return await retry(async (attempt) => {
      await createDatabase(config);
      const pool = createPool(config);
      try {
        await pool.query("SELECT 1");
      } catch (e) {
        await pool.end().catch((end) => {
          log.debug("closing the pool of a failed connection attempt failed", {
            database: where(config),
            error: errorMessage(end),
          });
        });
        throw e;
      }
      if (attempt > 1) log.info("database reachable", { database: where(config) });
      return new MysqlDb(pool, config);
    }, {
      attempts,
      // DATABASE_WAIT apart, always the same (SPEC §3): a delay that does not grow.
      delays: backoffDelays({ initialMs: config.waitMs, maxMs: config.waitMs, jitter: 0 }),
      onFailure: (e, { attempt }) => {
        log.warn("cannot reach the database", {
          database: where(config),
          attempt,
          of: attempts,
          error: errorMessage(e),
        });
      },
    });
  } catch (last) {
    throw new DbUnavailableError(
      `Cannot reach the MySQL database "${config.database}" at ${where(config)} as user ` +
        `"${config.user}" after ${attempts} ${attempts === 1 ? "try" : "tries"} ` +
        `(last error: ${errorMessage(last)}). Check that MySQL/MariaDB runs and listens there, ` +
        "that the user and password are right (DATABASE_URL or MYSQL_ENV_MYSQL_USER / " +
        "MYSQL_ENV_MYSQL_PASSWORD, MYSQL_PORT_3306_TCP_ADDR / _PORT), or wait longer with " +
        "DATABASE_CONNECT_ATTEMPTS and DATABASE_WAIT.",
      { cause: last },
    );
  }
}
