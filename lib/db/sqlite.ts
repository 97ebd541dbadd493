/**
 * The embedded database: one SQLite file through `node:sqlite`, in WAL mode so that several
 * cartd processes on one machine can share it.
 *
 * @module
 */
import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { asWriteError, type Db, DbUnavailableError, type Row, type SqlValue } from "./db.ts";
import { errorMessage, log } from "../util/log.ts";

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
    const once = () => {
      try {
        return Promise.resolve(work());
      } catch (e) {
        return Promise.reject(e);
      }
    };
    // Outside a transaction, wait for any open one so our statement is not swept into it; a
    // statement that finds the database busy lets the connection go while it waits.
    const attempt = this.#inTransaction ? once : () => this.#lock.run(once);
    return whileBusy(attempt).catch((e) => Promise.reject(translate(e)));
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
    // Only a BEGIN that finds the database busy is tried again (whileBusy), the connection let
    // go meanwhile; what fails once the transaction is open is translated, never run again.
    return whileBusy(() =>
      this.#lock.run(async () => {
        this.sqlite.exec("BEGIN IMMEDIATE");
        try {
          const result = await work(
            new SqliteDb(this.sqlite, this.logging, this.#lock, this.#statements),
          );
          this.sqlite.exec("COMMIT");
          return result;
        } catch (e) {
          this.#rollback(e);
          throw translate(e);
        }
      })
    ).catch((e) => Promise.reject(translate(e)));
  }

  /**
   * Rolls back the open transaction after `first` ended it. SQLite may have rolled it back by
   * itself already (a full disk, an I/O error do): then there is nothing to do. A ROLLBACK that
   * fails anyway is logged, never thrown: `first` is the error that tells what happened.
   */
  #rollback(first: unknown): void {
    if (!this.sqlite.isTransaction) return;
    try {
      this.sqlite.exec("ROLLBACK");
    } catch (e) {
      log.warn("rollback failed after an error", {
        error: errorMessage(first),
        rollback: errorMessage(e),
      });
    }
  }

  async checkpoint(waitMs = CHECKPOINT_WAIT_MS): Promise<boolean> {
    const started = performance.now();
    for (let n = 0;; n++) {
      // A PASSIVE checkpoint copies the log's pages up to the oldest snapshot still read, and
      // blocks no reader or writer; another connection checkpointing at once is "busy".
      const [result] = await this.all<{ busy: number; log: number; checkpointed: number }>(
        "PRAGMA wal_checkpoint(PASSIVE)",
      );
      if (!result || (result.busy === 0 && result.checkpointed >= result.log)) return true;
      if (performance.now() - started >= waitMs) {
        log.debug("the SQLite log is not wholly copied yet; a later commit will go on", {
          logPages: result.log,
          copiedPages: result.checkpointed,
          waitedMs: Math.round(performance.now() - started),
        });
        return false;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(2 ** n, BUSY_PAUSE_MAX_MS)));
    }
  }

  close(): Promise<void> {
    return this.#lock.run(() => {
      if (this.sqlite.isOpen) this.sqlite.close();
      return Promise.resolve();
    });
  }
}

/**
 * How long a statement waits for another connection's write transaction to end before the
 * database counts as busy ({@linkcode DbUnavailableError}).
 */
const BUSY_WAIT_MS = 10_000;
/** The longest pause between two tries of a statement that found the database busy. */
const BUSY_PAUSE_MAX_MS = 20;
/** How long {@linkcode SqliteDb.checkpoint} waits for readers of older snapshots by default. */
const CHECKPOINT_WAIT_MS = 1_000;

/**
 * Whether `e` is SQLite's SQLITE_BUSY (another connection holds the write lock), as node:sqlite
 * throws it (errors translated already, such as a {@linkcode DbUnavailableError}, are not).
 */
function isBusy(e: unknown): boolean {
  if (!(e instanceof Error) || (e as { code?: unknown }).code !== "ERR_SQLITE_ERROR") return false;
  const errcode = (e as { errcode?: unknown }).errcode;
  // exec() throws without the numeric code: its message is SQLite's text for it.
  if (typeof errcode === "number") return (errcode & 0xff) === 5;
  return /^database is locked/.test(e.message);
}

/**
 * `attempt` (one statement, or a BEGIN IMMEDIATE), tried again while another connection holds
 * the write lock, for up to {@linkcode BUSY_WAIT_MS}, pausing asynchronously in between.
 * SQLite's own `busy_timeout` would sleep inside the call, blocking the thread's event loop:
 * the main thread stopped answering for as long as the document thread stored a 100,000-file
 * cart (issue 15 item 4). So connections run with `busy_timeout = 0` and wait here. A
 * statement that failed busy did nothing, so running it again is safe.
 */
async function whileBusy<T>(attempt: () => Promise<T>): Promise<T> {
  const started = performance.now();
  for (let n = 0;; n++) {
    try {
      return await attempt();
    } catch (e) {
      if (!isBusy(e) || performance.now() - started >= BUSY_WAIT_MS) throw e;
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(2 ** n, BUSY_PAUSE_MAX_MS)));
  }
}

/**
 * Another connection has held the database longer than {@linkcode BUSY_WAIT_MS}: that is the database
 * being unavailable for a moment (the API answers 503, the worker resumes), not a failed cart.
 * A write that fails on a full disk, a read-only file or an I/O error becomes a
 * {@linkcode DbWriteError} naming that cause.
 */
function translate(e: unknown): unknown {
  if (e instanceof DbUnavailableError) return e;
  if (e instanceof Error && /database is (locked|busy)/i.test(e.message)) {
    return new DbUnavailableError(`The SQLite database is busy: ${e.message}`, { cause: e });
  }
  return asWriteError(e) ?? e;
}

function bigintJson(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString() : value;
}

/** The database cannot be opened for writing; the message names the file and what to do. */
export class SqliteOpenError extends Error {
  /** Builds the error; `message` names the file. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SqliteOpenError";
  }
}

/**
 * Checks that the database file and its `-wal` and `-shm` files, those that exist, can be
 * opened for writing. SQLite falls back to reading a file it cannot write, and maps the
 * `-shm` file into memory: an immutable `-shm` killed the process with SIGBUS and no word.
 *
 * @throws {SqliteOpenError} naming the first file that cannot be written.
 */
export function checkSqliteFiles(path: string): void {
  if (path === ":memory:" || path.startsWith("file:")) return;
  for (const file of [path, `${path}-wal`, `${path}-shm`]) {
    let handle: Deno.FsFile;
    try {
      handle = Deno.openSync(file, { write: true });
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue;
      throw new SqliteOpenError(
        `The SQLite file ${file} cannot be opened for writing (${errorMessage(e)}); make it ` +
          "writable for this process (permissions, a read-only mount, the immutable attribute: " +
          "lsattr/chattr -i), or point CARTD_SQLITE_PATH at a writable copy",
        { cause: e },
      );
    }
    handle.close();
  }
}

/**
 * Writes in a transaction that is rolled back, so that a database SQLite opened for reading
 * only (a read-only file or mount) is found at start, not at the first POST.
 *
 * @throws {SqliteOpenError} naming the file when the write is refused.
 */
function probeWrite(sqlite: DatabaseSync, path: string): void {
  try {
    sqlite.exec("BEGIN IMMEDIATE");
    try {
      sqlite.exec("CREATE TABLE cartd_write_probe (x INTEGER)");
    } finally {
      if (sqlite.isTransaction) sqlite.exec("ROLLBACK");
    }
  } catch (e) {
    throw new SqliteOpenError(
      `The SQLite database ${path} cannot be written (${errorMessage(e)}); make the file and ` +
        "its folder writable for this process, or point CARTD_SQLITE_PATH at a writable copy",
      { cause: e },
    );
  }
}

/**
 * Opens (creating when needed) the SQLite file at `path`, after checking that it and its
 * `-wal`/`-shm` files can be written ({@linkcode checkSqliteFiles}, then a write that is
 * rolled back).
 *
 * @throws {SqliteOpenError} naming the file that cannot be written.
 */
export function openSqlite(path: string, logging = false): Db {
  if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
  checkSqliteFiles(path);
  const sqlite = new DatabaseSync(path);
  try {
    sqlite.exec("PRAGMA busy_timeout = 10000");
    sqlite.exec("PRAGMA journal_mode = WAL");
    sqlite.exec("PRAGMA synchronous = NORMAL");
    sqlite.exec("PRAGMA foreign_keys = ON");
    probeWrite(sqlite, path);
    // From now on a busy database is waited for without blocking the thread (whileBusy).
    sqlite.exec("PRAGMA busy_timeout = 0");
  } catch (e) {
    sqlite.close();
    throw e;
  }
  return new SqliteDb(sqlite, logging);
}
