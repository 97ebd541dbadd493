/**
 * The embedded database: one SQLite file through `node:sqlite`, in WAL mode so that several
 * cartd processes on one machine can share it.
 *
 * @module
 */
import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { type Db, DbUnavailableError, type Row, type SqlValue } from "./db.ts";
import { log } from "../util/log.ts";

/** Serialises transactions: SQLite has one writer, and node:sqlite is synchronous. */
class Lock {
  #tail: Promise<void> = Promise.resolve();
  run<T>(work: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(work);
    this.#tail = result.then(() => {}, () => {});
    return result;
  }
}

/**
 * Prepared statements by SQL text. The store runs a small, fixed set of statements; preparing
 * each one again per call would leave a native statement behind for the garbage collector,
 * which rarely runs when the JavaScript heap is quiet: memory grew with every cart file.
 */
class Statements {
  readonly #byText = new Map<string, StatementSync>();
  constructor(readonly sqlite: DatabaseSync, readonly max = 200) {}

  get(sql: string): StatementSync {
    let statement = this.#byText.get(sql);
    if (statement) {
      this.#byText.delete(sql); // most recently used goes last
    } else {
      statement = this.sqlite.prepare(sql);
      if (this.#byText.size >= this.max) {
        this.#byText.delete(this.#byText.keys().next().value!);
      }
    }
    this.#byText.set(sql, statement);
    return statement;
  }
}

class SqliteDb implements Db {
  readonly dialect = "sqlite" as const;
  readonly #lock: Lock;
  readonly #inTransaction: boolean;
  readonly #statements: Statements;

  constructor(
    readonly sqlite: DatabaseSync,
    readonly logging: boolean,
    lock?: Lock,
    statements?: Statements,
  ) {
    this.#lock = lock ?? new Lock();
    this.#inTransaction = lock !== undefined;
    this.#statements = statements ?? new Statements(sqlite);
  }

  #statement(sql: string): StatementSync {
    return this.#statements.get(sql);
  }

  #exec<T>(work: () => T): Promise<T> {
    // Outside a transaction, wait for any open one so our statement is not swept into it.
    return this.#inTransaction
      ? Promise.resolve(work())
      : this.#lock.run(() => Promise.resolve(work()));
  }

  all<T extends Row = Row>(sql: string, params: SqlValue[] = []): Promise<T[]> {
    if (this.logging) log.info("sql", { sql, params: JSON.stringify(params, bigintJson) });
    return this.#exec(() => this.#statement(sql).all(...params as SQLInputValue[]) as T[]);
  }

  run(sql: string, params: SqlValue[] = []): Promise<{ changes: number }> {
    if (this.logging) log.info("sql", { sql, params: JSON.stringify(params, bigintJson) });
    return this.#exec(() => {
      const r = this.#statement(sql).run(...params as SQLInputValue[]);
      return { changes: Number(r.changes) };
    });
  }

  transaction<T>(work: (tx: Db) => Promise<T>): Promise<T> {
    if (this.#inTransaction) return work(this);
    return this.#lock.run(async () => {
      try {
        this.sqlite.exec("BEGIN IMMEDIATE");
      } catch (e) {
        throw translate(e);
      }
      try {
        const result = await work(
          new SqliteDb(this.sqlite, this.logging, this.#lock, this.#statements),
        );
        this.sqlite.exec("COMMIT");
        return result;
      } catch (e) {
        this.sqlite.exec("ROLLBACK");
        throw e;
      }
    });
  }

  close(): Promise<void> {
    return this.#lock.run(() => {
      if (this.sqlite.isOpen) this.sqlite.close();
      return Promise.resolve();
    });
  }
}

/**
 * Another process has held the database longer than `busy_timeout`: that is the database
 * being unavailable for a moment (the API answers 503, the worker resumes), not a failed cart.
 */
function translate(e: unknown): unknown {
  if (e instanceof Error && /database is (locked|busy)/i.test(e.message)) {
    return new DbUnavailableError(`The SQLite database is busy: ${e.message}`, { cause: e });
  }
  return e;
}

function bigintJson(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString() : value;
}

/** Opens (creating when needed) the SQLite file at `path`. */
export function openSqlite(path: string, logging = false): Db {
  if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
  const sqlite = new DatabaseSync(path);
  sqlite.exec("PRAGMA busy_timeout = 10000");
  sqlite.exec("PRAGMA journal_mode = WAL");
  sqlite.exec("PRAGMA synchronous = NORMAL");
  sqlite.exec("PRAGMA foreign_keys = ON");
  return new SqliteDb(sqlite, logging);
}
