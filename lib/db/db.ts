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
