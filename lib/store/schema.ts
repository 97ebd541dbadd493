/**
 * The database schema, for SQLite and MySQL, with its version. `cartd dbsync` creates or
 * upgrades it ({@linkcode syncSchema}); `cartd dbchk` reports whether it is current
 * ({@linkcode schemaState}). Every process also runs {@linkcode syncSchema} at start: it is
 * idempotent. A new database gets the tables of version 1 and then every migration, so the
 * path of an upgrade is the path of every new database too.
 *
 * @module
 */
import type { Db } from "../db/db.ts";

/** The schema version this build of cartd writes and reads. */
export const SCHEMA_VERSION = 8;

/** The version that gives carts an owner, and makes uids unique per owner (issue 17). */
export const OWNER_VERSION = 5;

/**
 * The tables of schema version 1, which every database starts from; {@linkcode MIGRATIONS}
 * then bring it to {@linkcode SCHEMA_VERSION}.
 */
function tables(dialect: Db["dialect"], found: number): string[] {
  const mysql = dialect === "mysql";
  // Bytes, not a collation: MySQL collations ignore trailing spaces, and uids are exact.
  const key = mysql ? "VARBINARY(1020)" : "TEXT";
  const id = mysql ? "CHAR(36) CHARACTER SET ascii" : "TEXT";
  const text = mysql ? "LONGTEXT" : "TEXT";
  const big = mysql ? "BIGINT" : "INTEGER";
  const tail = mysql ? " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 ROW_FORMAT=DYNAMIC" : "";
  return [
    `CREATE TABLE IF NOT EXISTS cartd_schema (version INTEGER NOT NULL)${tail}`,
    `CREATE TABLE IF NOT EXISTS carts (
      id ${id} NOT NULL PRIMARY KEY,
      uid ${key} NOT NULL,
      live_uid ${key} NULL,
      status VARCHAR(16) NOT NULL,
      message ${text} NOT NULL,
      document_hash CHAR(64) NOT NULL,
      bundle INTEGER NOT NULL,
      manifest INTEGER NOT NULL,
      file_count INTEGER NOT NULL,
      total_bytes ${big} NULL,
      reserved_bytes ${big} NOT NULL DEFAULT 0,
      created_at ${big} NOT NULL,
      updated_at ${big} NOT NULL,
      ready_at ${big} NULL,
      last_used_at ${big} NOT NULL,
      claim_owner VARCHAR(64) NULL,
      claim_expires ${big} NULL,
      attempts INTEGER NOT NULL DEFAULT 0
    )${tail}`,
    // Dropped by OWNER_VERSION: made again on a newer database, it would refuse two owners'
    // carts of one uid.
    ...(found >= OWNER_VERSION ? [] : ["CREATE UNIQUE INDEX carts_live_uid ON carts (live_uid)"]),
    `CREATE INDEX carts_status ON carts (status, last_used_at)`,
    `CREATE TABLE IF NOT EXISTS cart_files (
      cart_id ${id} NOT NULL,
      idx INTEGER NOT NULL,
      archive_id ${text} NOT NULL,
      path ${text} NOT NULL,
      hashtype VARCHAR(8) NULL,
      hashsum VARCHAR(128) NULL,
      status VARCHAR(16) NOT NULL,
      size ${big} NULL,
      mtime DOUBLE NULL,
      sha256 CHAR(64) NULL,
      crc32 ${big} NULL,
      message ${text} NULL,
      PRIMARY KEY (cart_id, idx)
    )${tail}`,
    // One row per named lock; space reservations read "space" FOR UPDATE (MySQL).
    `CREATE TABLE IF NOT EXISTS cartd_lock (name VARCHAR(32) NOT NULL PRIMARY KEY)${tail}`,
    `INSERT ${mysql ? "IGNORE" : "OR IGNORE"} INTO cartd_lock (name) VALUES ('space')`,
  ];
}

/**
 * The upgrades, by the version they lead to: `MIGRATIONS[v]` turns a version `v - 1` schema
 * into version `v`. Each statement is plain DDL that SQLite and MySQL share; a statement whose
 * work is already done (a column that exists) is skipped, so an upgrade cut short runs again.
 *
 * - 2: `download_size` and `download_etag` of a ready cart: the size and ETag of its default
 *   download (a tar under the default name), recorded by `markReady`; for a `"bundle": true`
 *   cart, those of the tar written to disk. NULL before ready, and for carts made ready by a
 *   cartd of schema 1 (their downloads are planned from their staged files).
 * - 3: the progress of a cart on its own row, so that `HEAD /{uid}` reads it without counting
 *   files: `staged_files` and `staged_bytes` (the files recorded as staged, and the sum of
 *   their sizes), kept by the store in the transaction that stages files, and filled here
 *   from `cart_files` for the carts that exist; `staging_at`, when the cart began staging
 *   (NULL for carts that began before this version), from which the ETA is worked out.
 * - 4: `error_files`, the files recorded as failed, kept beside `staged_files`, so that the
 *   status of a cart of 100,000 files reads its tallies from the row too.
 * - 5: `owner`, the principal that created the cart (issue 17; `''` for every cart made with
 *   access off, and for those before this version), and uids unique per owner: the unique
 *   index on `live_uid` becomes one on `(owner, live_uid)`, beside a plain one on `live_uid`
 *   for an admin's look-up of a uid whoever owns it.
 * - 6: webhooks. `carts.webhook`, the URL a cart's document named to be told when the cart is
 *   ready or failed (NULL: none); and the outbox `webhook_events`: one row per event, written
 *   in the transaction that makes the cart ready or failed (lib/store/webhooks.ts), with its
 *   id, URL (and its host, which the delivery loop spreads its attempts over), body and delivery state (`pending`, `delivered`, `given_up`), attempts, the time
 *   of the next attempt and the claim of the process delivering it.
 * - 7: shared files (issue 14 item 2). `cart_files.content_key` names the stored bytes of a
 *   staged file (the volume's device and inode: carts that share a file hold hard links to
 *   one inode, so their rows have one key); `cart_files.counted` is 1 on the one row (of a
 *   live cart, where there is one) whose cart counts those bytes against the volume, 0 on the
 *   rows that link to them. `file_claims` holds one row per archive file that a worker
 *   process is recalling or fetching (by the SHA-256 of its id), so that two workers never
 *   work on one file at once. Indexes on `cart_files.archive_id` (to find a stored copy) and
 *   `content_key` (to hand a shared file's count over when a cart goes).
 * - 8: no table changes; a staged file's `crc32` may be NULL (a big file piped to disk without
 *   a hash: its CRC-32 is measured once the cart is ready, or by the first zip). A cartd of
 *   version 7 would take such a file for one not staged, so it must not run on this database
 *   (it refuses a newer schema at start). The tar's ETag no longer names the CRC-32s, so the
 *   ETag of a cart made ready before is new once (a download resumed across the upgrade
 *   starts again from its first byte; its `download_etag` in `GET /{uid}/status` stays the
 *   old one).
 */
const MIGRATIONS: Readonly<Record<number, (dialect: Db["dialect"]) => string[]>> = {
  2: (dialect) => {
    const big = dialect === "mysql" ? "BIGINT" : "INTEGER";
    return [
      `ALTER TABLE carts ADD COLUMN download_size ${big} NULL`,
      "ALTER TABLE carts ADD COLUMN download_etag VARCHAR(128) NULL",
    ];
  },
  3: (dialect) => {
    const big = dialect === "mysql" ? "BIGINT" : "INTEGER";
    return [
      "ALTER TABLE carts ADD COLUMN staged_files INTEGER NOT NULL DEFAULT 0",
      `ALTER TABLE carts ADD COLUMN staged_bytes ${big} NOT NULL DEFAULT 0`,
      `ALTER TABLE carts ADD COLUMN staging_at ${big} NULL`,
      // Run again after an upgrade cut short, it counts the same again: no harm.
      `UPDATE carts SET
        staged_files = (SELECT COUNT(*) FROM cart_files f
          WHERE f.cart_id = carts.id AND f.status = 'staged'),
        staged_bytes = (SELECT COALESCE(SUM(f.size), 0) FROM cart_files f
          WHERE f.cart_id = carts.id AND f.status = 'staged')`,
    ];
  },
  4: () => [
    "ALTER TABLE carts ADD COLUMN error_files INTEGER NOT NULL DEFAULT 0",
    `UPDATE carts SET error_files = (SELECT COUNT(*) FROM cart_files f
      WHERE f.cart_id = carts.id AND f.status = 'error')`,
  ],
  [OWNER_VERSION]: (dialect) => [
    `ALTER TABLE carts ADD COLUMN owner ${
      dialect === "mysql" ? "VARBINARY(1020)" : "TEXT"
    } NOT NULL DEFAULT ''`,
    "CREATE UNIQUE INDEX carts_owner_live_uid ON carts (owner, live_uid)",
    "CREATE INDEX carts_any_live_uid ON carts (live_uid)",
    dialect === "mysql" ? "DROP INDEX carts_live_uid ON carts" : "DROP INDEX carts_live_uid",
  ],
  6: (dialect) => {
    const mysql = dialect === "mysql";
    const id = mysql ? "CHAR(36) CHARACTER SET ascii" : "TEXT";
    const key = mysql ? "VARBINARY(1020)" : "TEXT";
    const text = mysql ? "LONGTEXT" : "TEXT";
    const big = mysql ? "BIGINT" : "INTEGER";
    const tail = mysql ? " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 ROW_FORMAT=DYNAMIC" : "";
    return [
      `ALTER TABLE carts ADD COLUMN webhook ${text} NULL`,
      `CREATE TABLE IF NOT EXISTS webhook_events (
        id ${id} NOT NULL PRIMARY KEY,
        cart_id ${id} NOT NULL,
        uid ${key} NOT NULL,
        type VARCHAR(32) NOT NULL,
        url ${text} NOT NULL,
        host VARCHAR(255) NOT NULL,
        body ${text} NOT NULL,
        status VARCHAR(16) NOT NULL,
        created_at ${big} NOT NULL,
        next_at ${big} NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        claim_owner VARCHAR(64) NULL,
        claim_expires ${big} NULL,
        last_error ${text} NULL,
        done_at ${big} NULL
      )${tail}`,
      "CREATE INDEX webhook_events_due ON webhook_events (status, next_at)",
    ];
  },
  7: (dialect) => {
    const mysql = dialect === "mysql";
    const big = mysql ? "BIGINT" : "INTEGER";
    const tail = mysql ? " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 ROW_FORMAT=DYNAMIC" : "";
    return [
      "ALTER TABLE cart_files ADD COLUMN content_key VARCHAR(96) NULL",
      "ALTER TABLE cart_files ADD COLUMN counted INTEGER NOT NULL DEFAULT 1",
      `CREATE INDEX cart_files_archive ON cart_files (${mysql ? "archive_id(255)" : "archive_id"})`,
      "CREATE INDEX cart_files_content ON cart_files (content_key)",
      `CREATE TABLE IF NOT EXISTS file_claims (
        file_key CHAR(64) NOT NULL PRIMARY KEY,
        owner VARCHAR(64) NOT NULL,
        expires ${big} NOT NULL
      )${tail}`,
      "CREATE INDEX file_claims_owner ON file_claims (owner)",
    ];
  },
  8: () => [],
};

/** Errors of DDL whose work is already done: an index or a column that exists, or a dropped one. */
const ALREADY_DONE =
  /already exists|Duplicate key name|duplicate column name|no such index|check that it exists/i;

/** What `dbchk` reports. */
export interface SchemaState {
  /** The version found in the database (0 when there is no schema). */
  found: number;
  /** The version this build expects. */
  expected: number;
  /** True when the version found is the one this build expects. */
  current: boolean;
}

/** Reads the schema version from the database. */
export async function schemaState(db: Db): Promise<SchemaState> {
  let found = 0;
  try {
    const rows = await db.all<{ version: number }>("SELECT version FROM cartd_schema");
    found = rows.length ? Number(rows[0].version) : 0;
  } catch {
    found = 0;
  }
  return { found, expected: SCHEMA_VERSION, current: found === SCHEMA_VERSION };
}

/** Creates the schema, or upgrades an older one; returns the version it found before. */
export async function syncSchema(db: Db): Promise<number> {
  const { found } = await schemaState(db);
  if (found > SCHEMA_VERSION) {
    throw new Error(
      `The database has schema version ${found}, newer than this cartd (${SCHEMA_VERSION}): ` +
        "upgrade cartd instead of downgrading the database",
    );
  }
  if (found === SCHEMA_VERSION) return found;
  const ddl = [...tables(db.dialect, found)];
  for (let version = Math.max(found, 1) + 1; version <= SCHEMA_VERSION; version++) {
    ddl.push(...MIGRATIONS[version](db.dialect));
  }
  for (const statement of ddl) {
    try {
      await db.run(statement);
    } catch (e) {
      // CREATE INDEX has no IF NOT EXISTS in every MySQL, nor ADD COLUMN in SQLite: an index
      // or a column that exists (an upgrade cut short, run again) is fine.
      if (!ALREADY_DONE.test(String(e))) throw e;
    }
  }
  await db.transaction(async (tx) => {
    await tx.run("DELETE FROM cartd_schema");
    await tx.run("INSERT INTO cartd_schema (version) VALUES (?)", [SCHEMA_VERSION]);
  });
  return found;
}
