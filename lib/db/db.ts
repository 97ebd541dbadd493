/**
 * The small interface every database driver offers the store: parameterised queries with `?`
 * placeholders, and transactions. SQLite (`./sqlite.ts`) and MySQL (`./mysql.ts`) implement it;
 * `openDb` in `./open.ts` picks one from the config.
 *
 * @module
 */
/** A value bound to a `?` placeholder. */
export type SqlValue = string | number | bigint | null | Uint8Array;

/** One row, column name to value. */
export type Row = Record<string, unknown>;

/** A connection (or pool) that runs SQL. */
export interface Db {
  /** Which SQL dialect the schema must be written in. */
  readonly dialect: "sqlite" | "mysql";
  /** Runs a query and returns its rows. */
  all<T extends Row = Row>(sql: string, params?: SqlValue[]): Promise<T[]>;
  /** Runs a statement and returns how many rows it changed. */
  run(sql: string, params?: SqlValue[]): Promise<{ changes: number }>;
  /** Runs `work` in one transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(work: (tx: Db) => Promise<T>): Promise<T>;
  /**
   * Moves what this connection's writes left in a write-ahead log into the database file now,
   * waiting (asynchronously, up to `waitMs`) for readers of older snapshots to finish: true
   * once the log is wholly copied. A connection that has just written a lot calls it, so that
   * the next small write of another connection does not do the copying instead. SQLite (WAL
   * mode) defers it to whichever connection commits next over 1,000 pages of log, and that
   * connection copies them inside its commit: the main thread stopped for 70–100 ms after each
   * 100,000-file cart the document thread stored. MySQL has nothing of the kind (true at once).
   */
  checkpoint(waitMs?: number): Promise<boolean>;
  /** Releases the connection(s). */
  close(): Promise<void>;
}

/** The database cannot be reached right now; the API answers 503 while this lasts. */
export class DbUnavailableError extends Error {
  /** Builds the error; `options.cause` carries the driver's error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DbUnavailableError";
  }
}

/** Why the database cannot be written (see {@linkcode DbWriteError}). */
export type DbWriteCause = "full" | "readonly" | "io";

/**
 * The database can be read but not written: its disk is full, its file (or the file system)
 * is read-only, or the disk failed a write. It is a {@linkcode DbUnavailableError}: the API
 * answers 503 naming the cause, the worker resumes the cart later instead of failing it.
 */
export class DbWriteError extends DbUnavailableError {
  /**
   * Builds the error: `cause` says why, `detail` is the driver's words (such as "database or
   * disk is full"), `options.cause` the driver's error.
   */
  constructor(readonly why: DbWriteCause, readonly detail: string, options?: ErrorOptions) {
    super(`The database cannot be written: ${detail}`, options);
    this.name = "DbWriteError";
  }
}

/** The driver's words for each cause a write can fail on, as SQLite and MySQL put them. */
const WRITE_FAILURES: readonly [DbWriteCause, RegExp][] = [
  ["full", /database or disk is full|No space left|ENOSPC|os error 28|The table .* is full/i],
  ["readonly", /readonly database|read-only|read only|EROFS|os error 30/i],
  ["io", /disk I\/O error/i],
];

/**
 * The {@linkcode DbWriteError} a driver's error stands for, or null when it is about
 * something else (a constraint, a bad statement). An error that is one already is returned
 * as it is.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { asWriteError } from "./db.ts";
 * assert.equal(asWriteError(new Error("database or disk is full"))?.why, "full");
 * assert.equal(asWriteError(new Error("attempt to write a readonly database"))?.why, "readonly");
 * assert.equal(asWriteError(new Error("UNIQUE constraint failed: carts.id")), null);
 * ```
 */
export function asWriteError(error: unknown): DbWriteError | null {
  if (error instanceof DbWriteError) return error;
  if (!(error instanceof Error)) return null;
  for (const [why, words] of WRITE_FAILURES) {
    if (words.test(error.message)) return new DbWriteError(why, error.message, { cause: error });
  }
  return null;
}
