/**
 * One contract for {@linkcode CartStore}, run against every database driver: SQLite (a temp
 * file) and MariaDB/MySQL (a fresh database per run, dropped afterwards). The MariaDB variant
 * runs by default; when the server is unreachable one test fails saying so and the MariaDB
 * tests are skipped (tests/support/services.ts); set `CARTD_TEST_MYSQL=off` to skip them. `CARTD_TEST_MYSQL_HOST` / `_PORT` / `_USER` / `_PASSWORD` point it elsewhere.
 *
 * The file also holds the MariaDB driver's own tests (rows-matched counts, errors while the
 * server is away, recovery, start-up retries), which need a server and a TCP proxy.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Db, DbUnavailableError } from "../db/db.ts";
import { openSqlite } from "../db/sqlite.ts";
import { openMysql } from "../db/mysql.ts";
import { OWNER_VERSION, SCHEMA_VERSION, schemaState, syncSchema } from "./schema.ts";
import {
  type Admission,
  type Cart,
  CartStore,
  FORGET_BATCH,
  powerOfTwoBatches,
  USE_RESOLUTION_MS,
} from "./store.ts";
import type { CartDocument } from "../cart/document.ts";
import type { CartStatus } from "../cart/state.ts";
import {
  MYSQL_HOST,
  MYSQL_PORT,
  needs,
  type Service,
  test,
  testMysqlConfig,
} from "../../tests/support/services.ts";
import { startProxy } from "../../tests/support/tcp_proxy.ts";
import { eventually } from "../../tests/support/eventually.ts";

const mysqlConfig = testMysqlConfig;

/** The download facts the tests make carts ready with. */
const READY_SIZE = 10240;
const READY_ETAG = '"tar-test"';

/** Drops the test database through the same connection and closes it. */
async function dropAndClose(db: Db, database: string): Promise<void> {
  try {
    await db.run(`DROP DATABASE IF EXISTS \`${database}\``);
  } finally {
    await db.close();
  }
}

/** A store on a fresh database whose clock the test sets, and how to get rid of it. */
interface Fixture {
  store: CartStore;
  dispose(): Promise<void>;
}

/** Makes a {@linkcode Fixture}; `now` is the store's clock. */
type StoreFactory = (now: () => number) => Promise<Fixture>;

const sqliteFactory: StoreFactory = async (now) => {
  const dir = mkdtempSync(join(tmpdir(), "cartd-store-"));
  const db = openSqlite(join(dir, "cartd.sqlite3"));
  await syncSchema(db);
  return {
    store: new CartStore(db, now),
    async dispose() {
      await db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
};

const mysqlFactory: StoreFactory = async (now) => {
  const config = mysqlConfig();
  const db = await openMysql(config);
  await syncSchema(db);
  return {
    store: new CartStore(db, now),
    dispose: () => dropAndClose(db, config.database),
  };
};

function doc(count: number, seed = "f", extra: Partial<CartDocument> = {}): CartDocument {
  return {
    files: Array.from({ length: count }, (_, i) => ({
      id: `${seed}${i}`,
      path: `dir/${seed}-${i}.dat`,
      ...(i % 2 === 0 ? { hashtype: "sha1" as const, hashsum: "a".repeat(40) } : {}),
    })),
    bundle: false,
    manifest: false,
    ...extra,
  };
}

let uidCounter = 0;
/** A uid nobody else in this run uses. */
function uid(label: string): string {
  return `${label}-${++uidCounter}-${crypto.randomUUID().slice(0, 8)}`;
}

/** Runs the whole contract against the store `factory` makes. */
function storeContract(name: string, factory: StoreFactory, services: Service[] = []): void {
  Deno.test(needs(services, `store contract (${name})`), async (t) => {
    const clock = { now: 1_700_000_000_000 };
    const { store, dispose } = await factory(() => clock.now);
    const db = store.db;
    const create = (u: string, d: CartDocument, hash: string) => store.createCart(u, d, hash);
    /** Moves a cart to `to` by the store's named transition for it, whoever holds it. */
    const moveTo = (id: string, to: Exclude<CartStatus, "waiting">, message = "") =>
      to === "staging"
        ? store.startStaging(id, null)
        : to === "bundling"
        ? store.startBundling(id, null)
        : to === "ready"
        ? store.markReady(id, null, { readyAt: clock.now, size: READY_SIZE, etag: READY_ETAG })
        : store.fail(id, message);
    /** A fresh cart in "waiting". */
    const fresh = async (label: string): Promise<Cart> =>
      (await create(uid(label), doc(2, label), `hash-${label}`)).cart;

    try {
      await t.step("schema sync is idempotent and current", async () => {
        assert.deepEqual(await schemaState(db), {
          found: SCHEMA_VERSION,
          expected: SCHEMA_VERSION,
          current: true,
        });
        assert.equal(await syncSchema(db), SCHEMA_VERSION);
        assert.equal(await syncSchema(db), SCHEMA_VERSION);
        const rows = await db.all("SELECT version FROM cartd_schema");
        assert.equal(rows.length, 1);
        assert.equal(Number(rows[0].version), SCHEMA_VERSION);
        assert.equal((await schemaState(db)).current, true);
      });

      await t.step(
        "uids are per owner (the owner migration): two owners' carts of one uid, each replaced alone",
        async () => {
          // The owner migration runs again (an upgrade cut short before its version was written).
          await db.run("DELETE FROM cartd_schema");
          await db.run("INSERT INTO cartd_schema (version) VALUES (?)", [OWNER_VERSION - 1]);
          assert.equal(await syncSchema(db), OWNER_VERSION - 1);
          assert.equal((await schemaState(db)).current, true);
          const u = uid("owned");
          const a = await store.createCart(u, doc(1, "oa"), "h-oa", "alice");
          const b = await store.createCart(u, doc(2, "ob"), "h-ob", "bob");
          assert.equal(a.cart.owner, "alice");
          assert.equal(b.cart.owner, "bob");
          assert.deepEqual(b.replaced, [], "bob's cart replaces nothing of alice's");
          assert.equal((await store.liveCart(u, "alice"))?.id, a.cart.id);
          assert.equal((await store.liveCart(u, "bob"))?.id, b.cart.id);
          assert.equal(await store.liveCart(u), null, "no cart of the empty owner");
          assert.deepEqual((await store.liveCartsOfUid(u)).map((c) => c.owner), ["alice", "bob"]);
          const again = await store.createCart(u, doc(3, "oa2"), "h-oa2", "alice");
          assert.deepEqual(again.replaced.map((c) => c.id), [a.cart.id]);
          assert.equal((await store.liveCart(u, "bob"))?.id, b.cart.id, "bob's cart stays");
          const use = await store.usage("alice");
          assert.deepEqual(use, [{ owner: "alice", carts: 1, reservedBytes: 0, pendingFiles: 3 }]);
          // A later upgrade (from the owner version on; nothing to do while it is the last) keeps
          // two owners' carts of one uid: the tables of version 1 do not bring back its index.
          await db.run("DELETE FROM cartd_schema");
          await db.run("INSERT INTO cartd_schema (version) VALUES (?)", [OWNER_VERSION]);
          await syncSchema(db);
          assert.equal((await schemaState(db)).current, true);
          assert.equal((await store.liveCart(u, "bob"))?.id, b.cart.id);
          for (const c of [again.cart, b.cart, a.cart]) {
            await store.unlive(c.id);
            await store.forget(c.id);
          }
        },
      );

      await t.step(
        "createCart's admit runs inside its transaction: of POSTs at once for the last place, one passes",
        async () => {
          const owner = uid("quota-owner");
          const refusal = new Error("over the quota");
          const seen: (number | null)[] = [];
          // At most 2 live carts: the check sees what the owner holds inside the transaction.
          const admit = (a: Admission) => {
            seen.push(a.use?.carts ?? null);
            if ((a.use?.carts ?? 0) - (a.replaced ? 1 : 0) + 1 > 2) throw refusal;
          };
          const results = await Promise.allSettled(
            Array.from(
              { length: 6 },
              (_, i) => store.createCart(uid("q"), doc(3, `q${i}`), `h-q${i}`, owner, admit),
            ),
          );
          const made = results.filter((r) => r.status === "fulfilled");
          assert.equal(made.length, 2, "two places, two carts");
          for (const r of results) {
            if (r.status === "rejected") assert.equal(r.reason, refusal);
          }
          const [use] = await store.usage(owner);
          assert.equal(use.carts, 2);
          assert.equal(use.pendingFiles, 6, "the refused carts stored no file");
          assert.deepEqual(seen.slice().sort(), [2, 2, 2, 2, null, 1].sort());
          // Replacing one of its carts at the limit is admitted (the admit sees which).
          const first = (made[0] as PromiseFulfilledResult<{ cart: Cart }>).value.cart;
          const again = await store.createCart(first.uid, doc(1, "qr"), "h-qr", owner, admit);
          assert.deepEqual(again.replaced.map((c) => c.id), [first.id]);
          for (const c of await store.allCarts()) {
            if (c.owner !== owner) continue;
            await store.unlive(c.id);
            await store.forget(c.id);
          }
        },
      );

      await t.step("createCart stores 1,200 files in order, in batches", async () => {
        const u = uid("big");
        const d = doc(1200, "big", { bundle: true, manifest: true });
        clock.now += 1000;
        const { cart, replaced, kept } = await create(u, d, "h-big");
        assert.equal(kept, false);
        assert.deepEqual(replaced, []);
        assert.equal(cart.uid, u);
        assert.equal(cart.status, "waiting");
        assert.equal(cart.message, "");
        assert.equal(cart.documentHash, "h-big");
        assert.equal(cart.bundle, true);
        assert.equal(cart.manifest, true);
        assert.equal(cart.fileCount, 1200);
        assert.equal(cart.totalBytes, null);
        assert.equal(cart.reservedBytes, 0);
        assert.equal(cart.createdAt, clock.now);
        assert.equal(cart.updatedAt, clock.now);
        assert.equal(cart.lastUsedAt, clock.now);
        assert.equal(cart.readyAt, null);
        assert.equal(cart.claimOwner, null);
        assert.equal(cart.claimExpires, null);
        assert.equal(cart.attempts, 0);
        assert.match(cart.id, /^[0-9a-f-]{36}$/);

        const files = await store.files(cart.id);
        assert.equal(files.length, 1200);
        files.forEach((f, i) => {
          assert.equal(f.idx, i);
          assert.equal(f.cartId, cart.id);
          assert.equal(f.archiveId, `big${i}`);
          assert.equal(f.path, `dir/big-${i}.dat`);
          assert.equal(f.status, "pending");
          assert.equal(f.size, null);
          assert.equal(f.sha256, null);
          assert.equal(f.message, null);
          assert.equal(f.hashtype, i % 2 === 0 ? "sha1" : null);
          assert.equal(f.hashsum, i % 2 === 0 ? "a".repeat(40) : null);
        });
        assert.deepEqual(await store.liveCart(u), cart);
        assert.deepEqual(await store.cart(cart.id), cart);
        assert.ok((await store.liveCarts()).some((c) => c.id === cart.id));
        assert.ok((await store.allCarts()).some((c) => c.id === cart.id));
        assert.equal(await store.liveCart(u + "-nobody"), null);
        assert.equal(await store.cart(crypto.randomUUID()), null);
        assert.deepEqual(await store.files(crypto.randomUUID()), []);
      });

      await t.step("a cart without files", async () => {
        const { cart } = await create(uid("empty"), doc(0), "h-empty");
        assert.equal(cart.fileCount, 0);
        assert.deepEqual(await store.files(cart.id), []);
      });

      await t.step("re-POST of another document replaces the live cart", async () => {
        const u = uid("replace");
        const first = (await create(u, doc(3, "a"), "h-a")).cart;
        clock.now += 1000;
        const second = await create(u, doc(2, "b"), "h-b");
        assert.equal(second.kept, false);
        assert.notEqual(second.cart.id, first.id);
        assert.deepEqual(second.replaced.map((c) => c.id), [first.id]);
        assert.equal((await store.liveCart(u))?.id, second.cart.id);
        // The old one is still there, no longer live, files intact, listed as dead.
        assert.equal((await store.cart(first.id))?.id, first.id);
        assert.equal((await store.files(first.id)).length, 3);
        assert.deepEqual((await store.files(second.cart.id)).map((f) => f.archiveId), [
          "b0",
          "b1",
        ]);
        const dead = (await store.dead()).map((c) => c.id);
        assert.ok(dead.includes(first.id));
        assert.ok(!dead.includes(second.cart.id));
        const live = (await store.liveCarts()).map((c) => c.id);
        assert.ok(live.includes(second.cart.id) && !live.includes(first.id));
        assert.equal(await store.unlive(first.id), false);
      });

      await t.step("identical re-POST keeps the live cart, unless it failed", async () => {
        const u = uid("keep");
        const first = (await create(u, doc(2, "k"), "h-k")).cart;
        assert.equal(await moveTo(first.id, "staging"), true);
        const again = await create(u, doc(2, "k"), "h-k");
        assert.equal(again.kept, true);
        assert.deepEqual(again.replaced, []);
        assert.equal(again.cart.id, first.id);
        assert.equal((await store.liveCart(u))?.id, first.id);

        assert.equal(await moveTo(first.id, "error", "archive said no"), true);
        const retry = await create(u, doc(2, "k"), "h-k");
        assert.equal(retry.kept, false);
        assert.notEqual(retry.cart.id, first.id);
        assert.deepEqual(retry.replaced.map((c) => c.id), [first.id]);
      });

      await t.step("concurrent POSTs of one uid leave exactly one live cart", async () => {
        const u = uid("race");
        const [a, b] = await Promise.all([
          create(u, doc(600, "x"), "h-x"),
          create(u, doc(600, "y"), "h-y"),
        ]);
        const live = await store.liveCart(u);
        assert.ok(live);
        const winner = live.id === a.cart.id ? a : b;
        const loser = winner === a ? b : a;
        assert.equal(winner.cart.id, live.id);
        assert.deepEqual(winner.replaced.map((c) => c.id), [loser.cart.id]);
        assert.equal((await store.cart(loser.cart.id))?.id, loser.cart.id);

        const v = uid("race-same");
        const [c, d] = await Promise.all([
          create(v, doc(3, "z"), "h-z"),
          create(v, doc(3, "z"), "h-z"),
        ]);
        assert.equal(c.cart.id, d.cart.id);
        assert.deepEqual([c.kept, d.kept].sort(), [false, true]);
      });

      await t.step("the named transitions obey the state machine", async () => {
        const cart = await fresh("move");
        // Forward only, one step at a time.
        assert.equal(await moveTo(cart.id, "bundling"), false);
        assert.equal(await moveTo(cart.id, "ready"), false);
        assert.equal(await moveTo(cart.id, "staging"), true);
        assert.equal(await moveTo(cart.id, "staging"), false);
        assert.equal(await moveTo(cart.id, "bundling"), true);
        assert.equal(await moveTo(cart.id, "staging"), false);
        assert.equal(await store.claim(cart.id, "w1", 10_000) !== null, true);
        clock.now += 5000;
        assert.equal(await moveTo(cart.id, "ready"), true);
        const ready = await store.cart(cart.id);
        assert.equal(ready?.status, "ready");
        assert.equal(ready?.readyAt, clock.now);
        assert.equal(ready?.updatedAt, clock.now);
        assert.equal(ready?.lastUsedAt, clock.now);
        assert.equal(ready?.claimOwner, null, "a final status clears the claim");
        assert.equal(ready?.claimExpires, null);
        assert.equal(ready?.downloadSize, READY_SIZE, "markReady records the download's size");
        assert.equal(ready?.downloadEtag, READY_ETAG, "and its ETag");
        // Nothing leaves ready (and no method moves a cart back to waiting).
        for (const to of ["staging", "bundling", "ready", "error"] as const) {
          assert.equal(await moveTo(cart.id, to), false, `ready → ${to}`);
        }
        assert.equal((await store.cart(cart.id))?.status, "ready");

        // error from every unfinished status, with its message; nothing leaves error.
        for (const path of [[], ["staging"], ["staging", "bundling"]] as const) {
          const c = await fresh("err");
          for (const step of path) assert.equal(await moveTo(c.id, step), true);
          assert.equal(await moveTo(c.id, "error", `failed after ${path.length}`), true);
          const failed = await store.cart(c.id);
          assert.equal(failed?.status, "error");
          assert.equal(failed?.message, `failed after ${path.length}`);
          assert.equal(failed?.readyAt, null);
          for (const to of ["staging", "bundling", "ready", "error"] as const) {
            assert.equal(await moveTo(c.id, to), false, `error → ${to}`);
          }
        }
        // A cart that is gone.
        assert.equal(await moveTo(crypto.randomUUID(), "staging"), false);
        const gone = await fresh("gone");
        await store.forget(gone.id);
        assert.equal(await moveTo(gone.id, "staging"), false);
        assert.equal(await moveTo(gone.id, "error"), false);
      });

      await t.step("claim is exclusive until it expires, then taken over", async () => {
        const cart = await fresh("claim");
        const a = await store.claim(cart.id, "worker-a", 30_000);
        assert.equal(a?.claimOwner, "worker-a");
        assert.equal(a?.claimExpires, clock.now + 30_000);
        assert.equal(a?.attempts, 1);
        assert.equal(await store.claim(cart.id, "worker-b", 30_000), null);
        // The same owner may claim again (a redelivered message), counting the attempt.
        const again = await store.claim(cart.id, "worker-a", 30_000);
        assert.equal(again?.claimOwner, "worker-a");
        assert.equal(again?.attempts, 2);
        // Renewing at the same instant writes the same value: still a success.
        assert.equal(await store.renew(cart.id, "worker-a", 30_000), true);
        assert.equal(await store.renew(cart.id, "worker-a", 30_000), true);
        assert.equal(await store.renew(cart.id, "worker-b", 30_000), false);

        clock.now += 30_000; // not expired yet (expires < now is needed)
        assert.equal(await store.claim(cart.id, "worker-b", 30_000), null);
        clock.now += 1;
        const b = await store.claim(cart.id, "worker-b", 30_000);
        assert.equal(b?.claimOwner, "worker-b");
        assert.equal(b?.attempts, 3);
        assert.equal(await store.renew(cart.id, "worker-a", 30_000), false);
        assert.equal(await store.renew(cart.id, "worker-b", 60_000), true);
        assert.equal((await store.cart(cart.id))?.claimExpires, clock.now + 60_000);

        // Release: anyone may claim at once; a release by a non-owner does nothing.
        await store.release(cart.id, "worker-a");
        assert.equal((await store.cart(cart.id))?.claimOwner, "worker-b");
        await store.release(cart.id, "worker-b");
        const released = await store.cart(cart.id);
        assert.equal(released?.claimOwner, null);
        assert.equal(released?.claimExpires, null);
        assert.equal((await store.claim(cart.id, "worker-c", 1000))?.claimOwner, "worker-c");

        // Finished or missing carts cannot be claimed.
        assert.equal(await moveTo(cart.id, "error", "x"), true);
        assert.equal(await store.claim(cart.id, "worker-c", 1000), null);
        assert.equal(await store.claim(crypto.randomUUID(), "worker-c", 1000), null);
      });

      await t.step("two owners claiming at once: exactly one wins", async () => {
        for (let i = 0; i < 5; i++) {
          const cart = await fresh("duel");
          const results = await Promise.all([
            store.claim(cart.id, "left", 10_000),
            store.claim(cart.id, "right", 10_000),
          ]);
          const winners = results.filter((r) => r !== null);
          assert.equal(winners.length, 1, "exactly one claim succeeds");
          assert.equal((await store.cart(cart.id))?.claimOwner, winners[0]!.claimOwner);
          assert.equal((await store.cart(cart.id))?.attempts, 1);
        }
      });

      await t.step("renew fails once the cart is no longer live", async () => {
        const cart = await fresh("renew");
        assert.ok(await store.claim(cart.id, "w", 10_000));
        assert.equal(await store.renew(cart.id, "w", 10_000), true);
        assert.equal(await store.unlive(cart.id), true);
        assert.equal(await store.renew(cart.id, "w", 10_000), false);
        // Replaced counts as not live too.
        const u = uid("renew-replaced");
        const old = (await create(u, doc(1, "o"), "h-o")).cart;
        assert.ok(await store.claim(old.id, "w", 10_000));
        await create(u, doc(1, "n"), "h-n");
        assert.equal(await store.renew(old.id, "w", 10_000), false);
        assert.equal(await store.renew(crypto.randomUUID(), "w", 10_000), false);
      });

      await t.step("orphans(): unfinished live carts nobody validly holds", async () => {
        const free = await fresh("orphan-free");
        const held = await fresh("orphan-held");
        const expiring = await fresh("orphan-expiring");
        const done = await fresh("orphan-done");
        const replacedUid = uid("orphan-replaced");
        const replaced = (await create(replacedUid, doc(1, "r"), "h-r1")).cart;
        await create(replacedUid, doc(1, "s"), "h-r2");
        assert.ok(await store.claim(held.id, "w", 60_000));
        assert.ok(await store.claim(expiring.id, "w", 1_000));
        for (const s of ["staging", "bundling", "ready"] as const) {
          assert.ok(await moveTo(done.id, s));
        }
        // quietSince in the future: every unclaimed cart counts, however recently touched.
        const ids = async () => new Set((await store.orphans(clock.now + 1)).map((c) => c.id));
        let orphans = await ids();
        assert.ok(orphans.has(free.id));
        assert.ok(!orphans.has(held.id));
        assert.ok(!orphans.has(expiring.id));
        assert.ok(!orphans.has(done.id));
        assert.ok(!orphans.has(replaced.id));
        clock.now += 1_001;
        orphans = await ids();
        assert.ok(orphans.has(expiring.id));
        assert.ok(!orphans.has(held.id));
        assert.ok(await moveTo(free.id, "staging"));
        assert.ok((await ids()).has(free.id), "staging carts are unfinished too");
        const list = await store.orphans(clock.now + 1);
        const created = list.map((c) => c.createdAt);
        assert.deepEqual(created, [...created].sort((x, y) => x - y), "oldest first");
        // A recently touched unclaimed cart is no orphan yet; an expired claim always is.
        const recent = new Set((await store.orphans(clock.now - 10_000)).map((c) => c.id));
        assert.ok(!recent.has(free.id));
        assert.ok(recent.has(expiring.id));
      });

      await t.step(
        "requeue(): one taker per orphan, and the expired claim is dropped",
        async () => {
          const lost = await fresh("requeue-lost");
          assert.ok(await store.claim(lost.id, "dead-worker", 1_000));
          assert.equal(await store.requeue(lost.id, clock.now), false, "the claim is still valid");
          clock.now += 1_001;
          assert.equal(await store.requeue(lost.id, clock.now), true);
          assert.equal(
            await store.requeue(lost.id, clock.now),
            false,
            "a second sweeper gets none",
          );
          const after = (await store.cart(lost.id))!;
          assert.equal(after.claimOwner, null);
          assert.equal(after.updatedAt, clock.now);
          clock.now += 5;
          assert.equal(await store.requeue(lost.id, clock.now), true, "quiet since then");
          assert.ok(await store.claim(lost.id, "new-worker", 1_000), "claimable again");
          // The worker that lost the claim can no longer move the cart; the new owner can.
          assert.equal(await store.startStaging(lost.id, "dead-worker"), false);
          assert.equal(await store.startStaging(lost.id, "new-worker"), true);
          assert.equal((await store.cart(lost.id))!.status, "staging");
        },
      );

      await t.step("batched file facts: 450 rows, across statement batches", async () => {
        const cart = (await create(uid("batch"), doc(450, "b"), "h-b")).cart;
        const rows = Array.from(
          { length: 450 },
          (_, idx) => ({ idx, size: idx * 7, mtime: idx + 0.5 }),
        );
        await store.setFileSizes(cart.id, rows);
        await store.filesStaged(
          cart.id,
          rows.filter((r) => r.idx % 2 === 0).map((r) => ({
            idx: r.idx,
            facts: { size: r.size + 1, mtime: r.mtime, sha256: "ab".repeat(32), crc32: 4294967295 },
          })),
        );
        const files = await store.files(cart.id);
        for (const f of files) {
          const even = f.idx % 2 === 0;
          assert.equal(f.size, f.idx * 7 + (even ? 1 : 0), `size of ${f.idx}`);
          assert.equal(f.mtime, f.idx + 0.5);
          assert.equal(f.status, even ? "staged" : "pending");
          assert.equal(f.crc32, even ? 4294967295 : null);
        }
      });

      await t.step("staged counters follow the files, however they are recorded", async () => {
        const cart = (await create(uid("count"), doc(600, "c"), "h-c")).cart;
        assert.deepEqual(
          [cart.stagedFiles, cart.stagedBytes, cart.stagingAt],
          [0, 0, null],
        );
        clock.now += 1000;
        assert.equal(await store.startStaging(cart.id, null), true);
        const began = clock.now;
        const facts = (size: number) => ({ size, mtime: 1, sha256: "ef".repeat(32), crc32: 1 });
        // 300 files across batches (256 + 32 + 8 + 4), each of idx bytes.
        const first = Array.from({ length: 300 }, (_, idx) => ({ idx, facts: facts(idx) }));
        await store.filesStaged(cart.id, first);
        const sum = (idxs: number[]) => idxs.reduce((a, b) => a + b, 0);
        let now = (await store.cart(cart.id))!;
        assert.deepEqual([now.stagedFiles, now.stagedBytes], [300, sum(first.map((f) => f.idx))]);
        // Recorded staged again (a resumed cart), with a new size: counted once, at its size.
        await store.filesStaged(cart.id, [{ idx: 5, facts: facts(1000) }, {
          idx: 400,
          facts: facts(7),
        }]);
        // A staged file that fails, and one failed file set pending again: out of the count.
        await store.fileStatus(cart.id, 6, "error", "vanished");
        await store.fileStatus(cart.id, 6, "pending", null);
        now = (await store.cart(cart.id))!;
        const expected = sum(first.map((f) => f.idx)) - 5 + 1000 + 7 - 6;
        assert.deepEqual([now.stagedFiles, now.stagedBytes], [300 + 1 - 1, expected]);
        // The counters say what a count of the rows says.
        const tallies = await store.fileTallies(cart.id);
        assert.deepEqual(tallies.staged, { files: now.stagedFiles, bytes: now.stagedBytes });
        assert.equal(tallies.pending.files, 600 - now.stagedFiles);
        assert.deepEqual(tallies.error, { files: 0, bytes: 0 });
        assert.equal(now.errorFiles, 0);
        await store.fileStatus(cart.id, 8, "error", "bad digest");
        now = (await store.cart(cart.id))!;
        assert.deepEqual([now.stagedFiles, now.errorFiles], [299, 1]);
        assert.equal((await store.fileTallies(cart.id)).error.files, 1);
        // The time staging began stays the first one.
        clock.now += 1000;
        await store.startBundling(cart.id, null);
        assert.equal((await store.cart(cart.id))!.stagingAt, began);
        // A retried cart starts with the staged files it keeps.
        await store.fail(cart.id, "test");
        const retried = await store.retryFailed(cart.id, crypto.randomUUID());
        assert.deepEqual(
          [retried!.stagedFiles, retried!.stagedBytes, retried!.errorFiles, retried!.stagingAt],
          [now.stagedFiles, now.stagedBytes, 0, null],
        );
      });

      await t.step(
        "filePage pages by index, each file once, and says when more follow",
        async () => {
          const cart = (await create(uid("fpage"), doc(37, "g"), "h-g")).cart;
          for (const limit of [1, 3, 8, 36, 37, 100]) {
            const seen: number[] = [];
            let after = -1;
            for (let pages = 0;; pages++) {
              assert.ok(pages <= 37, "paging must end");
              const page = await store.filePage(cart.id, after, limit);
              assert.ok(page.files.length <= limit);
              seen.push(...page.files.map((f) => f.idx));
              if (!page.more) break;
              after = page.files[page.files.length - 1].idx;
            }
            assert.deepEqual(seen, Array.from({ length: 37 }, (_, i) => i), `limit ${limit}`);
          }
          const tail = await store.filePage(cart.id, 35, 10);
          assert.deepEqual([tail.files.map((f) => f.path), tail.more], [[
            "dir/g-36.dat",
          ], false]);
          assert.deepEqual(await store.filePage(cart.id, 36, 10), { files: [], more: false });
        },
      );

      await t.step("eachFile walks pages in order, narrowed, while rows change", async () => {
        const cart = (await create(uid("pages"), doc(25, "p"), "h-p")).cart;
        const idxs = async (only?: "all" | "unsized" | "unstaged") => {
          const seen: number[] = [];
          for await (const f of store.eachFile(cart.id, only, 4)) seen.push(f.idx);
          return seen;
        };
        const all = Array.from({ length: 25 }, (_, i) => i);
        assert.deepEqual(await idxs(), all);
        assert.deepEqual(await idxs("unsized"), all);
        assert.equal(await store.totalSize(cart.id), 0);
        // Sizes for files 0–9, staged records for 0–4 and 20.
        await store.setFileSizes(
          cart.id,
          all.slice(0, 10).map((idx) => ({ idx, size: 3, mtime: 1 })),
        );
        const facts = { size: 3, mtime: 1, sha256: "cd".repeat(32), crc32: 7 };
        await store.filesStaged(cart.id, [0, 1, 2, 3, 4, 20].map((idx) => ({ idx, facts })));
        assert.deepEqual(await idxs("unsized"), all.filter((i) => i >= 10 && i !== 20));
        assert.deepEqual(await idxs("unstaged"), all.filter((i) => i >= 5 && i !== 20));
        assert.equal(await store.totalSize(cart.id), 11 * 3);
        // Staging the files as they are walked: every file is still seen exactly once.
        const walked: number[] = [];
        for await (const f of store.eachFile(cart.id, "unstaged", 3)) {
          walked.push(f.idx);
          await store.fileStaged(cart.id, f.idx, facts);
        }
        assert.deepEqual(walked, all.filter((i) => i >= 5 && i !== 20));
        assert.deepEqual(await idxs("unstaged"), []);
        // An exact multiple of the page size, and a cart without rows.
        const twelve = (await create(uid("pages12"), doc(12, "t"), "h-t")).cart;
        let n = 0;
        for await (const _ of store.eachFile(twelve.id, "all", 4)) n++;
        assert.equal(n, 12);
        for await (const _ of store.eachFile("00000000-0000-4000-8000-000000000000")) n++;
        assert.equal(n, 12);
      });

      await t.step("file facts: setFileSize, fileStaged, fileStatus, totals", async () => {
        const cart = (await create(uid("facts"), doc(3, "q"), "h-q")).cart;
        const big = 5 * 1024 ** 3 + 7; // beyond 32 bits
        await store.setFileSize(cart.id, 0, big, 1_700_000_000.25);
        let files = await store.files(cart.id);
        assert.equal(files[0].size, big);
        assert.equal(files[0].mtime, 1_700_000_000.25);
        assert.equal(files[0].status, "pending");
        assert.equal(files[1].size, null);
        // Writing the same values again is harmless.
        await store.setFileSize(cart.id, 0, big, 1_700_000_000.25);

        const sha = "ab".repeat(32);
        await store.fileStatus(cart.id, 1, "error", "archive said 500");
        files = await store.files(cart.id);
        assert.equal(files[1].status, "error");
        assert.equal(files[1].message, "archive said 500");
        await store.fileStatus(cart.id, 1, "pending", null);
        await store.fileStaged(cart.id, 1, {
          size: big,
          mtime: 1_600_000_000,
          sha256: sha,
          crc32: 0xffffffff,
        });
        files = await store.files(cart.id);
        assert.deepEqual(
          {
            status: files[1].status,
            size: files[1].size,
            mtime: files[1].mtime,
            sha256: files[1].sha256,
            crc32: files[1].crc32,
            message: files[1].message,
          },
          {
            status: "staged",
            size: big,
            mtime: 1_600_000_000,
            sha256: sha,
            crc32: 0xffffffff,
            message: null,
          },
        );
        assert.equal(files[2].status, "pending");

        clock.now += 10;
        await store.setTotalBytes(cart.id, 3 * big);
        await store.setReserved(cart.id, 3 * big);
        const after = await store.cart(cart.id);
        assert.equal(after?.totalBytes, 3 * big);
        assert.equal(after?.reservedBytes, 3 * big);
        assert.equal(after?.updatedAt, clock.now);
      });

      await t.step("touch records the last use", async () => {
        const cart = await fresh("touch");
        clock.now += 12_345;
        await store.touch(cart.id);
        assert.equal((await store.cart(cart.id))?.lastUsedAt, clock.now);
        await store.touch(cart.id); // same instant: nothing changes, nothing fails
        assert.equal((await store.cart(cart.id))?.lastUsedAt, clock.now);
        assert.equal((await store.cart(cart.id))?.updatedAt, cart.updatedAt);
        await store.touch(crypto.randomUUID());
      });

      await t.step(
        "uses closer than USE_RESOLUTION_MS are written once, and before the LRU reads them",
        async () => {
          const cart = await fresh("touch-often");
          clock.now += 1_000;
          const first = clock.now;
          await store.touch(cart.id);
          clock.now += USE_RESOLUTION_MS / 2;
          await store.touch(cart.id); // kept back: the row still says the first
          assert.equal((await store.cart(cart.id))?.lastUsedAt, first);
          await store.purgeable(clock.now); // picks carts by their last use: written first
          assert.equal((await store.cart(cart.id))?.lastUsedAt, clock.now);
          clock.now += USE_RESOLUTION_MS;
          await store.touch(cart.id); // far enough from the last written: written at once
          assert.equal((await store.cart(cart.id))?.lastUsedAt, clock.now);
          clock.now += 1;
          await store.touch(cart.id);
          assert.equal(await store.unliveReady(cart.id, { usedBefore: clock.now }), false);
          assert.equal((await store.cart(cart.id))?.lastUsedAt, clock.now, "unliveReady wrote it");
        },
      );

      await t.step("unlive and forget", async () => {
        const u = uid("delete");
        const cart = (await create(u, doc(4, "d"), "h-d")).cart;
        clock.now += 3;
        assert.equal(await store.unlive(cart.id), true);
        assert.equal(await store.unlive(cart.id), false);
        assert.equal(await store.liveCart(u), null);
        const unlived = await store.cart(cart.id);
        assert.equal(unlived?.updatedAt, clock.now);
        assert.ok((await store.dead()).some((c) => c.id === cart.id));
        assert.ok(!(await store.liveCarts()).some((c) => c.id === cart.id));
        // The uid is free for a new cart; the dead one is not "replaced" again.
        const next = await create(u, doc(1, "e"), "h-d");
        assert.equal(next.kept, false);
        assert.deepEqual(next.replaced, []);

        await store.forget(cart.id);
        assert.equal(await store.cart(cart.id), null);
        assert.deepEqual(await store.files(cart.id), []);
        assert.ok(!(await store.dead()).some((c) => c.id === cart.id));
        assert.ok(!(await store.allCarts()).some((c) => c.id === cart.id));
        assert.equal(await store.unlive(cart.id), false);
        await store.forget(cart.id); // twice is fine
        assert.equal((await store.files(next.cart.id)).length, 1);
      });

      await t.step(
        "forget goes a batch at a time: every row goes, shared counts pass on",
        async () => {
          const n = FORGET_BATCH + 10;
          const a = (await create(uid("forget-a"), doc(n, "fa"), "h-fa")).cart;
          const b = (await create(uid("forget-b"), doc(2, "fb"), "h-fb")).cart;
          const facts = { size: 7, mtime: 0, sha256: "0".repeat(64), crc32: 0 };
          // Two files' bytes in both (a content key each): counted by a, one in its first batch
          // and one in its last, and linked by b.
          const keys = [`k-${crypto.randomUUID()}`, `k-${crypto.randomUUID()}`];
          await store.filesStaged(a.id, [
            { idx: 5, facts, key: keys[0] },
            { idx: n - 3, facts, key: keys[1] },
          ]);
          await store.filesStaged(b.id, [
            { idx: 0, facts, key: keys[0], linked: true },
            { idx: 1, facts, key: keys[1], linked: true },
          ]);
          const bBefore = (await store.cart(b.id))!.reservedBytes;
          assert.equal(await store.unlive(a.id), true);
          let ticks = 0;
          const timer = setInterval(() => ticks++, 0);
          const handed = await store.forget(a.id);
          clearInterval(timer);
          assert.deepEqual(handed, { handedBytes: 14, handedFiles: 2 });
          assert.equal(
            (await store.cart(b.id))!.reservedBytes,
            bBefore + 14,
            "b counts the bytes now",
          );
          assert.equal(await store.cart(a.id), null);
          assert.deepEqual(await store.files(a.id), []);
          // Between two batches the thread went on with other work (timers here).
          assert.ok(ticks > 0, "no timer ran while the cart was forgotten");
          assert.deepEqual(await store.forget(a.id), { handedBytes: 0, handedFiles: 0 });
        },
      );

      await t.step("uids are exact: case, 255 bytes of UTF-8", async () => {
        const base = uid("Case");
        const upper = (await create(base, doc(1, "u"), "h-u")).cart;
        const lower = await create(base.toLowerCase(), doc(1, "l"), "h-l");
        assert.deepEqual(lower.replaced, [], "uids differing in case are different carts");
        assert.equal((await store.liveCart(base))?.id, upper.id);
        assert.equal((await store.liveCart(base.toLowerCase()))?.id, lower.cart.id);

        const exact = trimToBytes(`${++uidCounter}-` + "é日本".repeat(60), 255);
        assert.equal(new TextEncoder().encode(exact).length, 255);
        const made = (await create(exact, doc(1, "n"), "h-n")).cart;
        assert.equal(made.uid, exact);
        assert.equal((await store.liveCart(exact))?.id, made.id);
        assert.equal((await store.cart(made.id))?.uid, exact);
        assert.equal(await store.liveCart(exact.slice(0, -1)), null);
      });

      await t.step(
        "ready carts for purge and retention: purgeable, readyBefore, unliveReady",
        async () => {
          const readyCart = async (label: string) => {
            const c = await fresh(label);
            for (const s of ["staging", "bundling", "ready"] as const) {
              assert.ok(await moveTo(c.id, s));
            }
            return (await store.cart(c.id))!;
          };
          clock.now += 1_000;
          const older = await readyCart("lru-old");
          clock.now += 1_000;
          const newer = await readyCart("lru-new");
          const unfinished = await fresh("lru-waiting");
          clock.now += 1_000;
          const mine = (list: Cart[]) =>
            list.map((c) => c.id).filter((id) => [older.id, newer.id, unfinished.id].includes(id));

          assert.deepEqual(mine(await store.purgeable(clock.now)), [older.id, newer.id]);
          assert.deepEqual(mine(await store.purgeable(newer.lastUsedAt)), [older.id]);
          assert.deepEqual(mine(await store.purgeable(clock.now, older.id)), [newer.id]);
          assert.deepEqual(mine(await store.readyBefore(clock.now)), [older.id, newer.id]);
          assert.deepEqual(mine(await store.readyBefore(older.readyAt!)), []);

          // A use after the candidates were listed spares the cart.
          await store.touch(older.id);
          assert.equal(await store.unliveReady(older.id, { usedBefore: clock.now }), false);
          clock.now += 1;
          assert.equal(await store.unliveReady(older.id, { usedBefore: clock.now }), true);
          assert.equal(await store.unliveReady(older.id, { usedBefore: clock.now }), false);
          assert.equal(await store.unliveReady(newer.id, { readyBefore: newer.readyAt! }), false);
          assert.equal(
            await store.unliveReady(newer.id, { readyBefore: newer.readyAt! + 1 }),
            true,
          );
          assert.equal(await store.unliveReady(unfinished.id, {}), false, "only ready carts");
          assert.deepEqual(mine(await store.purgeable(clock.now)), []);
        },
      );

      await t.step("retryFailed: a fresh cart keeps the staged files", async () => {
        const u = uid("retry");
        const failed = (await create(u, doc(3, "t"), "h-t")).cart;
        const sha = "cd".repeat(32);
        await store.fileStaged(failed.id, 0, { size: 10, mtime: 5.5, sha256: sha, crc32: 7 });
        await store.setFileSize(failed.id, 1, 20, 6);
        await store.fileStatus(failed.id, 2, "error", "gone");
        assert.equal(await store.retryFailed(failed.id, crypto.randomUUID()), null, "not failed");
        assert.ok(await moveTo(failed.id, "error", "gone"));

        let calls = 0;
        const newId = crypto.randomUUID();
        clock.now += 7;
        const retried = await store.retryFailed(failed.id, newId, () => {
          calls++;
          return Promise.resolve();
        });
        assert.ok(calls >= 1);
        assert.equal(retried?.id, newId);
        assert.equal(retried?.uid, u);
        assert.equal(retried?.status, "waiting");
        assert.equal(retried?.documentHash, "h-t");
        assert.equal(retried?.fileCount, 3);
        assert.equal(retried?.createdAt, clock.now);
        assert.equal((await store.liveCart(u))?.id, newId);
        assert.ok((await store.dead()).some((c) => c.id === failed.id));
        const files = await store.files(newId);
        assert.deepEqual(
          files.map((f) => [f.status, f.size, f.mtime, f.sha256, f.crc32, f.message]),
          [
            ["staged", 10, 5.5, sha, 7, null],
            ["pending", null, null, null, null, null],
            ["pending", null, null, null, null, null],
          ],
        );
        assert.equal((await store.files(failed.id)).length, 3, "the old rows stay until forgotten");
        assert.equal(await store.retryFailed(failed.id, crypto.randomUUID()), null, "not live");
        // A failing `inside` leaves everything as it was.
        assert.ok(await moveTo(newId, "error", "again"));
        await assert.rejects(
          store.retryFailed(newId, crypto.randomUUID(), () => Promise.reject(new Error("disk"))),
          /disk/,
        );
        assert.equal((await store.liveCart(u))?.id, newId);
        assert.equal((await store.liveCart(u))?.status, "error");
      });

      await t.step("uids differing only in trailing spaces are different carts", async () => {
        // MySQL compares PAD SPACE collations (utf8mb4_bin) as if trailing spaces were absent.
        const base = uid("pad");
        const plain = (await create(base, doc(1, "p"), "h-p")).cart;
        const spaced = await create(base + " ", doc(1, "s"), "h-s");
        assert.deepEqual(spaced.replaced, [], "a trailing space makes another uid");
        assert.equal((await store.liveCart(base))?.id, plain.id);
        assert.equal((await store.liveCart(base + " "))?.id, spaced.cart.id);
        assert.equal((await store.liveCart(base + "  "))?.id, undefined);
      });
    } finally {
      await dispose();
    }
  });
}

/** `text` cut to at most `bytes` UTF-8 bytes, padded with ASCII to exactly that many. */
function trimToBytes(text: string, bytes: number): string {
  const encoder = new TextEncoder();
  let out = "";
  for (const ch of text) {
    if (encoder.encode(out + ch).length > bytes) break;
    out += ch;
  }
  return out + "z".repeat(bytes - encoder.encode(out).length);
}

storeContract("SQLite", sqliteFactory);
storeContract("MariaDB", mysqlFactory, ["mysql"]);

// ---------------------------------------------------------------------------------------------
// The MariaDB driver itself.

/** Collects what lib/util/log.ts writes while `work` runs. */
async function captureLog<T>(work: () => Promise<T>): Promise<{ result: T; lines: string[] }> {
  const lines: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => lines.push(args.map(String).join(" "));
  try {
    return { result: await work(), lines };
  } finally {
    console.error = original;
  }
}

test.mysql("MariaDB driver: creates the database, counts matched rows, logs queries", async () => {
  const config = mysqlConfig({ logging: true });
  const { result: db, lines } = await captureLog(async () => {
    const db = await openMysql(config);
    await db.run("CREATE TABLE t (id INT PRIMARY KEY, v BIGINT, d DOUBLE)");
    await db.run("INSERT INTO t VALUES (?, ?, ?), (?, ?, ?)", [1, 2 ** 40, 0.5, 2, 7, null]);
    return db;
  });
  try {
    assert.ok(lines.some((l) => l.includes("INFO sql") && l.includes("INSERT INTO t")));
    assert.ok(lines.some((l) => l.includes("[1,1099511627776,0.5,2,7,null]")));

    const rows = await db.all("SELECT * FROM t ORDER BY id");
    assert.deepEqual(rows.map((r) => [Number(r.id), Number(r.v), r.d]), [
      [1, 2 ** 40, 0.5],
      [2, 7, null],
    ]);
    // Rows matched, not rows changed: writing the same value counts.
    assert.deepEqual(await db.run("UPDATE t SET v = 7 WHERE id = 2"), { changes: 1 });
    assert.deepEqual(await db.run("UPDATE t SET v = 7 WHERE id >= 1"), { changes: 2 });
    assert.deepEqual(await db.run("UPDATE t SET v = 7 WHERE id = 3"), { changes: 0 });
    assert.deepEqual(await db.run("DELETE FROM t WHERE id = 1"), { changes: 1 });
    const [sum] = await db.all("SELECT SUM(v) AS s, COUNT(*) AS n FROM t");
    assert.equal(Number(sum.s), 7);
    assert.equal(Number(sum.n), 1);
    // BIGINT beyond 2^53 comes back exact (as a numeric string).
    await db.run("INSERT INTO t VALUES (3, ?, 0)", [2n ** 60n]);
    const [huge] = await db.all("SELECT v FROM t WHERE id = 3");
    assert.equal(BigInt(huge.v as string), 2n ** 60n);

    // Transactions: commit, rollback, nesting on the same connection.
    await db.transaction(async (tx) => {
      await tx.run("INSERT INTO t VALUES (10, 1, 0)");
      await tx.transaction(async (inner) => {
        assert.equal(inner, tx);
        await inner.run("INSERT INTO t VALUES (11, 1, 0)");
      });
    });
    await assert.rejects(
      db.transaction(async (tx) => {
        await tx.run("INSERT INTO t VALUES (12, 1, 0)");
        throw new Error("boom");
      }),
      /boom/,
    );
    const ids = (await db.all("SELECT id FROM t WHERE id >= 10 ORDER BY id")).map((r) => r.id);
    assert.deepEqual(ids, [10, 11]);
    // A SQL error stays a SQL error, not "unavailable".
    const err = await db.all("SELECT nope FROM t").catch((e) => e);
    assert.ok(err instanceof Error && !(err instanceof DbUnavailableError));
  } finally {
    await dropAndClose(db, config.database);
  }
});

test.mysql("MariaDB driver: gives up after connectAttempts with a message that helps", async () => {
  const proxy = await startProxy(MYSQL_HOST, MYSQL_PORT);
  await proxy.cut();
  const config = mysqlConfig({ host: "127.0.0.1", port: proxy.port, connectAttempts: 3 });
  config.waitMs = 30;
  try {
    const started = Date.now();
    const { result: error, lines } = await captureLog(() => openMysql(config).catch((e) => e));
    assert.ok(error instanceof DbUnavailableError, String(error));
    assert.match(error.message, new RegExp(`127\\.0\\.0\\.1:${proxy.port}`));
    assert.match(error.message, /3 tries/);
    assert.match(error.message, /DATABASE_CONNECT_ATTEMPTS/);
    const warnings = lines.filter((l) => l.includes("WARN") && l.includes(`:${proxy.port}`));
    assert.equal(warnings.length, 3);
    assert.ok(warnings.every((l) => /ECONNREFUSED|refused/i.test(l)), warnings.join("\n"));
    assert.ok(Date.now() - started >= 60, "waits waitMs between tries");

    // The database comes up during the tries: the open succeeds.
    const slow = { ...config, connectAttempts: 20, waitMs: 50 };
    const opening = captureLog(() => openMysql(slow));
    setTimeout(() => proxy.restore(), 120);
    const { result: db } = await opening;
    try {
      assert.deepEqual(await db.all("SELECT 1 AS one"), [{ one: 1 }]);
    } finally {
      await dropAndClose(db, config.database);
    }
  } finally {
    await proxy.close();
  }
});

test.mysql("MariaDB driver: 503 while the server is away, recovers by itself when it returns", async () => {
  const proxy = await startProxy(MYSQL_HOST, MYSQL_PORT);
  const config = mysqlConfig({ host: "127.0.0.1", port: proxy.port });
  const db = await openMysql(config);
  try {
    await db.run("CREATE TABLE t (id INT PRIMARY KEY)");
    await db.run("INSERT INTO t VALUES (1)");
    assert.ok(proxy.connections > 0);

    // A transaction that is cut in the middle neither commits nor hangs.
    const inTx = db.transaction(async (tx) => {
      await tx.run("INSERT INTO t VALUES (2)");
      await proxy.cut();
      await tx.run("INSERT INTO t VALUES (3)");
    });
    await assert.rejects(inTx, DbUnavailableError);

    // While away: every kind of call fails fast with DbUnavailableError.
    const started = Date.now();
    await assert.rejects(db.all("SELECT * FROM t"), DbUnavailableError);
    await assert.rejects(db.run("INSERT INTO t VALUES (4)"), DbUnavailableError);
    await assert.rejects(db.transaction((tx) => tx.all("SELECT 1")), DbUnavailableError);
    assert.ok(Date.now() - started < 5_000, "fails fast");
    const error = await db.all("SELECT 1").catch((e) => e);
    assert.match(error.message, new RegExp(`127\\.0\\.0\\.1:${proxy.port}`));

    await proxy.restore();
    await eventually(
      "db",
      () => db.all("SELECT 1 AS one").then((r) => r.length === 1, () => false),
      10_000,
    );
    const ids = (await db.all("SELECT id FROM t ORDER BY id")).map((r) => r.id);
    assert.deepEqual(ids, [1], "the cut transaction was rolled back");
    await db.transaction(async (tx) => {
      await tx.run("INSERT INTO t VALUES (5)");
    });
    assert.equal((await db.all("SELECT id FROM t")).length, 2);
  } finally {
    await proxy.restore();
    await dropAndClose(db, config.database).catch(() => db.close());
    await proxy.close();
  }
  // Closed pool: unavailable, not a crash.
  await assert.rejects(db.all("SELECT 1"), DbUnavailableError);
});

Deno.test("batches of rows come in power-of-two sizes, in order, covering every row", () => {
  const sizes = new Set<number>();
  for (let n = 0; n <= 1100; n++) {
    const rows = Array.from({ length: n }, (_, i) => i);
    const seen: number[] = [];
    for (const { start, batch } of powerOfTwoBatches(rows, 256)) {
      assert.equal(batch[0], start, `batch of ${n} rows starts at its first row`);
      assert.ok(
        batch.length <= 256 && (batch.length & (batch.length - 1)) === 0,
        `${batch.length}`,
      );
      sizes.add(batch.length);
      seen.push(...batch);
    }
    assert.deepEqual(seen, rows);
  }
  // 1, 2, 4, …, 256: one statement text per size, whatever the number of rows.
  assert.deepEqual([...sizes].sort((a, b) => a - b), [1, 2, 4, 8, 16, 32, 64, 128, 256]);
});
