/**
 * The database schema, for SQLite and MySQL, with its version. `cartd dbsync` creates or
 * upgrades it ({@linkcode syncSchema}); `cartd dbchk` reports whether it is current
 * ({@linkcode schemaState}). Every process also runs {@linkcode syncSchema} at start: it is
 * idempotent.
 *
 * @module
 */
import type { Db } from "../db/db.ts";

/** The schema version this build of cartd writes and reads. */
export const SCHEMA_VERSION = 1;

function tables(dialect: Db["dialect"]): string[] {
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
    `CREATE UNIQUE INDEX carts_live_uid ON carts (live_uid)`,
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
  for (const ddl of tables(db.dialect)) {
    try {
      await db.run(ddl);
    } catch (e) {
      // CREATE INDEX has no IF NOT EXISTS in every MySQL; an existing index is fine.
      if (!/already exists|Duplicate key name/i.test(String(e))) throw e;
    }
  }
  await db.transaction(async (tx) => {
    await tx.run("DELETE FROM cartd_schema");
    await tx.run("INSERT INTO cartd_schema (version) VALUES (?)", [SCHEMA_VERSION]);
  });
  return found;
}
