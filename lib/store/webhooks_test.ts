/**
 * The webhook outbox (./webhooks.ts) and the store's transitions that write it, on SQLite and
 * MariaDB: an event is written with `ready` and `error`, in the same transaction, only for a
 * cart that names a webhook; claims let one owner hold an event at a time; failures schedule
 * the next attempt or give up; done events are pruned.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Db } from "../db/db.ts";
import { openMysql } from "../db/mysql.ts";
import { openSqlite } from "../db/sqlite.ts";
import { needs, type Service, testMysqlConfig } from "../../tests/support/services.ts";
import type { CartDocument } from "../cart/document.ts";
import { syncSchema } from "./schema.ts";
import { CartStore } from "./store.ts";
import { WebhookOutbox } from "./webhooks.ts";

type Factory = () => Promise<{ db: Db; dispose(): Promise<void> }>;

const sqlite: Factory = async () => {
  const dir = mkdtempSync(join(tmpdir(), "cartd-outbox-"));
  const db = openSqlite(join(dir, "cartd.sqlite3"));
  await syncSchema(db);
  return {
    db,
    async dispose() {
      await db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
};

const mariadb: Factory = async () => {
  const config = testMysqlConfig();
  const db = await openMysql(config);
  await syncSchema(db);
  return {
    db,
    async dispose() {
      try {
        await db.run(`DROP DATABASE IF EXISTS \`${config.database}\``);
      } finally {
        await db.close();
      }
    },
  };
};

const doc = (webhook?: string): CartDocument => ({
  files: [{ id: "a", path: "a" }],
  bundle: false,
  manifest: false,
  ...(webhook ? { webhook } : {}),
});

function outboxContract(name: string, factory: Factory, services: Service[] = []): void {
  Deno.test(needs(services, `webhook outbox (${name})`), async (t) => {
    const clock = { now: 1_800_000_000_000 };
    const { db, dispose } = await factory();
    const store = new CartStore(db, () => clock.now);
    const outbox = new WebhookOutbox(db, () => clock.now);
    const ready = async (uid: string, webhook?: string) => {
      const { cart } = await store.createCart(uid, doc(webhook), `h-${uid}`);
      assert.ok(await store.startStaging(cart.id, null));
      assert.ok(await store.startBundling(cart.id, null));
      assert.ok(
        await store.markReady(cart.id, null, { readyAt: clock.now, size: 10, etag: '"e"' }),
      );
      return cart;
    };
    try {
      await t.step(
        "ready and failed carts with a webhook get one event each; others none",
        async () => {
          const hooked = await ready("r1", "https://hooks.example.org/a");
          const plain = await ready("r2");
          const [event] = await outbox.eventsOf(hooked.id);
          assert.equal((await outbox.eventsOf(hooked.id)).length, 1);
          assert.equal((await outbox.eventsOf(plain.id)).length, 0);
          assert.equal(event.type, "cart.ready");
          assert.equal(event.url, "https://hooks.example.org/a");
          assert.equal(event.status, "pending");
          assert.equal(event.attempts, 0);
          assert.equal(event.nextAt, clock.now);
          const body = JSON.parse(event.body);
          assert.equal(body.id, event.id);
          assert.equal(body.cart.uid, "r1");
          assert.equal(body.cart.state, "ready");
          assert.equal(body.cart.download_size, 10);
          assert.equal(body.time, new Date(clock.now).toISOString());
          // A failed one, and a failure that does not happen (final already) writes nothing.
          const { cart } = await store.createCart("f1", doc("https://hooks.example.org/b"), "h-f1");
          assert.ok(await store.fail(cart.id, "File hash does not match for fileids[0] (id a)"));
          assert.equal(await store.fail(cart.id, "again"), false);
          assert.equal(await store.fail(hooked.id, "too late"), false);
          const failed = await outbox.eventsOf(cart.id);
          assert.equal(failed.length, 1);
          assert.equal(failed[0].type, "cart.failed");
          assert.match(JSON.parse(failed[0].body).cart.message, /hash does not match/);
          assert.equal((await outbox.eventsOf(hooked.id)).length, 1);
          // Non-final moves write nothing.
          const { cart: moving } = await store.createCart("m1", doc("https://x.example/"), "h-m1");
          await store.startStaging(moving.id, null);
          assert.equal((await outbox.eventsOf(moving.id)).length, 0);
          assert.equal(await outbox.pending(), 2);
        },
      );

      await t.step("the state change and its event are one transaction", async () => {
        const { cart } = await store.createCart("tx1", doc("https://hooks.example.org/t"), "h-tx");
        await store.startStaging(cart.id, null);
        // The outbox table refuses the insert: the move to error is rolled back with it.
        await db.run("ALTER TABLE webhook_events RENAME TO webhook_events_away");
        try {
          await assert.rejects(store.fail(cart.id, "boom"));
        } finally {
          await db.run("ALTER TABLE webhook_events_away RENAME TO webhook_events");
        }
        assert.equal((await store.cart(cart.id))?.status, "staging");
        assert.ok(await store.fail(cart.id, "boom"));
        assert.equal((await outbox.eventsOf(cart.id)).length, 1);
      });

      await t.step("a fixit retry keeps the webhook", async () => {
        const { cart } = await store.createCart("fx", doc("https://hooks.example.org/f"), "h-fx");
        await store.fail(cart.id, "boom");
        const again = await store.retryFailed(cart.id, crypto.randomUUID());
        assert.equal(again?.webhook, "https://hooks.example.org/f");
      });

      await t.step("claims: one owner at a time; a lapsed claim is taken over", async () => {
        await db.run("DELETE FROM webhook_events");
        const cart = await ready("c1", "https://hooks.example.org/c");
        const [{ id, host }] = await outbox.due(10);
        assert.equal(host, "hooks.example.org");
        const a = await outbox.claim(id, "owner-a", 5000);
        assert.equal(a?.attempts, 1);
        assert.equal(await outbox.claim(id, "owner-b", 5000), null, "held by a");
        assert.deepEqual(await outbox.due(10), [], "a held event is not due");
        clock.now += 5001;
        const b = await outbox.claim(id, "owner-b", 5000);
        assert.equal(b?.attempts, 2, "a lapsed claim is taken over");
        assert.equal(await outbox.delivered(id, "owner-a"), false, "a's claim is gone");
        assert.equal(await outbox.failed(id, "owner-b", "answered 500", clock.now + 1000), true);
        let event = (await outbox.eventsOf(cart.id))[0];
        assert.equal(event.status, "pending");
        assert.equal(event.lastError, "answered 500");
        assert.deepEqual(await outbox.due(10), [], "not due before next_at");
        clock.now += 1000;
        assert.deepEqual(await outbox.due(10), [{ id, host }]);
        assert.ok(await outbox.claim(id, "owner-a", 5000));
        assert.ok(await outbox.delivered(id, "owner-a"));
        event = (await outbox.eventsOf(cart.id))[0];
        assert.equal(event.status, "delivered");
        assert.equal(event.doneAt, clock.now);
        assert.equal(await outbox.claim(id, "owner-b", 5000), null, "delivered is done");
      });

      await t.step("two claimers at once: exactly one wins each event", async () => {
        await db.run("DELETE FROM webhook_events");
        for (let i = 0; i < 20; i++) await ready(`race${i}`, "https://hooks.example.org/r");
        const ids = (await outbox.due(100)).map((due) => due.id);
        assert.equal(ids.length, 20);
        const results = await Promise.all(
          ids.flatMap((id) => ["x", "y"].map((owner) => outbox.claim(id, owner, 60_000))),
        );
        assert.equal(results.filter((r) => r !== null).length, 20);
      });

      await t.step("due leaves out the hosts the caller is busy with", async () => {
        await db.run("DELETE FROM webhook_events");
        await ready("h1", "https://slow.example.org:8443/a");
        await ready("h2", "https://slow.example.org:8443/b");
        await ready("h3", "https://quick.example.org/c");
        const hosts = (due: { host: string }[]) => due.map((d) => d.host).sort();
        assert.deepEqual(hosts(await outbox.due(10)), [
          "quick.example.org",
          "slow.example.org:8443",
          "slow.example.org:8443",
        ]);
        assert.deepEqual(hosts(await outbox.due(10, ["slow.example.org:8443"])), [
          "quick.example.org",
        ]);
      });

      await t.step("given up, then pruned a week after", async () => {
        await db.run("DELETE FROM webhook_events");
        await ready("g1", "https://hooks.example.org/g");
        const [{ id }] = await outbox.due(1);
        await outbox.claim(id, "o", 1000);
        assert.ok(await outbox.failed(id, "o", "answered 307", null));
        const event = await outbox.event(id);
        assert.equal(event?.status, "given_up");
        assert.equal(await outbox.pending(), 0);
        assert.equal(await outbox.prune(clock.now - 1), 0);
        assert.equal(await outbox.prune(clock.now + 1), 1);
        assert.equal(await outbox.event(id), null);
      });
    } finally {
      await dispose();
    }
  });
}

outboxContract("SQLite", sqlite);
outboxContract("MariaDB", mariadb, ["mysql"]);
