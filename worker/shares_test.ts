/**
 * worker/shares.ts: one lead per archive file in a process, and across processes by the
 * claims of `file_claims` (MariaDB: two stores on separate connection pools stand for two
 * worker processes); a stored copy is linked only by the hash rule.
 */
import assert from "node:assert/strict";
import type { CartDocument } from "../lib/cart/document.ts";
import { openSqlite } from "../lib/db/sqlite.ts";
import { CartStore } from "../lib/store/store.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { Volume } from "../lib/volume/volume.ts";
import { ThreadPool } from "../threads/pool.ts";
import { MYSQL_OFF, testMysqlConfig } from "../tests/support/services.ts";
import { FileShares, type Lead } from "./shares.ts";

const doc = (
  ids: string[],
  hash?: { hashtype: "md5" | "sha256"; hashsum: string },
): CartDocument => ({
  files: ids.map((id) => ({ id, path: `d/${id}`, ...hash })),
  bundle: false,
  manifest: false,
});

function isLead(got: Lead | { wait: Promise<void> }): got is Lead {
  return !("wait" in got);
}

/** Whether `p` settles within `ms`. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<false>((r) => timer = setTimeout(() => r(false), ms));
  const result = await Promise.race([p.then(() => true, () => true), late]);
  clearTimeout(timer);
  return result;
}

Deno.test("shares: one cart of a process leads an archive file; the others wait for its end", async () => {
  const dir = await Deno.makeTempDir({ prefix: "shares_test_" });
  const db = openSqlite(`${dir}/db.sqlite3`);
  const pool = new ThreadPool(1, 2, 0);
  try {
    await syncSchema(db);
    const store = new CartStore(db);
    const a = (await store.createCart("a", doc(["x"]), "a".repeat(64))).cart;
    const b = (await store.createCart("b", doc(["x"]), "b".repeat(64))).cart;
    const shares = new FileShares(store, new Volume(dir), pool, {
      claims: false,
      owner: "p1",
      ttlMs: 1000,
    });
    const [fa] = await store.files(a.id);
    const [fb] = await store.files(b.id);
    const signal = new AbortController().signal;
    const first = await shares.lead(fa, signal);
    assert.ok(isLead(first), "the first cart leads");
    assert.ok(isLead(await shares.lead(fa, signal)), "and keeps its lead when it asks again");
    const second = await shares.lead(fb, signal);
    assert.ok(!isLead(second), "the second waits");
    assert.equal(first.wanted, true, "the lead knows a cart waits for it");
    assert.equal(await settlesWithin(second.wait, 50), false, "while the lead lasts");
    first.end();
    assert.equal(await settlesWithin(second.wait, 50), true, "and no longer once it ends");
    assert.ok(isLead(await shares.lead(fb, signal)), "then it may lead");
    shares.endCart(b.id);
    shares.close();
  } finally {
    pool.close();
    await db.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("shares: the stored-copy hints of a batch, and when they go stale", async () => {
  const dir = await Deno.makeTempDir({ prefix: "shares_test_" });
  const db = openSqlite(`${dir}/db.sqlite3`);
  const pool = new ThreadPool(1, 2, 0);
  try {
    await syncSchema(db);
    const store = new CartStore(db);
    const facts = { size: 1, mtime: 0, sha256: "0".repeat(64), crc32: 0 };
    const a = (await store.createCart("a", doc(["x", "y"]), "a".repeat(64))).cart;
    await store.filesStaged(a.id, [{ idx: 0, facts }]); // x staged in a; y not
    const b = (await store.createCart("b", doc(["x", "y", "X", "z"]), "b".repeat(64))).cart;
    const shares = new FileShares(store, new Volume(dir), pool, {
      claims: false,
      owner: "p1",
      ttlMs: 1000,
    });
    const hints = [];
    for await (const hint of shares.withHints(await store.files(b.id), b.id)) hints.push(hint);
    assert.deepEqual(
      hints.map((h) => [h.file.archiveId, h.stored]),
      [["x", true], ["y", false], ["X", false], ["z", false]],
      "x is staged in a live cart; y is not staged; ids are compared exactly",
    );
    assert.deepEqual(hints.map((h) => shares.worthLooking(h)), [true, false, false, false]);
    assert.deepEqual(
      await store.stagedElsewhere(["x", "y"], a.id),
      new Set(),
      "a cart's own files are not copies for it",
    );
    shares.noteRecorded(b.id, 3);
    assert.equal(shares.worthLooking(hints[1]), false, "the cart's own records change nothing");
    shares.noteRecorded(a.id, 1);
    assert.equal(shares.worthLooking(hints[1]), true, "another cart recorded files: look again");
    await store.forget(a.id);
    assert.deepEqual(await store.stagedElsewhere(["x"], b.id), new Set(), "a is gone");
    shares.endCart(a.id);
    shares.endCart(b.id);
    shares.close();
  } finally {
    pool.close();
    await db.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "shares (MariaDB): two workers never lead one archive file at once; a dead worker's claim expires",
  ignore: MYSQL_OFF,
  async fn() {
    const { openMysql } = await import("../lib/db/mysql.ts");
    const config = testMysqlConfig();
    const dir = await Deno.makeTempDir({ prefix: "shares_test_mysql_" });
    const dbs = [await openMysql(config), await openMysql(config)];
    const pool = new ThreadPool(1, 2, 0);
    try {
      await syncSchema(dbs[0]);
      const stores = dbs.map((db) => new CartStore(db));
      const volume = new Volume(dir);
      const a = (await stores[0].createCart("a", doc(["x", "y"]), "a".repeat(64))).cart;
      const b = (await stores[1].createCart("b", doc(["x", "y"]), "b".repeat(64))).cart;
      const [ax, ay] = await stores[0].files(a.id);
      const [bx, by] = await stores[1].files(b.id);
      const options = { claims: true, ttlMs: 600, pollMs: 50 };
      const w1 = new FileShares(stores[0], volume, pool, { ...options, owner: "worker-1" });
      const w2 = new FileShares(stores[1], volume, pool, { ...options, owner: "worker-2" });
      const signal = new AbortController().signal;

      // Many asking at once: exactly one of the two workers leads x.
      const asks = await Promise.all([w1.lead(ax, signal), w2.lead(bx, signal)]);
      assert.equal(asks.filter(isLead).length, 1, "exactly one worker leads x");
      const [leader, waiter] = isLead(asks[0]) ? [asks[0], asks[1]] : [asks[1], asks[0]];
      assert.ok(isLead(leader) && !isLead(waiter));
      // The lead is renewed (every ttl / 3) while it lasts: the other still waits after 2 ttl.
      assert.equal(await settlesWithin(waiter.wait, 1200), false, "the claim is renewed");
      leader.end();
      assert.equal(await settlesWithin(waiter.wait, 1000), true, "given up: the other goes on");
      const [row] = await dbs[0].all("SELECT COUNT(*) AS n FROM file_claims");
      assert.equal(Number(row.n), 0, "no claim is left behind");

      // A worker that dies holding its claim: the claim expires and the other takes over.
      const dead = await w1.lead(ay, signal);
      assert.ok(isLead(dead));
      w1.close(); // stops renewing, as a killed process would
      const started = performance.now();
      const other = await w2.lead(by, signal);
      assert.ok(!isLead(other), "the claim still holds");
      await other.wait;
      const waited = performance.now() - started;
      assert.ok(waited >= 300, `waited ${waited.toFixed(0)} ms, until the claim expired`);
      assert.ok(isLead(await w2.lead(by, signal)), "then the other worker leads y");
      w2.endCart(b.id);
      w2.close();
      await new Promise((r) => setTimeout(r, 200)); // the claim given up on the way out
    } finally {
      pool.close();
      await dbs[1].close();
      await dbs[0].run(`DROP DATABASE IF EXISTS \`${config.database}\``).catch(() => {});
      await dbs[0].close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "shares (MariaDB): ids that differ only in case are each found staged elsewhere",
  ignore: MYSQL_OFF,
  async fn() {
    const { openMysql } = await import("../lib/db/mysql.ts");
    const config = testMysqlConfig();
    const db = await openMysql(config);
    try {
      await syncSchema(db);
      const store = new CartStore(db);
      const facts = { size: 1, mtime: 0, sha256: "0".repeat(64), crc32: 0 };
      // MariaDB's default collation holds "X" and "x" equal; cartd's ids are exact.
      const a = (await store.createCart("a", doc(["X", "x", "Y"]), "a".repeat(64))).cart;
      await store.filesStaged(a.id, [{ idx: 0, facts }, { idx: 1, facts }, { idx: 2, facts }]);
      const b = (await store.createCart("b", doc(["x", "X", "y"]), "b".repeat(64))).cart;
      assert.deepEqual(
        await store.stagedElsewhere(["x", "X", "y"], b.id),
        new Set(["x", "X"]),
        "x and X are both staged in a; y is not (Y is)",
      );
      assert.deepEqual(
        (await store.copiesOf("x", b.id)).map((c) => c.idx),
        [1],
        "the copy of x is x's, not X's",
      );
    } finally {
      await db.run(`DROP DATABASE IF EXISTS \`${config.database}\``).catch(() => {});
      await db.close();
    }
  },
});
