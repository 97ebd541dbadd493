/**
 * Space (SPEC §4): whole-cart reservation, LRU purge, retention. Unit tests drive
 * lib/space/space.ts on a real SQLite store with a settable clock and a settable disk; end-to-end
 * tests fill a capped volume (CARTD_VOLUME_SIZE) of the real cartd with ready carts.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { planCartBundle } from "../../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../../lib/bundle/staged_files.ts";
import type { CartDocument } from "../../lib/cart/document.ts";
import type { Config } from "../../lib/config/config.ts";
import { openSqlite } from "../../lib/db/sqlite.ts";
import { expireCarts } from "../../lib/space/retention.ts";
import { syncSchema } from "../../lib/store/schema.ts";
import { type DiskInfo, NO_SPACE, NoSpaceError, Space } from "../../lib/space/space.ts";
import { type Cart, CartStore } from "../../lib/store/store.ts";
import { Volume } from "../../lib/volume/volume.ts";
import { cartStatus, listFiles, postCart, startCartd, waitFor } from "../support/harness.ts";
import { eventually } from "../support/eventually.ts";
import { startFakeArchive } from "../support/fake_archive.ts";
import { MYSQL_OFF, testMysqlConfig } from "../support/services.ts";

const KiB = 1024;

/** A store, volume and Space on a temp folder, with a clock and a disk the test controls. */
async function world(space: Partial<Config["space"]> = {}) {
  const dir = await Deno.makeTempDir({ prefix: "space_test_" });
  const db = openSqlite(join(dir, "cartd.sqlite3"));
  await syncSchema(db);
  const t = { now: 1_000_000_000 };
  const disk: DiskInfo = { free: Number.MAX_SAFE_INTEGER, blockSize: 0 };
  const store = new CartStore(db, () => t.now);
  const volume = new Volume(join(dir, "volume"));
  const settings: Config["space"] = {
    volumeSize: 0,
    lruBufferMs: 0,
    purge: true,
    retentionMs: 0,
    ...space,
  };
  const sp = new Space(store, volume, settings, () => t.now, () => Promise.resolve({ ...disk }));
  let n = 0;
  /** A cart of `sizes` (bytes per file), in `status`, with its files on disk when staged. */
  const cart = async (
    uid: string,
    sizes: number[],
    status: "waiting" | "staging" | "ready" | "error" = "ready",
  ): Promise<Cart> => {
    const doc: CartDocument = {
      files: sizes.map((_, i) => ({ id: `${uid}-${i}`, path: `f${i}` })),
      bundle: false,
      manifest: false,
    };
    const { cart } = await store.createCart(uid, doc, String(++n).padStart(64, "0"));
    if (status === "waiting") return cart;
    await store.startStaging(cart.id, null);
    await volume.prepare(cart.id);
    const total = sizes.reduce((a, b) => a + b, 0);
    await sp.reserve(cart, total);
    if (status === "staging") return (await store.cart(cart.id))!;
    for (const [i, size] of sizes.entries()) {
      await Deno.writeFile(volume.filePath(cart.id, i), new Uint8Array(size));
      await store.fileStaged(cart.id, i, { size, mtime: 0, sha256: "0".repeat(64), crc32: 0 });
    }
    if (status === "error") {
      await store.fail(cart.id, "broken");
    } else {
      await store.startBundling(cart.id, null);
      const ready = { ...cart, readyAt: store.now() };
      const plan = planCartBundle(ready, await StagedFiles.load(store, cart, volume));
      const facts = { readyAt: ready.readyAt, size: plan.size, etag: plan.etag };
      await store.markReady(cart.id, null, facts);
    }
    await sp.settle(cart.id);
    return (await store.cart(cart.id))!;
  };
  const live = async () => (await store.liveCarts()).map((c) => c.uid).sort();
  return {
    t,
    disk,
    store,
    volume,
    space: sp,
    cart,
    live,
    async [Symbol.asyncDispose]() {
      await db.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("space: reservations of carts in progress count against the cap", async () => {
  await using w = await world({ volumeSize: 100 * KiB });
  const a = await w.cart("a", [60 * KiB], "staging");
  assert.equal(a.reservedBytes, 60 * KiB);
  const b = await w.cart("b", [40 * KiB], "waiting");
  assert.equal((await w.space.tryReserve(b, 40 * KiB)).ok, true, "exactly the cap fits");
  const c = await w.cart("c", [1], "waiting");
  const fit = await w.space.tryReserve(c, 1);
  assert.deepEqual(fit, { ok: false, capShort: 1, diskShort: 0 });
  await assert.rejects(w.space.reserve(c, 1), (e: unknown) => {
    assert.ok(e instanceof NoSpaceError);
    assert.equal((e as Error).message, "No Space Available");
    return true;
  });
  assert.equal((await w.store.cart(c.id))!.reservedBytes, 0, "nothing reserved for a failure");
  assert.deepEqual(await w.live(), ["a", "b", "c"], "carts in progress are never purged");
});

Deno.test("space: the disk check counts what carts in progress still have to write", async () => {
  await using w = await world();
  w.disk.free = 100 * KiB;
  const a = await w.cart("a", [30 * KiB, 30 * KiB], "staging");
  // a has staged one of its files: the disk already shows it, only the other is still owed.
  await Deno.writeFile(w.volume.filePath(a.id, 0), new Uint8Array(30 * KiB));
  await w.store.fileStaged(a.id, 0, { size: 30 * KiB, mtime: 0, sha256: "0", crc32: 0 });
  w.disk.free = 70 * KiB;
  const b = await w.cart("b", [40 * KiB], "waiting");
  assert.equal((await w.space.tryReserve(b, 40 * KiB)).ok, true, "70 free - 30 owed = 40");
  const c = await w.cart("c", [1], "waiting");
  const fit = await w.space.tryReserve(c, 1);
  assert.equal(fit.ok, false);
  assert.equal(fit.diskShort, 1);
  // One block of slack per file (and two for the folders) when the file system has blocks.
  w.disk.free = 1000 * KiB;
  w.disk.blockSize = 4096;
  const d = await w.cart("d", [1, 1, 1], "waiting");
  const room = 1000 * KiB - 30 * KiB - 40 * KiB; // what a and b still owe
  assert.equal((await w.space.tryReserve(d, room - 5 * 4096)).ok, true);
  assert.equal((await w.space.tryReserve(d, room - 5 * 4096 + 1)).ok, false);
});

Deno.test("space: a reservation is counted only once, and a ready cart holds what is on disk", async () => {
  await using w = await world({ volumeSize: 100 * KiB });
  const a = await w.cart("a", [10 * KiB, 20 * KiB]);
  assert.equal(a.status, "ready");
  assert.equal(a.reservedBytes, 30 * KiB);
  // Reserving again for the same cart (a resumed cart) does not count its old reservation.
  assert.equal((await w.space.tryReserve(a, 100 * KiB)).ok, true);
  await w.space.settle(a.id);
  assert.equal((await w.store.cart(a.id))!.reservedBytes, 30 * KiB);
  // A file removed behind cartd's back: the settled reservation follows the disk.
  await Deno.remove(w.volume.filePath(a.id, 1));
  await w.space.settle(a.id);
  assert.equal((await w.store.cart(a.id))!.reservedBytes, 10 * KiB);
});

Deno.test("space: LRU purge removes whole ready carts, least recently used first, only as many as needed", async () => {
  await using w = await world({ volumeSize: 100 * KiB });
  const a = await w.cart("a", [30 * KiB]);
  w.t.now += 1000;
  const b = await w.cart("b", [30 * KiB]);
  w.t.now += 1000;
  const c = await w.cart("c", [30 * KiB]);
  w.t.now += 1000;
  await w.store.touch(a.id); // a download or a status check: a is now the most recent
  w.t.now += 1000;
  const d = await w.cart("d", [40 * KiB], "waiting");
  await w.space.reserve(d, 40 * KiB);
  // 90 used + 40 > 100: one cart must go, the least recently used: b (a was used last).
  assert.deepEqual(await w.live(), ["a", "c", "d"]);
  assert.equal(await w.store.cart(b.id), null, "the purged cart's rows are gone");
  assert.deepEqual(await listFiles(w.volume.cartDir(b.id)), [], "and its files");
  assert.deepEqual(await listFiles(w.volume.cartDir(c.id)), ["files/0"]);
  // Next, c goes before a.
  const e = await w.cart("e", [30 * KiB], "waiting");
  await w.space.reserve(e, 30 * KiB);
  assert.deepEqual(await w.live(), ["a", "d", "e"]);
});

Deno.test("space: LRU_BUFFER_TIME protects recently used carts; no cart is destroyed for a cart that fails anyway", async () => {
  await using w = await world({ volumeSize: 100 * KiB, lruBufferMs: 60_000 });
  await w.cart("old", [30 * KiB]);
  w.t.now += 120_000;
  const recent = await w.cart("recent", [30 * KiB]);
  w.t.now += 30_000; // "recent" was used (became ready) 30 s ago: inside the buffer
  await w.cart("building", [30 * KiB], "staging");
  // Needs 70 KiB: purging "old" frees only 30 of the 60 missing: fail, and keep "old".
  const big = await w.cart("big", [70 * KiB], "waiting");
  await assert.rejects(w.space.reserve(big, 70 * KiB), { message: NO_SPACE });
  assert.deepEqual(await w.live(), ["big", "building", "old", "recent"]);
  // Needs 40: purging "old" is enough.
  const mid = await w.cart("mid", [40 * KiB], "waiting");
  await w.space.reserve(mid, 40 * KiB);
  assert.deepEqual(await w.live(), ["big", "building", "mid", "recent"]);
  // Once the buffer has passed, "recent" may go too.
  w.t.now += 31_000;
  assert.deepEqual((await w.space.purgeable()).map((c) => c.id), [recent.id]);
});

Deno.test("space: a cart held by a download is neither purged nor expired until the hold ends", async () => {
  await using w = await world({ volumeSize: 100 * KiB }); // LRU_BUFFER_TIME 0
  const held = await w.cart("held", [60 * KiB]);
  w.t.now += 1000;
  await w.store.touch(held.id, w.t.now + 60_000); // a download in flight
  await w.store.touch(held.id); // a status check meanwhile does not cut the hold short
  assert.deepEqual(await w.space.purgeable(), []);
  const next = await w.cart("next", [60 * KiB], "waiting");
  await assert.rejects(w.space.reserve(next, 60 * KiB), { message: NO_SPACE });
  assert.deepEqual(await expireCarts(w.store, w.volume, 1, w.t.now), []);
  assert.deepEqual(await w.live(), ["held", "next"]);
  // A hold ended by its download: purgeable at once (LRU_BUFFER_TIME is 0).
  const other = await w.cart("other", [10 * KiB]);
  await w.store.touch(other.id, w.t.now + 60_000);
  assert.deepEqual(await w.space.purgeable(), []);
  await w.store.endHold(other.id);
  w.t.now += 1;
  assert.deepEqual((await w.space.purgeable()).map((c) => c.uid), ["other"]);
  await w.store.unliveReady(other.id, {});
  // The hold over (its process died): purge and retention apply again.
  w.t.now += 60_001;
  assert.deepEqual((await w.space.purgeable()).map((c) => c.uid), ["held"]);
  await w.space.reserve(next, 60 * KiB);
  assert.deepEqual(await w.live(), ["next"]);
});

Deno.test("space: CARTD_LRU_PURGE=false makes a cart that does not fit fail at once", async () => {
  await using w = await world({ volumeSize: 50 * KiB, purge: false });
  await w.cart("a", [30 * KiB]);
  w.t.now += 1000;
  const b = await w.cart("b", [30 * KiB], "waiting");
  await assert.rejects(w.space.reserve(b, 30 * KiB), NoSpaceError);
  assert.deepEqual(await w.live(), ["a", "b"]);
});

Deno.test("space: the disk alone (no cap) also triggers the purge", async () => {
  await using w = await world();
  w.disk.free = 1000 * KiB;
  const a = await w.cart("a", [300 * KiB]);
  w.t.now += 1000;
  // Simulate the file system: 300 KiB of a now sit on it, and a is settled.
  w.disk.free = 100 * KiB;
  const b = await w.cart("b", [200 * KiB], "waiting");
  const space = new Space(w.store, w.volume, w.space.settings, () => w.t.now, async (path) => {
    // Removing a's folder gives its bytes back, as a real file system would.
    const gone = await Deno.stat(w.volume.cartDir(a.id)).then(() => false, () => true);
    assert.equal(path, w.volume.cartsDir);
    return { free: gone ? 400 * KiB : 100 * KiB, blockSize: 0 };
  });
  await space.reserve(b, 200 * KiB);
  assert.deepEqual(await w.live(), ["b"]);
});

Deno.test("space: retention removes ready carts older than CARTD_RETENTION, and nothing else", async () => {
  await using w = await world();
  const old = await w.cart("old", [KiB]);
  await w.cart("failed", [KiB], "error");
  await w.cart("busy", [KiB], "staging");
  w.t.now += 10_000;
  const young = await w.cart("young", [KiB]);
  w.t.now += 5_000;
  assert.deepEqual(await expireCarts(w.store, w.volume, 0, w.t.now), [], "0 = off");
  await w.store.touch(old.id); // use does not extend retention: it counts from "ready"
  const removed = await expireCarts(w.store, w.volume, 12_000, w.t.now);
  assert.deepEqual(removed.map((c) => c.uid), ["old"]);
  assert.deepEqual(await w.live(), ["busy", "failed", "young"]);
  assert.deepEqual(await listFiles(w.volume.cartDir(old.id)), []);
  assert.equal((await w.store.cart(young.id))!.status, "ready");
});

// ---------------------------------------------------------------- end to end

const SIZE = 100 * KiB;

/** A fake archive with `n` files of 100 KiB named f0, f1, … and one on tape forever. */
function archiveWith(n: number) {
  const fake = startFakeArchive();
  for (let i = 0; i < n; i++) fake.put(`f${i}`, { size: SIZE });
  fake.put("tape", { size: SIZE }, { tapeMs: Infinity });
  return fake;
}

const one = (id: string, bundle = false) => ({ fileids: [{ id, path: `data/${id}` }], bundle });

async function ready(url: string, uid: string, doc: unknown): Promise<void> {
  const res = await postCart(url, uid, doc);
  assert.equal(res.status, 201, await res.text());
  assert.deepEqual(await waitFor(url, uid, "ready"), [204, "ready", ""], uid);
}

async function volumeCarts(volume: string): Promise<string[]> {
  return await new Volume(volume).cartIds();
}

Deno.test("e2e space: a capped volume purges the least recently used ready cart; purged carts answer 404", async () => {
  await using fake = archiveWith(5);
  // Room for three carts of 100 KiB (the cap counts reservations, not the database).
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: fake.url, CARTD_VOLUME_SIZE: String(3 * SIZE) },
  });
  const { url } = cartd;
  await ready(url, "a", one("f0"));
  await ready(url, "b", one("f1"));
  await ready(url, "c", one("f2"));
  // Use a (a download) and then b (a status check): c is now the least recently used.
  const got = await fetch(url + "a");
  assert.equal(got.status, 200);
  assert.equal((await got.arrayBuffer()).byteLength > SIZE, true);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal((await cartStatus(url, "b"))[1], "ready");
  await ready(url, "d", one("f3"));
  assert.deepEqual(await cartStatus(url, "c"), [404, "error", "No cart with uid c found"]);
  const gone = await fetch(url + "c");
  assert.equal(gone.status, 404);
  assert.deepEqual(await gone.json(), {
    message: "The cart does not exist or has already been deleted",
  });
  for (const uid of ["a", "b", "d"]) assert.equal((await cartStatus(url, uid))[1], "ready", uid);
  await eventually(
    "three cart folders remain",
    async () => (await volumeCarts(cartd.volume)).length === 3,
  );
  // Next in line: a (downloaded before b was checked).
  await ready(url, "e", one("f4"));
  assert.equal((await cartStatus(url, "a"))[0], 404);
  for (const uid of ["b", "d", "e"]) assert.equal((await cartStatus(url, uid))[1], "ready", uid);
});

Deno.test("e2e space: a cart being downloaded is not purged under the download, even with LRU_BUFFER_TIME=0", async () => {
  const BIG = 24 * 1024 * KiB; // more than loopback's socket buffers hold
  await using fake = startFakeArchive();
  fake.put("big0", { size: BIG });
  fake.put("big1", { size: BIG });
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: fake.url, CARTD_VOLUME_SIZE: String(BIG + 512 * KiB) },
  });
  const { url } = cartd;
  await ready(url, "a", one("big0"));
  const download = await fetch(url + "a");
  assert.equal(download.status, 200);
  const length = Number(download.headers.get("content-length"));
  const reader = download.body!.getReader();
  try {
    let got = (await reader.read()).value!.byteLength; // under way, and then stalled by us
    // b needs a's room; a is ready and its last use is "now", but its download holds it.
    const res = await postCart(url, "b", one("big1"));
    assert.equal(res.status, 201, await res.text());
    assert.deepEqual(await waitFor(url, "b", "error"), [500, "error", NO_SPACE]);
    for (let r = await reader.read(); !r.done; r = await reader.read()) got += r.value.byteLength;
    assert.equal(got, length, "the download is whole");
  } finally {
    await reader.cancel().catch(() => {});
  }
  assert.equal((await cartStatus(url, "a"))[1], "ready");
});

Deno.test("e2e space: LRU_BUFFER_TIME and carts in progress are protected; the failure says No Space Available and leaves nothing", async () => {
  await using fake = archiveWith(3);
  await using cartd = await startCartd({
    env: {
      ARCHIVE_INTERFACE_URL: fake.url,
      CARTD_VOLUME_SIZE: String(3 * SIZE),
      LRU_BUFFER_TIME: "3600",
    },
  });
  const { url } = cartd;
  await ready(url, "a", one("f0"));
  await ready(url, "b", one("f1"));
  // A cart in progress: reserved, waiting for a tape that never comes.
  assert.equal((await postCart(url, "slow", one("tape"))).status, 201);
  await eventually("the tape file was asked for", () => fake.counts("tape").post > 0);
  assert.equal((await cartStatus(url, "slow"))[1], "staging");
  // The volume is full; a and b were used within the buffer, slow is in progress.
  assert.equal((await postCart(url, "late", one("f2"))).status, 201);
  assert.deepEqual(await waitFor(url, "late", "error"), [500, "error", "No Space Available"]);
  const res = await fetch(url + "late");
  assert.equal(res.status, 500);
  assert.deepEqual(await res.json(), { message: "No Space Available" });
  assert.equal(fake.counts("f2").get, 0, "nothing of the failed cart was fetched");
  for (const uid of ["a", "b"]) assert.equal((await cartStatus(url, uid))[1], "ready", uid);
  assert.equal((await cartStatus(url, "slow"))[1], "staging");
  // Nothing of "late" on disk: only the folders of a, b and slow.
  assert.equal((await volumeCarts(cartd.volume)).length, 3);
});

Deno.test("e2e space: a bundle cart reserves its tar too; CARTD_LRU_PURGE=false fails instead of purging", async () => {
  await using fake = archiveWith(2);
  await using cartd = await startCartd({
    env: {
      ARCHIVE_INTERFACE_URL: fake.url,
      CARTD_VOLUME_SIZE: String(2 * SIZE + 10 * KiB),
      CARTD_LRU_PURGE: "false",
    },
  });
  const { url } = cartd;
  // 100 KiB of files + a 100 KiB tar fits in 210 KiB; a second cart does not, and nothing is
  // purged for it.
  await ready(url, "bundled", one("f0", true));
  assert.equal((await postCart(url, "next", one("f1"))).status, 201);
  assert.deepEqual(await waitFor(url, "next", "error"), [500, "error", "No Space Available"]);
  assert.equal((await cartStatus(url, "bundled"))[1], "ready");
  const files = await listFiles(cartd.volume + "/carts");
  assert.ok(files.some((f) => f.endsWith("/bundle.tar")), files.join(", "));
});

Deno.test("e2e staging: a new cart's first files are fetched while the archive is still asked for the sizes of the rest", async () => {
  await using fake = startFakeArchive();
  const ids = Array.from({ length: 300 }, (_, i) => `g${i}`);
  // The last eight HEADs take 2 s: a worker that asked for every size before fetching
  // anything would fetch its first file after them.
  for (const [i, id] of ids.entries()) {
    fake.put(id, `file ${i}\n`, i >= 292 ? { headDelayMs: 2000 } : {});
  }
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: fake.url, CARTD_VOLUME_SIZE: String(64 * KiB) },
  });
  const { url } = cartd;
  const start = Date.now();
  const doc = { fileids: ids.map((id) => ({ id, path: `d/${id}` })) };
  assert.equal((await postCart(url, "pipelined", doc)).status, 201);
  await eventually("the first file was fetched", () => fake.counts("g0").get > 0);
  const firstGet = Date.now() - start;
  assert.ok(firstGet < 1500, `the first file was fetched after ${firstGet} ms`);
  assert.equal((await cartStatus(url, "pipelined"))[1], "staging");
  assert.equal(fake.counts("g299").get, 0, "no file is fetched before its size is known");
  assert.deepEqual(await waitFor(url, "pipelined", "ready"), [204, "ready", ""]);
  for (const id of ids) assert.equal(fake.counts(id).get, 1, id);
  const tar = await fetch(url + "pipelined");
  assert.equal(tar.status, 200);
  assert.ok((await tar.arrayBuffer()).byteLength > 300 * 512);
});

Deno.test("e2e space: a many-file cart that outgrows the volume while its sizes come in fails, fetching nothing past its room, and leaves nothing", async () => {
  await using fake = startFakeArchive();
  const ids = Array.from({ length: 600 }, (_, i) => `h${i}`);
  for (const id of ids) fake.put(id, { size: 1024 });
  // Room for the first batches of 256 files, not for all 600.
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: fake.url, CARTD_VOLUME_SIZE: String(400 * KiB) },
  });
  const { url } = cartd;
  const doc = { fileids: ids.map((id) => ({ id, path: `d/${id}` })) };
  assert.equal((await postCart(url, "toobig", doc)).status, 201);
  assert.deepEqual(await waitFor(url, "toobig", "error"), [500, "error", "No Space Available"]);
  const fetched = ids.filter((id) => fake.counts(id).get > 0).length;
  assert.ok(fetched <= 400, `${fetched} files were fetched into a room for 400`);
  await eventually(
    "the failed cart's folder is gone",
    async () => (await volumeCarts(cartd.volume)).length === 0,
  );
});

// ---------------------------------------------------------------- across processes (MySQL)

Deno.test({
  name: "space (MariaDB): concurrent reservations from separate connection pools never overbook",
  ignore: MYSQL_OFF,
  async fn() {
    const { openMysql } = await import("../../lib/db/mysql.ts");
    const config = testMysqlConfig();
    const dir = await Deno.makeTempDir({ prefix: "space_test_mysql_" });
    const dbs = [await openMysql(config), await openMysql(config)];
    try {
      await syncSchema(dbs[0]);
      const volume = new Volume(dir);
      const settings = { volumeSize: 100 * KiB, lruBufferMs: 0, purge: false, retentionMs: 0 };
      const noDisk = () => Promise.resolve({ free: Number.MAX_SAFE_INTEGER, blockSize: 0 });
      // Two "processes": each its own pool, store and Space.
      const spaces = dbs.map((db) =>
        new Space(new CartStore(db), volume, settings, Date.now, noDisk)
      );
      const carts: Cart[] = [];
      for (let i = 0; i < 24; i++) {
        const doc: CartDocument = {
          files: [{ id: `x${i}`, path: "x" }],
          bundle: false,
          manifest: false,
        };
        carts.push(
          (await spaces[0].store.createCart(`c${i}`, doc, String(i).padStart(64, "0"))).cart,
        );
      }
      const results = await Promise.allSettled(
        carts.map((c, i) => spaces[i % 2].reserve(c, 10 * KiB)),
      );
      const won = results.filter((r) => r.status === "fulfilled").length;
      for (const r of results) {
        if (r.status === "rejected") assert.ok(r.reason instanceof NoSpaceError, String(r.reason));
      }
      assert.equal(won, 10, "exactly as many as the cap holds");
      const [row] = await dbs[0].all<{ total: number }>(
        "SELECT SUM(reserved_bytes) AS total FROM carts",
      );
      assert.equal(Number(row.total), 100 * KiB);
    } finally {
      await dbs[1].close();
      await dbs[0].run(`DROP DATABASE IF EXISTS \`${config.database}\``).catch(() => {});
      await dbs[0].close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("e2e retention: the worker's sweep deletes a ready cart after CARTD_RETENTION", async () => {
  await using fake = archiveWith(1);
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: fake.url, CARTD_RETENTION: "1" },
  });
  const { url } = cartd;
  await ready(url, "short-lived", one("f0"));
  const readyAt = Date.now();
  await eventually("the cart is deleted", async () => {
    // Status checks are uses, and retention ignores them: it counts from "ready".
    return (await cartStatus(url, "short-lived"))[0] === 404;
  }, 10_000);
  assert.ok(Date.now() - readyAt >= 500, "not long before its retention time");
  assert.equal(await fetch(url + "short-lived").then((r) => (r.body?.cancel(), r.status)), 404);
  await eventually(
    "its folder is gone",
    async () => (await volumeCarts(cartd.volume)).length === 0,
  );
});
