/**
 * Tests of the routes on a ready cart made directly in a SQLite store (no worker, no archive):
 * `If-None-Match` → 304, that each app instance has its own downloads in flight, and that a
 * DELETE is told on the cancellations the routes were given.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { planCartBundle } from "../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import { loadConfig } from "../lib/config/config.ts";
import { openSqlite } from "../lib/db/sqlite.ts";
import { MemoryQueue } from "../lib/queue/memory.ts";
import { Cancellations } from "../lib/space/cancellations.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { CartStore } from "../lib/store/store.ts";
import { Volume } from "../lib/volume/volume.ts";
import { type CartApp, cartRoutes } from "./routes.ts";
import { assertZipIntact } from "../tests/support/zip_check.ts";

/**
 * A store holding the ready cart `uid` of one file, and `apps` apps on it; `crc32` is what
 * staging recorded of the file (null: not measured, as for a big file piped to disk).
 */
async function readyCart(uid: string, apps: number, crc32: number | null = 0) {
  const dir = await Deno.makeTempDir({ prefix: "routes_test_" });
  const db = openSqlite(join(dir, "cartd.sqlite3"));
  await syncSchema(db);
  const store = new CartStore(db);
  const volume = new Volume(join(dir, "volume"));
  const doc = { files: [{ id: "1", path: "a.txt" }], bundle: false, manifest: false };
  const { cart } = await store.createCart(uid, doc, "0".repeat(64));
  await volume.prepare(cart.id);
  const bytes = new Uint8Array(256 * 1024).fill(97);
  await Deno.writeFile(volume.filePath(cart.id, 0), bytes);
  const facts = { size: bytes.length, mtime: 0, sha256: "0".repeat(64), crc32 };
  await store.fileStaged(cart.id, 0, facts);
  assert.ok(await store.startStaging(cart.id, null), "the cart moves to staging");
  assert.ok(await store.startBundling(cart.id, null), "the cart moves to bundling");
  const ready = { ...cart, readyAt: store.now() };
  const plan = planCartBundle(ready, await StagedFiles.load(store, cart, volume));
  const download = { readyAt: ready.readyAt, size: plan.size, etag: plan.etag };
  assert.ok(await store.markReady(cart.id, null, download), "the cart moves to ready");
  const config = loadConfig({ VOLUME_PATH: join(dir, "volume") });
  const queue = new MemoryQueue();
  const cancellations = new Cancellations();
  const made: CartApp[] = [];
  for (let i = 0; i < apps; i++) {
    made.push(cartRoutes({ store, queue, volume, config, cancellations }));
  }
  return {
    cartId: cart.id,
    store,
    bytes,
    apps: made,
    cancellations,
    get: (app: CartApp, headers: Record<string, string> = {}, query = "") =>
      app.fetch(
        new Request(`http://cartd/${uid}${query}`, { headers: { host: "cartd", ...headers } }),
      ),
    async [Symbol.asyncDispose]() {
      await queue.close();
      await db.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("GET with If-None-Match naming the bundle's ETag answers 304 without a body", async () => {
  await using w = await readyCart("nm", 1);
  const [app] = w.apps;
  const full = await w.get(app);
  assert.equal(full.status, 200);
  const etag = full.headers.get("etag")!;
  const lastModified = full.headers.get("last-modified")!;
  await full.body?.cancel();

  const same = await w.get(app, { "If-None-Match": etag });
  assert.equal(same.status, 304);
  assert.equal(same.headers.get("etag"), etag);
  assert.equal(same.headers.get("last-modified"), lastModified);
  assert.equal(await same.text(), "");
  const listed = await w.get(app, { "If-None-Match": `"other", W/${etag}`, Range: "bytes=0-9" });
  assert.equal(listed.status, 304, "a weak match in a list counts, and wins over Range");
  await listed.body?.cancel();
  const any = await w.get(app, { "If-None-Match": "*" });
  assert.equal(any.status, 304);
  await any.body?.cancel();
  assert.equal(app.downloads.downloads(w.cartId), 0, "a 304 holds no plan");

  const other = await w.get(app, { "If-None-Match": '"stale"' });
  assert.equal(other.status, 200, "another tag: the whole bundle");
  assert.equal((await other.arrayBuffer()).byteLength, Number(full.headers.get("content-length")));
});

Deno.test("a zip of files staged without a CRC-32 measures them first, and the tar's ETag stays", async () => {
  await using w = await readyCart("zc", 1, null);
  const [app] = w.apps;
  const tar = await w.get(app);
  assert.equal(tar.status, 200, "a tar needs no CRC-32");
  const etag = tar.headers.get("etag");
  assert.equal((await tar.arrayBuffer()).byteLength, Number(tar.headers.get("content-length")));
  const zip = await w.get(app, {}, "?format=zip");
  assert.equal(zip.status, 200);
  await assertZipIntact(new Uint8Array(await zip.arrayBuffer()));
  const rows = [];
  for await (const f of w.store.eachFile(w.cartId)) rows.push(f.crc32);
  assert.deepEqual(rows, [crc32(w.bytes) >>> 0], "recorded, so the next zip reads nothing");
  const after = await w.get(app);
  assert.equal(after.headers.get("etag"), etag);
  await after.body?.cancel();
});

Deno.test("two app instances in one process do not share their downloads in flight", async () => {
  await using w = await readyCart("two", 2);
  const [a, b] = w.apps;
  const first = await w.get(a);
  assert.equal(first.status, 200);
  const reader = first.body!.getReader();
  try {
    await reader.read(); // under way, then stalled
    assert.equal(a.downloads.downloads(w.cartId), 1);
    assert.equal(b.downloads.downloads(w.cartId), 0, "b does not see a's download");
    const second = await w.get(b);
    assert.equal(b.downloads.downloads(w.cartId), 1, "b planned its own");
    assert.equal(a.downloads.downloads(w.cartId), 1);
    const length = Number(second.headers.get("content-length"));
    assert.ok(length > 256 * 1024);
    assert.equal((await second.arrayBuffer()).byteLength, length);
    assert.equal(b.downloads.downloads(w.cartId), 0, "b's download ended");
  } finally {
    await reader.cancel();
  }
  assert.equal(a.downloads.downloads(w.cartId), 0, "a's download ended when cancelled");
});

Deno.test("DELETE tells the routes' cancellations, so a local worker stops the cart's work", async () => {
  await using w = await readyCart("del", 1);
  const heard: string[] = [];
  const stop = w.cancellations.onCancel((cartId) => heard.push(cartId));
  const deleted = await w.apps[0].fetch(
    new Request("http://cartd/del", { method: "DELETE", headers: { host: "cartd" } }),
  );
  stop();
  assert.equal(deleted.status, 200);
  assert.deepEqual(heard, [w.cartId]);
  assert.equal((await w.get(w.apps[0])).status, 404);
});
