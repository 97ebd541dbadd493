/**
 * The fake archive's tape library over real HTTP: HEAD media, stage POSTs that join the recall
 * queue, GETs of files on tape (error or recall), eviction, and the older `tapeMs` delay.
 */
import assert from "node:assert/strict";
import { type FakeArchive, startFakeArchive } from "./fake_archive.ts";
import { layoutTapes, TapeLibrary } from "./tape_library.ts";

const T = (tape: string, position: number) => ({ tape, position });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function head(archive: FakeArchive, id: string): Promise<string | null> {
  const res = await fetch(archive.url + encodeURIComponent(id), { method: "HEAD" });
  await res.body?.cancel();
  assert.equal(res.status, 204, `HEAD ${id}`);
  return res.headers.get("x-pacifica-file-storage-media");
}

async function post(archive: FakeArchive, id: string): Promise<number> {
  const res = await fetch(archive.url + encodeURIComponent(id), {
    method: "POST",
    headers: { "Content-Length": "0" },
  });
  await res.body?.cancel();
  return res.status;
}

async function get(archive: FakeArchive, id: string): Promise<{ status: number; text: string }> {
  const res = await fetch(archive.url + encodeURIComponent(id));
  return { status: res.status, text: await res.text() };
}

/** Polls HEAD until `id` reports `want`; returns the ms it took. */
async function until(archive: FakeArchive, id: string, want: string, limitMs = 5000) {
  const t0 = performance.now();
  while ((await head(archive, id)) !== want) {
    if (performance.now() - t0 > limitMs) throw new Error(`${id} never reported ${want}`);
    await sleep(5);
  }
  return performance.now() - t0;
}

Deno.test("HEAD says what the library says and never stages; a stage POST queues the file", async () => {
  await using archive = startFakeArchive({
    tapeLibrary: { drives: 1, mountMs: 150, readMs: 20 },
  });
  archive.put("t", "on tape\n", { tape: T("A", 0) });
  archive.put("d", "on disk\n");
  for (let i = 0; i < 3; i++) assert.equal(await head(archive, "t"), "tape");
  assert.equal(await head(archive, "d"), "disk");
  let stats = archive.libraryStats();
  assert.equal(stats.stageRequests, 0, "HEAD staged something");
  assert.equal(stats.mounts, 0);
  await sleep(250); // longer than a mount and a read: nothing happens unasked
  assert.equal(await head(archive, "t"), "tape");

  const t0 = performance.now();
  assert.equal(await post(archive, "t"), 200);
  assert.equal(await head(archive, "t"), "tape");
  const waited = await until(archive, "t", "disk");
  assert(performance.now() - t0 >= 170 - 5, `on disk after ${waited} ms, before mount + read`);
  assert.deepEqual(await get(archive, "t"), { status: 200, text: "on tape\n" });
  assert.equal(await post(archive, "d"), 200);
  stats = archive.libraryStats();
  assert.equal(stats.mounts, 1);
  assert.deepEqual(stats.mountsByTape, { A: 1 });
  assert.equal(stats.filesRead, 1);
  assert.equal(stats.stageRequests, 2);
  assert.equal(stats.onDiskRequests, 1);
  assert.equal(archive.counts("t").post, 1);
  assert.deepEqual(archive.totals(), { head: archive.counts("t").head + 1, post: 2, get: 1 });
});

Deno.test("a stage POST joins the queue only when it succeeds, after its delay", async () => {
  await using archive = startFakeArchive({ tapeLibrary: { mountMs: 50, readMs: 5 } });
  archive.put("refused", "x", { tape: T("A", 0), postStatus: 503 });
  archive.put("slow", "y", { tape: T("A", 1), postDelayMs: 300 });
  archive.put("broken", "z", { tape: T("B", 0), error: true });
  const refused = await fetch(archive.url + "refused", { method: "POST" });
  assert.equal(refused.status, 503);
  assert.equal((await refused.json()).message, "Stage failed");
  assert.equal(await post(archive, "missing"), 500);
  assert.equal(await post(archive, "broken"), 200);
  assert.equal(archive.libraryStats().stageRequests, 0);

  const pending = post(archive, "slow");
  await sleep(150);
  assert.equal(archive.libraryStats().stageRequests, 0, "staged before the POST's delay ended");
  assert.equal(await pending, 200);
  assert.equal(archive.libraryStats().stageRequests, 1);
  await until(archive, "slow", "disk");
  assert.equal(await head(archive, "refused"), "tape");
  assert.equal(await head(archive, "broken"), "error");
});

Deno.test("GET of a file on tape: 500 with Pacifica's error page, and nothing recalled", async () => {
  await using archive = startFakeArchive({ tapeLibrary: { mountMs: 20, readMs: 5 } });
  archive.put("t1", "bytes", { tape: T("A", 3) });
  const res = await fetch(archive.url + "t1");
  assert.equal(res.status, 500);
  assert.equal(res.headers.get("content-type"), "application/json");
  const page = await res.json();
  assert.equal(page.message, "File is on tape: t1");
  assert.equal(page.status, "500 Internal Server Error");
  assert.equal(typeof page.traceback, "string");
  await sleep(60);
  const stats = archive.libraryStats();
  assert.equal(stats.stageRequests, 0);
  assert.equal(stats.waiting, 0);
  assert.equal(await head(archive, "t1"), "tape");
});

Deno.test('getOnTape "recall": a GET stages the file, waits for the drive, then streams', async () => {
  await using archive = startFakeArchive({
    tapeLibrary: { drives: 1, mountMs: 200, readMs: 30 },
    getOnTape: "recall",
  });
  archive.put("t1", "recalled bytes\n", { tape: T("A", 0) });
  archive.put("t2", "same tape\n", { tape: T("A", 1) });
  const t0 = performance.now();
  const [a, b] = await Promise.all([get(archive, "t1"), get(archive, "t2")]);
  const took = performance.now() - t0;
  assert.deepEqual(a, { status: 200, text: "recalled bytes\n" });
  assert.deepEqual(b, { status: 200, text: "same tape\n" });
  assert(took >= 200 + 2 * 30 - 5, `both answered after ${took} ms, before mount + 2 reads`);
  const stats = archive.libraryStats();
  assert.equal(stats.stageRequests, 2);
  assert.equal(stats.mounts, 1);
  assert.equal(stats.filesRead, 2);
  assert.equal(archive.counts("t1").post, 0, "the recall is the GET's, not a POST");
  // On disk now: a GET answers at once.
  const t1 = performance.now();
  assert.equal((await get(archive, "t1")).status, 200);
  assert(performance.now() - t1 < 150);
});

Deno.test('getOnTape "recall": close() ends a GET waiting on a tape that never comes', async () => {
  const archive = startFakeArchive({
    tapeLibrary: { drives: 1, mountMs: 600_000 },
    getOnTape: "recall",
  });
  archive.put("far", "never read", { tape: T("A", 0) });
  archive.put("forever", "never either", { tapeMs: Infinity });
  const waits = [get(archive, "far"), get(archive, "forever")];
  await sleep(100);
  const stats = archive.libraryStats();
  assert.equal(stats.mounts, 1, "the recall did not reach the library");
  assert.equal(stats.waiting, 1, "still mounting: the request waits");
  const t0 = performance.now();
  await archive.close();
  assert(performance.now() - t0 < 2000, "close() waited for the recall");
  for (const got of await Promise.all(waits)) {
    assert.equal(got.status, 500);
    assert.match(JSON.parse(got.text).message, /^Recall cut short: /);
  }
});

Deno.test("evict pushes a file back to tape; a new stage request reads it again", async () => {
  await using archive = startFakeArchive({ tapeLibrary: { drives: 1, mountMs: 80, readMs: 10 } });
  archive.put("f", "content\n", { tape: T("A", 0) });
  archive.put("plain", "on disk\n");
  assert.equal(archive.evict("f"), false, "evicted a file still on tape");
  assert.equal(archive.evict("plain"), false, "evicted a file on no tape");
  assert.equal(archive.evict("missing"), false);
  await post(archive, "f");
  await until(archive, "f", "disk");
  assert.equal(archive.evict("f"), true);
  assert.equal(await head(archive, "f"), "tape");
  const res = await get(archive, "f");
  assert.equal(res.status, 500);
  assert.equal(JSON.parse(res.text).message, "File is on tape: f");
  await post(archive, "f");
  await until(archive, "f", "disk");
  assert.equal((await get(archive, "f")).text, "content\n");
  const stats = archive.libraryStats();
  assert.equal(stats.evictions, 1);
  assert.equal(stats.filesRead, 2);
  // The tape was still in the idle drive: read again without a second mount.
  assert.equal(stats.mounts, 1);
});

Deno.test("the tapeMs delay still works beside the library: POST, delay, evict, recall", async () => {
  await using archive = startFakeArchive({ getOnTape: "recall" });
  archive.put("old", "old style\n", { tapeMs: 150 });
  assert.equal(await head(archive, "old"), "tape");
  assert.equal(await post(archive, "old"), 200);
  await until(archive, "old", "disk");
  assert.equal(archive.libraryStats().stageRequests, 0, "a tapeMs file went to the library");
  assert.equal(archive.evict("old"), true);
  assert.equal(await head(archive, "old"), "tape");
  const t0 = performance.now();
  assert.deepEqual(await get(archive, "old"), { status: 200, text: "old style\n" });
  assert(performance.now() - t0 >= 145, "the recalling GET did not wait for the delay");
  assert.throws(
    () => archive.put("both", "x", { tape: T("A", 0), tapeMs: 10 }),
    /has both tape and tapeMs/,
  );
});

Deno.test("put replaces a file's tape state; remove forgets its request", async () => {
  await using archive = startFakeArchive({ tapeLibrary: { mountMs: 50, readMs: 5 } });
  archive.put("x", "v1", { tape: T("A", 0) });
  assert.equal(await head(archive, "x"), "tape");
  archive.put("x", "v2");
  assert.equal(await head(archive, "x"), "disk");
  assert.equal((await get(archive, "x")).text, "v2");
  archive.put("x", "v3", { tape: T("B", 0) });
  assert.equal(await head(archive, "x"), "tape");
  archive.put("y", "y", { tape: T("B", 1) });
  await post(archive, "y");
  archive.remove("y");
  await sleep(120);
  assert.equal(archive.libraryStats().filesRead, 0, "a removed file was still read");
});

Deno.test("a library of the caller's: its placement counts, and close() leaves it running", async () => {
  const ids = Array.from({ length: 8 }, (_, i) => `p${i}`);
  const library = new TapeLibrary({
    drives: 2,
    mountMs: 40,
    readMs: 5,
    placement: layoutTapes(ids, 2),
  });
  const archive = startFakeArchive({ tapeLibrary: library });
  assert.equal(archive.library, library);
  for (const id of ids) archive.put(id, `bytes of ${id}`);
  assert.equal(await head(archive, "p0"), "tape", "put() undid the library's placement");
  await archive.close();
  for (const id of ids) library.stage(id);
  const stats = await library.whenIdle();
  assert.equal(stats.idle, true, "the fake closed a library it did not make");
  assert.equal(stats.filesRead, 8);
  assert.equal(stats.mounts, 2);
  library.close();
});

Deno.test("96 files on 4 tapes, all asked over HTTP at once: 4 mounts, the library's best time", async () => {
  const ids = Array.from({ length: 96 }, (_, i) => `f${String(i).padStart(3, "0")}`);
  const placement = layoutTapes(ids, 4, 42);
  await using archive = startFakeArchive({ tapeLibrary: { drives: 2, mountMs: 100, readMs: 5 } });
  for (const id of ids) archive.put(id, id, { tape: placement.get(id) });
  const t0 = performance.now();
  assert.deepEqual(new Set(await Promise.all(ids.map((id) => post(archive, id)))), new Set([200]));
  const stats = await archive.library.whenIdle();
  assert.equal(stats.mounts, 4);
  assert.equal(stats.filesRead, 96);
  assert.equal(stats.duplicateRequests, 0);
  const best = 2 * (100 + 24 * 5);
  const took = stats.lastDiskAt! - t0;
  assert(
    took >= best - 5 && took < best + 300,
    `last file on disk after ${took} ms (best ${best})`,
  );
  for (const id of ids.slice(0, 5)) assert.equal(await head(archive, id), "disk");
});

Deno.test("wholeGets counts the GETs whose body was sent to its end, not those cut", async () => {
  await using archive = startFakeArchive();
  // Slow chunks, so that a client that drops the body does so before its end is sent (the
  // socket's buffers would take a fast body whole).
  archive.put("w", { size: 4 << 20 }, { chunkSize: 1 << 20, chunkDelayMs: 40, cutGets: 1 });
  // The first GET is cut by the fake (a broken connection), the second read to its end, the
  // third dropped by the client after its first chunk.
  const cut = await fetch(archive.url + "w");
  await assert.rejects(() => cut.arrayBuffer());
  assert.equal(archive.wholeGets("w"), 0);
  const read = await fetch(archive.url + "w");
  assert.equal((await read.arrayBuffer()).byteLength, 4 << 20);
  assert.equal(archive.wholeGets("w"), 1);
  const dropped = await fetch(archive.url + "w");
  const reader = dropped.body!.getReader();
  await reader.read();
  await reader.cancel();
  await sleep(300);
  assert.equal(archive.counts("w").get, 3);
  assert.equal(archive.wholeGets("w"), 1);
  archive.resetCounts();
  assert.equal(archive.wholeGets("w"), 0);
});
