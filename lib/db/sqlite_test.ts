import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { openSqlite } from "./sqlite.ts";
import { DbUnavailableError } from "./db.ts";

/** Runs `fn` with cartd's connection to a new database and a second, plain one to it. */
async function withTwoConnections(
  fn: (db: ReturnType<typeof openSqlite>, other: DatabaseSync, path: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cartd-sqlite-" });
  const path = `${dir}/busy.db`;
  const db = openSqlite(path);
  const other = new DatabaseSync(path);
  try {
    await db.run("CREATE TABLE t (x INTEGER)");
    await fn(db, other, path);
  } finally {
    other.close();
    await db.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("a write waits for another connection's transaction without stopping the event loop", async () => {
  await withTwoConnections(async (db, other) => {
    other.exec("BEGIN IMMEDIATE"); // the other connection holds the write lock
    other.exec("INSERT INTO t VALUES (1)");
    let settled = false;
    const write = db.run("INSERT INTO t VALUES (2)").finally(() => settled = true);
    const inTransaction = db.transaction((tx) => tx.run("INSERT INTO t VALUES (3)"));
    // While they wait, this thread goes on: timers fire, nothing is written yet.
    let ticks = 0;
    while (ticks < 20) {
      await new Promise((r) => setTimeout(r, 1));
      ticks++;
    }
    assert.equal(settled, false);
    // Reads of the connection are not held up behind them.
    assert.deepEqual(await db.all("SELECT x FROM t"), []);
    other.exec("COMMIT");
    assert.deepEqual(await write, { changes: 1 });
    await inTransaction;
    const rows = await db.all<{ x: number }>("SELECT x FROM t ORDER BY x");
    assert.deepEqual(rows.map((r) => r.x), [1, 2, 3]);
  });
});

Deno.test("a database busy for longer than the wait: DbUnavailableError, and nothing written", async () => {
  // (10 s: the wait that busy_timeout was)
  await withTwoConnections(async (db, other) => {
    other.exec("BEGIN IMMEDIATE");
    await assert.rejects(db.run("INSERT INTO t VALUES (2)"), DbUnavailableError);
    other.exec("ROLLBACK");
    assert.deepEqual(await db.all("SELECT x FROM t"), []);
  });
});

Deno.test("checkpoint copies a big transaction's log into the database file once older readers finish", async () => {
  await withTwoConnections(async (db, reader, path) => {
    assert.equal(await db.checkpoint(), true);
    const before = (await Deno.stat(path)).size;
    // A reader in an older snapshot: no page written after it began may be copied yet.
    reader.exec("BEGIN");
    reader.prepare("SELECT count(*) FROM t").get();
    const row = "x".repeat(1000);
    await db.transaction(async (tx) => {
      for (let i = 0; i < 3000; i++) await tx.run("INSERT INTO t VALUES (?)", [row]);
    });
    // The commit's own automatic checkpoint could not copy them, nor can this one.
    assert.equal(await db.checkpoint(20), false);
    assert.equal((await Deno.stat(path)).size, before);
    reader.exec("COMMIT");
    assert.equal(await db.checkpoint(), true);
    const after = (await Deno.stat(path)).size;
    assert.ok(after - before > 3000 * 1000, `the file grew by ${after - before} bytes`);
  });
});
