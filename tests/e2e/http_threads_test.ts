/**
 * Downloads on every core (issue 15 item 1): the API served by several HTTP threads, against
 * the real cartd command. Whole downloads, ranges, ETags and 304s through the threads; the
 * purge hold of a cart counted over the whole process, so a download in one thread keeps its
 * cart when downloads in another end; the same checks pass on the main thread alone
 * (`CARTD_HTTP_THREADS=0`).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { startFakeArchive } from "../support/fake_archive.ts";
import { eventually } from "../support/eventually.ts";
import { cartStatus, postCart, startCartd, waitFor } from "../support/harness.ts";

const KiB = 1024;
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const one = (id: string) => ({ fileids: [{ id, path: `data/${id}` }] });

Deno.test("http threads: downloads, ranges, ETags and 304s, as on the main thread alone", async () => {
  await using archive = startFakeArchive();
  for (let i = 0; i < 4; i++) archive.put(`f${i}`, { size: 3 * 1024 * KiB + i });
  const doc = { fileids: [0, 1, 2, 3].map((i) => ({ id: `f${i}`, path: `d/f${i}` })) };
  for (const threads of ["4", "0"]) {
    await using cartd = await startCartd({
      env: { ARCHIVE_INTERFACE_URL: archive.url, CARTD_HTTP_THREADS: threads },
    });
    if (threads === "4") {
      assert.match(cartd.output(), /accepts on every HTTP thread.*threads=4/);
    } else assert.doesNotMatch(cartd.output(), /HTTP thread/);
    assert.equal((await postCart(cartd.url, "c", doc)).status, 201);
    assert.deepEqual(await waitFor(cartd.url, "c", "ready"), [204, "ready", ""]);
    // 24 downloads at once, each its own connection: Linux spreads them over the threads.
    const got = await Promise.all(Array.from({ length: 24 }, async () => {
      const res = await fetch(cartd.url + "c", { headers: { connection: "close" } });
      assert.equal(res.status, 200);
      return { etag: res.headers.get("etag")!, bytes: await res.bytes() };
    }));
    const etag = got[0].etag;
    for (const g of got) {
      assert.equal(g.etag, etag);
      assert.equal(sha(g.bytes), sha(got[0].bytes));
    }
    const ranged = await fetch(cartd.url + "c", { headers: { range: "bytes=1000-2000000" } });
    assert.equal(ranged.status, 206);
    assert.equal(ranged.headers.get("content-range"), `bytes 1000-2000000/${got[0].bytes.length}`);
    const range = await ranged.bytes();
    assert.deepEqual(range, got[0].bytes.subarray(1000, 2000001));
    const cached = await fetch(cartd.url + "c", { headers: { "if-none-match": etag } });
    assert.equal(cached.status, 304);
    await cached.body?.cancel();
    // What the threads hand to the main thread answers as there: GET /, HEAD, 404s, DELETE.
    const up = await fetch(cartd.url);
    assert.equal(up.status, 200);
    assert.match(await up.text(), /Up and Running/);
    assert.deepEqual((await cartStatus(cartd.url, "c")).slice(1, 2), ["ready"]);
    const missing = await fetch(cartd.url + "nothing");
    assert.equal(missing.status, 404);
    await missing.body?.cancel();
    const deleted = await fetch(cartd.url + "c", { method: "DELETE" });
    assert.equal(deleted.status, 200);
    await deleted.body?.cancel();
  }
});

Deno.test("http threads: a cart stays held while any thread sends it, and is purgeable after the last", async () => {
  const BIG = 24 * 1024 * KiB; // more than loopback's socket buffers hold
  await using archive = startFakeArchive();
  archive.put("big0", { size: BIG });
  archive.put("big1", { size: BIG });
  await using cartd = await startCartd({
    env: {
      ARCHIVE_INTERFACE_URL: archive.url,
      CARTD_VOLUME_SIZE: String(BIG + 512 * KiB),
      CARTD_HTTP_THREADS: "2",
      CARTD_MIN_DOWNLOAD_RATE: "0",
    },
  });
  assert.equal((await postCart(cartd.url, "a", one("big0"))).status, 201);
  assert.deepEqual(await waitFor(cartd.url, "a", "ready"), [204, "ready", ""]);
  // 12 downloads stalled by us, on their own connections: both threads send some.
  const readers = await Promise.all(Array.from({ length: 12 }, async () => {
    const res = await fetch(cartd.url + "a", { headers: { connection: "close" } });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    await reader.read();
    return reader;
  }));
  const last = readers.pop()!;
  try {
    for (const r of readers) await r.cancel();
    await eventually(
      "the cancelled downloads are logged",
      () => (cartd.output().match(/download cut by the client/g) ?? []).length === 11,
    );
    // b needs a's room, but a download of a is still in flight: a is not purged, b fails.
    assert.equal((await postCart(cartd.url, "b", one("big1"))).status, 201);
    assert.deepEqual(await waitFor(cartd.url, "b", "ready"), [500, "error", "No Space Available"]);
    assert.deepEqual((await cartStatus(cartd.url, "a")).slice(0, 2), [204, "ready"]);
  } finally {
    await last.cancel();
  }
  // The last download ended: a is purgeable, and c gets its room.
  await eventually(
    "the last download is logged",
    () => (cartd.output().match(/download cut by the client/g) ?? []).length === 12,
  );
  assert.equal((await postCart(cartd.url, "c", one("big1"))).status, 201);
  assert.deepEqual(await waitFor(cartd.url, "c", "ready"), [204, "ready", ""]);
});

Deno.test("documents of 1 MiB or more: stored by the document thread, refused as any other", async () => {
  await using archive = startFakeArchive();
  const count = 6000;
  for (let i = 0; i < count; i++) archive.put(`s${i}`, { size: 10 });
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: archive.url, CARTD_MAX_BODY: "2M" },
  });
  const pad = "x".repeat(150);
  const files = Array.from({ length: count }, (_, i) => ({ id: `s${i}`, path: `d/${pad}/${i}` }));
  const big = JSON.stringify({ fileids: files });
  assert.ok(big.length >= 1 << 20 && big.length < 2 << 20, `${big.length} bytes`);
  const posted = await postCart(cartd.url, "big", JSON.parse(big));
  assert.equal(posted.status, 201);
  assert.deepEqual(await waitFor(cartd.url, "big", "ready"), [204, "ready", ""]);
  // A bad document of that size: 400 naming the rule, as for a small one.
  const twice = [...files.slice(0, count - 1), files[0]];
  const bad = await postCart(cartd.url, "bad", { fileids: twice });
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).message, /fileids\[5999\]/);
  assert.equal((await cartStatus(cartd.url, "bad"))[0], 404);
  // Over CARTD_MAX_BODY: 413, declared or sent in chunks.
  const huge = JSON.stringify({
    fileids: [...files, ...files.map((f) => ({ ...f, id: f.id + "b" }))],
  });
  const declared = await fetch(cartd.url + "huge", { method: "POST", body: huge });
  assert.equal(declared.status, 413);
  await declared.body?.cancel();
  const chunked = await fetch(cartd.url + "huge", {
    method: "POST",
    body: new Blob([huge]).stream(),
  });
  assert.equal(chunked.status, 413);
  await chunked.body?.cancel();
  assert.match(cartd.output(), /starting the document thread[^]*cart accepted.*uid=big/);
});
