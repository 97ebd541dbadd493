/**
 * Opens the database a config names: the embedded SQLite file, or a MySQL server (with the
 * `DATABASE_CONNECT_ATTEMPTS` / `DATABASE_WAIT` retries). The drivers are loaded only when
 * asked for, so a process on SQLite never loads mysql2.
 *
 * @example
 * ```ts
 * import { openDb } from "./open.ts";
 * const db = await openDb({ kind: "sqlite", path: ":memory:", logging: false });
 * await db.close();
 * ```
 * @module
 */
import type { DatabaseConfig } from "../config/config.ts";
import type { Db } from "./db.ts";

/** Opens the database the config names, waiting and retrying as `DATABASE_*` settings say. */
export async function openDb(config: DatabaseConfig): Promise<Db> {
  if (config.kind === "sqlite") {
    const { openSqlite } = await import("./sqlite.ts");
    return openSqlite(config.path, config.logging);
  }
  const { openMysql } = await import("./mysql.ts");
  return await openMysql(config);
}
