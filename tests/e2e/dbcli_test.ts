/**
 * `cartd dbsync` and `cartd dbchk` as an operator runs them: against a fresh MariaDB database
 * (named by a `mysql://` URL and by the link-style names) and a fresh SQLite file. dbchk exits
 * 1 before dbsync and 0 after; dbsync is idempotent, upgrades an older schema and refuses a
 * newer one (and a version-1 database with a ready bundle cart still serves it once upgraded);
 * `DATABASE_LOGGING=true` prints every query.
 *
 * `CARTD_TEST_MYSQL_HOST` / `_PORT` point the MariaDB cases elsewhere (user root, no password);
 * `CARTD_TEST_MYSQL=off` skips them.
 */
import assert from "node:assert/strict";
import mysql from "mysql2/promise";
import { SCHEMA_VERSION } from "../../lib/store/schema.ts";
import { cartdCommand, postCart, startCartd, waitFor } from "../support/harness.ts";
import { startFakeArchive } from "../support/fake_archive.ts";
import { MYSQL_HOST, MYSQL_PORT, test } from "../support/services.ts";

/** The tables of the current schema, sorted by name, as dbsync leaves them. */
const SCHEMA_TABLES = [
  "cart_files",
  "cartd_lock",
  "cartd_schema",
  "carts",
  "file_claims",
  "webhook_events",
];

/** Runs `cartd ARGS` with exactly `env` (plus VOLUME_PATH); returns its exit code and output. */
async function cartd(
  args: string[],
  env: Record<string, string>,
  volume: string,
): Promise<{ code: number; out: string }> {
  const result = await cartdCommand(args, volume, env, {
    stdout: "piped",
    signal: AbortSignal.timeout(30_000),
  }).output();
  const d = new TextDecoder();
  return { code: result.code, out: d.decode(result.stdout) + d.decode(result.stderr) };
}

/** Asserts the exit code, showing the output when it is wrong. */
function exits(result: { code: number; out: string }, code: number, what: string): string {
  assert.equal(result.code, code, `${what} exited ${result.code}:\n${result.out}`);
  return result.out;
}

async function rootQuery(sql: string, database?: string): Promise<unknown[]> {
  const connection = await mysql.createConnection({
    host: MYSQL_HOST,
    port: MYSQL_PORT,
    user: "root",
    password: "",
    database,
  });
  try {
    const [rows] = await connection.query(sql);
    return Array.isArray(rows) ? rows : [];
  } finally {
    await connection.end();
  }
}

/**
 * The whole dbchk → dbsync → dbchk → dbsync cycle, then an upgrade from an older schema and a
 * refusal to touch a newer one; `tables` lists the database's tables.
 */
async function cycle(
  env: Record<string, string>,
  volume: string,
  /** Sets the schema version to `version` (0: no version row), dropping cartd_lock when older. */
  setVersion: (version: number) => Promise<void>,
  tables: () => Promise<string[]>,
): Promise<void> {
  let out = exits(await cartd(["dbchk"], env, volume), 1, "dbchk before dbsync");
  assert.match(
    out,
    new RegExp(`at version 0; this cartd needs ${SCHEMA_VERSION}: run 'cartd dbsync'`),
  );
  assert.deepEqual(await tables(), [], "dbchk created no table");

  out = exits(await cartd(["dbsync"], env, volume), 0, "dbsync");
  assert.match(out, /Created the cartd schema\./);
  assert.deepEqual(await tables(), SCHEMA_TABLES);

  out = exits(await cartd(["dbchk"], env, volume), 0, "dbchk after dbsync");
  assert.match(out, new RegExp(`The cartd schema is current \\(version ${SCHEMA_VERSION}\\)`));

  out = exits(await cartd(["dbsync"], env, volume), 0, "dbsync again");
  assert.match(out, new RegExp(`was at version ${SCHEMA_VERSION}; it is current now`));
  exits(await cartd(["admin", "dbchk"], env, volume), 0, "admin dbchk");

  // An older database: a table of the current schema missing, and the version before this
  // one (with version 1 current: no version row, as after an interrupted first dbsync).
  const older = SCHEMA_VERSION - 1;
  await setVersion(older);
  out = exits(await cartd(["dbchk"], env, volume), 1, `dbchk of version ${older}`);
  assert.match(out, new RegExp(`at version ${older}; this cartd needs ${SCHEMA_VERSION}`));
  out = exits(await cartd(["dbsync"], env, volume), 0, `dbsync from version ${older}`);
  assert.match(
    out,
    older ? new RegExp(`was at version ${older}; it is current now`) : /Created the cartd schema/,
  );
  assert.deepEqual(await tables(), SCHEMA_TABLES);
  exits(await cartd(["dbchk"], env, volume), 0, "dbchk after the upgrade");

  // A database a newer cartd made is never downgraded.
  await setVersion(SCHEMA_VERSION + 1);
  out = exits(await cartd(["dbchk"], env, volume), 1, "dbchk of a newer schema");
  assert.match(out, new RegExp(`at version ${SCHEMA_VERSION + 1}; this cartd needs`));
  const refused = await cartd(["dbsync"], env, volume);
  assert.notEqual(refused.code, 0, refused.out);
  assert.match(refused.out, /newer than this cartd/);
}

for (const style of ["a mysql:// URL", "the link-style names"] as const) {
  test.mysql(`dbsync and dbchk on a fresh MariaDB database, named by ${style}`, async () => {
    const database = `cartd_e2e_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    const volume = await Deno.makeTempDir({ prefix: "cartd-dbcli-" });
    const env: Record<string, string> = style === "a mysql:// URL"
      ? { DATABASE_URL: `mysql://root@${MYSQL_HOST}:${MYSQL_PORT}/${database}` }
      : {
        MYSQL_ENV_MYSQL_USER: "root",
        MYSQL_ENV_MYSQL_PASSWORD: "",
        MYSQL_ENV_MYSQL_DATABASE: database,
        MYSQL_PORT_3306_TCP_ADDR: MYSQL_HOST,
        MYSQL_PORT_3306_TCP_PORT: String(MYSQL_PORT),
      };
    const tables = async () =>
      (await rootQuery(
        `SELECT table_name AS t FROM information_schema.tables WHERE table_schema = '${database}'`,
      )).map((r) => String((r as { t: string }).t)).sort();
    try {
      await cycle(env, volume, async (version) => {
        if (version < SCHEMA_VERSION) await rootQuery("DROP TABLE cartd_lock", database);
        await rootQuery("DELETE FROM cartd_schema", database);
        if (version) {
          await rootQuery(`INSERT INTO cartd_schema (version) VALUES (${version})`, database);
        }
      }, tables);
      const lock = await rootQuery("SELECT name FROM cartd_lock", database);
      assert.deepEqual(lock.map((r) => (r as { name: string }).name), ["space"]);
    } finally {
      await rootQuery(`DROP DATABASE IF EXISTS \`${database}\``);
      await Deno.remove(volume, { recursive: true });
    }
  });
}

Deno.test("dbsync and dbchk on a fresh SQLite file", async () => {
  const volume = await Deno.makeTempDir({ prefix: "cartd-dbcli-" });
  const path = `${volume}/cartd.sqlite3`;
  const { DatabaseSync } = await import("node:sqlite");
  const withDb = <T>(fn: (db: InstanceType<typeof DatabaseSync>) => T): T => {
    const db = new DatabaseSync(path);
    try {
      return fn(db);
    } finally {
      db.close();
    }
  };
  const tables = () =>
    Promise.resolve(
      withDb((db) =>
        db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all()
          .map((r) => String(r.name))
      ),
    );
  try {
    // VOLUME_PATH alone: the SQLite file in the volume, as the service itself uses it.
    await cycle({}, volume, (version) => {
      withDb((db) => {
        if (version < SCHEMA_VERSION) db.exec("DROP TABLE cartd_lock");
        db.exec("DELETE FROM cartd_schema");
        if (version) db.exec(`INSERT INTO cartd_schema (version) VALUES (${version})`);
      });
      return Promise.resolve();
    }, tables);
    // A sqlite: URL names the same file (the cycle left it at the newer version).
    const byUrl = exits(
      await cartd(["dbchk"], { DATABASE_URL: `sqlite://${path}` }, volume),
      1,
      "dbchk by URL",
    );
    assert.match(byUrl, new RegExp(`at version ${SCHEMA_VERSION + 1};`));
  } finally {
    await Deno.remove(volume, { recursive: true });
  }
});

test.mysql("DATABASE_LOGGING=true prints every query, on MariaDB and SQLite", async () => {
  const database = `cartd_e2e_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const volume = await Deno.makeTempDir({ prefix: "cartd-dbcli-" });
  try {
    for (
      const env of [
        { DATABASE_URL: `mysql://root@${MYSQL_HOST}:${MYSQL_PORT}/${database}` },
        {},
      ] as Record<string, string>[]
    ) {
      const quiet = exits(await cartd(["dbsync"], env, volume), 0, "dbsync");
      assert.doesNotMatch(quiet, /INFO sql /, "no queries printed without DATABASE_LOGGING");
      const loud = exits(
        await cartd(["dbchk"], { ...env, DATABASE_LOGGING: "true" }, volume),
        0,
        "dbchk with DATABASE_LOGGING",
      );
      assert.match(loud, /INFO sql sql="SELECT version FROM cartd_schema" params=\[\]/);
      const synced = exits(
        await cartd(["dbsync"], { ...env, DATABASE_LOGGING: "true" }, volume),
        0,
        "dbsync with DATABASE_LOGGING",
      );
      assert.match(synced, /INFO sql sql="SELECT version FROM cartd_schema"/);
    }
    // Every statement of a schema creation is printed.
    const fresh = exits(
      await cartd(
        ["dbsync"],
        { DATABASE_LOGGING: "1", CARTD_SQLITE_PATH: `${volume}/x.db` },
        volume,
      ),
      0,
      "dbsync of a new file",
    );
    for (const table of ["cartd_schema", "carts", "cart_files", "cartd_lock"]) {
      assert.match(fresh, new RegExp(`INFO sql sql="CREATE TABLE IF NOT EXISTS ${table}`));
    }
    assert.match(
      fresh,
      new RegExp(
        `INFO sql sql="INSERT INTO cartd_schema \\(version\\) VALUES \\(\\?\\)" params=\\[${SCHEMA_VERSION}\\]`,
      ),
    );
  } finally {
    await rootQuery(`DROP DATABASE IF EXISTS \`${database}\``);
    await Deno.remove(volume, { recursive: true });
  }
});

Deno.test("a version-1 database with a ready bundle cart is upgraded and still serves it", async () => {
  const volume = await Deno.makeTempDir({ prefix: "cartd-dbcli-upgrade-" });
  await using fake = startFakeArchive();
  fake.put("a", "the bytes of a staged file, more than a few of them");
  const env = { ARCHIVE_INTERFACE_URL: fake.url };
  const get = async (url: string, headers: Record<string, string> = {}) => {
    const res = await fetch(`${url}up`, { headers });
    const bytes = new Uint8Array(await res.arrayBuffer());
    return { status: res.status, etag: res.headers.get("etag"), bytes };
  };
  try {
    let before;
    {
      await using served = await startCartd({ env, volume });
      const doc = { fileids: [{ id: "a", path: "a.txt" }], bundle: true };
      assert.equal((await postCart(served.url, "up", doc)).status, 201);
      assert.equal((await waitFor(served.url, "up", "ready"))[1], "ready");
      before = {
        full: await get(served.url),
        range: await get(served.url, { range: "bytes=510-530" }),
      };
      assert.equal(before.full.status, 200);
      assert.equal(before.range.status, 206);
    }
    // What cartd of schema 1 left: no download columns (its ETag was in bundle.tar.etag).
    const { DatabaseSync } = await import("node:sqlite");
    const db = new DatabaseSync(`${volume}/cartd.sqlite3`);
    try {
      db.exec("ALTER TABLE carts DROP COLUMN download_size");
      db.exec("ALTER TABLE carts DROP COLUMN download_etag");
      db.exec("UPDATE cartd_schema SET version = 1");
    } finally {
      db.close();
    }
    const out = exits(await cartd(["dbsync"], {}, volume), 0, "dbsync from version 1");
    assert.match(out, /was at version 1; it is current now/);
    await using again = await startCartd({ env, volume });
    const after = {
      full: await get(again.url),
      range: await get(again.url, { range: "bytes=510-530" }),
    };
    assert.deepEqual(after, before, "the same bytes, ETag and range after the upgrade");
  } finally {
    await Deno.remove(volume, { recursive: true });
  }
});
