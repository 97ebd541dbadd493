/**
 * The dispatcher on real parts, without the HTTP API: a SQLite store, the in-process queue, a
 * thread pool and the fake archive. A cart goes waiting → staging → bundling → ready; a
 * stopped worker hands its carts back (and another worker finishes them); a lost claim stops
 * the work and leaves the cart to the claim's new owner.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { ArchiveClient } from "../lib/archive/client.ts";
import type { CartDocument } from "../lib/cart/document.ts";
import type { CartStatus } from "../lib/cart/state.ts";
import { loadConfig } from "../lib/config/config.ts";
import type { Db } from "../lib/db/db.ts";
import { openSqlite } from "../lib/db/sqlite.ts";
import { MemoryQueue } from "../lib/queue/memory.ts";
import type { Queue, QueueHandler } from "../lib/queue/queue.ts";
import { Space } from "../lib/space/space.ts";
import { RecallManager, recallOptions } from "../lib/staging/recalls.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { type Cart, CartStore } from "../lib/store/store.ts";
import { log } from "../lib/util/log.ts";
import { Volume } from "../lib/volume/volume.ts";
import { ThreadPool } from "../threads/pool.ts";
import { eventually } from "../tests/support/eventually.ts";
import { type FakeArchive, startFakeArchive } from "../tests/support/fake_archive.ts";
import type { WorkerDeps } from "./context.ts";
import { CartWorker } from "./dispatcher.ts";

/** The in-process queue, with a record of every cart id published to it. */
class RecordingQueue implements Queue {
  readonly published: string[] = [];
  readonly #inner = new MemoryQueue();
  publish(cartId: string): Promise<void> {
    this.published.push(cartId);
    return this.#inner.publish(cartId);
  }
  consume(handler: QueueHandler, prefetch: number): Promise<void> {
    return this.#inner.consume(handler, prefetch);
  }
  close(): Promise<void> {
    return this.#inner.close();
  }
}

/** A worker's parts on a temporary folder, and how to get rid of them. */
interface Rig extends AsyncDisposable {
  deps: Omit<WorkerDeps, "queue">;
  store: CartStore;
  db: Db;
  volume: Volume;
  archive: FakeArchive;
  /** A worker of its own queue on the rig's parts (not started). */
  worker(queue?: Queue): CartWorker;
  /** Stores a cart of the archive's files `ids` as a POST would; returns it. */
  post(uid: string, ids: string[], bundle?: boolean): Promise<Cart>;
}

async function rig(): Promise<Rig> {
  log.setLevel("error");
  const dir = await Deno.makeTempDir({ prefix: "cartd-worker-" });
  const archive = startFakeArchive();
  const config = loadConfig({
    VOLUME_PATH: join(dir, "volume"),
    ARCHIVE_INTERFACE_URL: archive.url,
    CARTD_POLL_INITIAL: "0.05",
    CARTD_POLL_MAX: "0.1",
    CARTD_RETRY_DELAY: "0.05",
    CARTD_REQUEST_TIMEOUT: "3",
    CARTD_CLAIM_TTL: "1",
    CARTD_THREADS: "1",
  });
  const db = openSqlite(join(dir, "cartd.sqlite3"));
  await syncSchema(db);
  const store = new CartStore(db);
  const volume = new Volume(config.volumePath);
  await Deno.mkdir(volume.cartsDir, { recursive: true });
  const pool = new ThreadPool(1, 4);
  await pool.ready();
  const client = new ArchiveClient(config.archiveUrl, {
    requestTimeoutMs: config.staging.requestTimeoutMs,
  });
  const space = new Space(store, volume, config.space);
  const recalls = new RecallManager(client, recallOptions(config.staging));
  const deps = { store, volume, config, pool, archive: client, recalls, space };
  const workers: CartWorker[] = [];
  return {
    deps,
    store,
    db,
    volume,
    archive,
    worker(queue = new MemoryQueue()) {
      const worker = new CartWorker({ ...deps, queue });
      workers.push(worker);
      return worker;
    },
    async post(uid, ids, bundle = false) {
      const doc: CartDocument = {
        files: ids.map((id) => ({ id, path: `data/${id}.txt` })),
        bundle,
        manifest: false,
      };
      return (await store.createCart(uid, doc, crypto.randomUUID())).cart;
    },
    async [Symbol.asyncDispose]() {
      for (const worker of workers) await worker.stop();
      await recalls.close();
      pool.close();
      await archive.close();
      await db.close();
      await Deno.remove(dir, { recursive: true });
      log.setLevel("info");
    },
  };
}

/** Every status the store is asked to move `cartId` to (by its named transitions), in order. */
function recordMoves(store: CartStore, cartId: string): CartStatus[] {
  const moves: CartStatus[] = [];
  const heard = (id: string, to: CartStatus) => id === cartId && moves.push(to);
  const { startStaging, startBundling, markReady, fail } = store;
  store.startStaging = (
    id,
    ...rest
  ) => (heard(id, "staging"), startStaging.call(store, id, ...rest));
  store.startBundling = (
    id,
    ...rest
  ) => (heard(id, "bundling"), startBundling.call(store, id, ...rest));
  store.markReady = (id, ...rest) => (heard(id, "ready"), markReady.call(store, id, ...rest));
  store.fail = (id, ...rest) => (heard(id, "error"), fail.call(store, id, ...rest));
  return moves;
}

/** Resolves when `worker` has finished its work on `cartId` (for whatever reason). */
function workEnded(worker: CartWorker, cartId: string): Promise<void> {
  const ended = Promise.withResolvers<void>();
  const work = worker.work.bind(worker);
  worker.work = async (id) => {
    try {
      await work(id);
    } finally {
      if (id === cartId) ended.resolve();
    }
  };
  return ended.promise;
}

/** The cart's row now. */
async function row(store: CartStore, cartId: string): Promise<Cart> {
  const cart = await store.cart(cartId);
  assert.ok(cart, `cart ${cartId} has a row`);
  return cart;
}

Deno.test("a cart goes waiting → staging → bundling → ready, its files and tar on disk", async () => {
  await using r = await rig();
  const queue = new MemoryQueue();
  const worker = r.worker(queue);
  await worker.start();
  r.archive.put("11", "hello");
  r.archive.put("12", "world!");
  const cart = await r.post("ready-1", ["11", "12"], true);
  const moves = recordMoves(r.store, cart.id);
  const ended = workEnded(worker, cart.id);
  await queue.publish(cart.id);
  await ended;
  assert.deepEqual(moves, ["staging", "bundling", "ready"]);
  const ready = await row(r.store, cart.id);
  assert.equal(ready.status, "ready");
  assert.equal(ready.message, "");
  assert.equal(ready.claimOwner, null);
  assert.equal(ready.totalBytes, 11);
  assert.equal(await Deno.readTextFile(r.volume.filePath(cart.id, 0)), "hello");
  assert.equal(await Deno.readTextFile(r.volume.filePath(cart.id, 1)), "world!");
  const tar = await Deno.stat(r.volume.bundlePath(cart.id));
  assert.ok(tar.size > 11, `the tar holds the files (${tar.size} bytes)`);
  assert.equal(ready.reservedBytes, 11 + tar.size, "the reservation is what the cart holds");
});

Deno.test("a big file piped without a hash gets its CRC-32 after ready, in the same work", async () => {
  await using r = await rig();
  const queue = new MemoryQueue();
  const worker = r.worker(queue);
  await worker.start();
  r.archive.put("big", { size: (1 << 20) + 123 }); // over the one-write size: piped to disk
  r.archive.put("small", "small one");
  const cart = await r.post("crc-1", ["big", "small"], false);
  const moves = recordMoves(r.store, cart.id);
  const ready = Promise.withResolvers<number | null>();
  // What the big file's row holds at the moment the cart is made ready.
  const { markReady } = r.store;
  r.store.markReady = async (id, ...rest) => {
    for await (const f of r.store.eachFile(id)) if (f.idx === 0) ready.resolve(f.crc32);
    return await markReady.call(r.store, id, ...rest);
  };
  const ended = workEnded(worker, cart.id);
  await queue.publish(cart.id);
  await ended;
  assert.deepEqual(moves, ["staging", "bundling", "ready"]);
  assert.equal(await ready.promise, null, "staging did not read the big file back");
  const rows = [];
  for await (const f of r.store.eachFile(cart.id)) rows.push(f);
  const bytes = [await r.archive.bytes("big"), await r.archive.bytes("small")];
  assert.deepEqual(rows.map((f) => f.crc32), bytes.map((b) => crc32(b) >>> 0));
  assert.deepEqual(rows.map((f) => f.sha256), [null, null], "no manifest: no SHA-256 measured");
});

Deno.test("a stopped worker hands its carts back, and another worker finishes them", async () => {
  await using r = await rig();
  r.archive.put("21", "on tape for a while", { tapeMs: 1500 });
  const queue = new RecordingQueue();
  const first = r.worker(queue);
  await first.start();
  const cart = await r.post("handback-1", ["21"]);
  await queue.publish(cart.id);
  await eventually("the first worker stages the cart", async () => {
    const now = await row(r.store, cart.id);
    return now.status === "staging" && r.archive.counts("21").head > 0;
  }, 10_000);
  const before = queue.published.length;
  await first.stop();
  assert.deepEqual(queue.published.slice(before), [cart.id], "the cart was queued again");
  const handedBack = await row(r.store, cart.id);
  assert.equal(handedBack.status, "staging", "the cart was not failed");
  assert.equal(handedBack.message, "");
  assert.equal(handedBack.claimOwner, null, "the claim was released");

  const second = r.worker();
  const ended = workEnded(second, cart.id);
  await second.start(); // its first sweep queues every cart nobody holds
  await ended;
  const ready = await row(r.store, cart.id);
  assert.equal(ready.status, "ready");
  assert.equal(ready.attempts, 2, "the second worker resumed the cart");
  assert.equal(await Deno.readTextFile(r.volume.filePath(cart.id, 0)), "on tape for a while");
});

Deno.test("a lost claim stops the work, and the cart is left to the claim's new owner", async () => {
  await using r = await rig();
  r.archive.put("31", "never leaves the tape", { tapeMs: Infinity });
  const queue = new MemoryQueue();
  const worker = r.worker(queue);
  await worker.start();
  const cart = await r.post("lost-1", ["31"]);
  const moves = recordMoves(r.store, cart.id);
  const ended = workEnded(worker, cart.id);
  await queue.publish(cart.id);
  await eventually("the worker polls the tape", () => r.archive.counts("31").head > 1, 10_000);
  // Another worker takes the claim over (as when ours expired while the database was away):
  // ours is let go, and the other claims the cart.
  await r.store.release(cart.id, worker.owner);
  assert.ok(await r.store.claim(cart.id, "another-worker", 60_000), "the other worker claims it");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const outcome = await Promise.race([
    ended.then(() => "stopped"),
    new Promise((resolve) => timer = setTimeout(() => resolve("still working"), 5_000)),
  ]);
  clearTimeout(timer);
  assert.equal(outcome, "stopped");
  const left = await row(r.store, cart.id);
  assert.equal(left.status, "staging", "the cart was not failed");
  assert.equal(left.message, "");
  assert.equal(left.claimOwner, "another-worker", "the new owner's claim is untouched");
  assert.deepEqual(moves, ["staging"], "nothing moved the cart after the claim was lost");
  assert.ok((await r.volume.cartIds()).includes(cart.id), "the new owner's folder stays");
  const asked = r.archive.counts("31");
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual(r.archive.counts("31"), asked, "the archive is asked nothing more");
});
