/**
 * Tape-first staging against a real cartd and the fake archive's tape library (issue 14,
 * item 1): every stage request at once under `CARTD_RECALLS_MAX`, each tape mounted once, a
 * disk cart never behind tape carts, the HEAD ceiling, a file pushed back to tape, and an
 * archive that answers 500 in bursts.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type FakeArchive, startFakeArchive } from "../support/fake_archive.ts";
import { cartStatus, postCart, waitFor, withCartd } from "../support/harness.ts";

/** A cart document of `ids`, listed in the order given. */
function cartOf(ids: string[]) {
  return { fileids: ids.map((id) => ({ id, path: `data/${id}.txt` })) };
}

/** POSTs a cart and waits until it is ready (or fails the test with its status). */
async function ready(url: string, uid: string, ids: string[], timeoutMs = 30_000) {
  const res = await postCart(url, uid, cartOf(ids));
  assert.equal(res.status, 201, await res.text());
  const status = await waitFor(url, uid, "ready", timeoutMs);
  assert.equal(status[1], "ready", `cart ${uid}: ${status.join(" ")}`);
}

/** The most intervals of `spans` ([start, end]) open at any one moment. */
function mostOverlapping(spans: [number, number][]): number {
  const edges = spans.flatMap(([a, b]) => [[a, 1], [b, -1]] as const)
    .sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let open = 0, most = 0;
  for (const [, d] of edges) most = Math.max(most, open += d);
  return most;
}

/** The first request of `method` in the fake's log of `id` at or after `after`. */
function firstAt(archive: FakeArchive, id: string, method: string, after = -Infinity): number {
  const at = archive.log(id).find((r) => r.method === method && r.at >= after)?.at;
  assert.ok(at !== undefined, `${id}: no ${method} at or after ${after}`);
  return at;
}

Deno.test("every tape file's stage request goes out at once; CARTD_RECALLS_MAX caps those outstanding", async () => {
  await using archive = startFakeArchive();
  const ids = Array.from({ length: 40 }, (_, i) => `t${i}`);
  for (const id of ids) archive.put(id, `bytes of ${id}\n`, { tapeMs: 400 });
  await withCartd({ archive }, async ({ url }) => {
    await ready(url, "all-at-once", ids);
    const posts = ids.map((id) => firstAt(archive, id, "POST"));
    const spread = Math.max(...posts) - Math.min(...posts);
    assert.ok(spread < 1000, `the 40 stage requests went out within ${spread.toFixed(0)} ms`);
  });

  // With a cap of 4: a recall is outstanding from its first POST until the HEAD that found it
  // on disk (what the fake sees lies inside what cartd counts), never more than 4 at once.
  archive.resetCounts();
  const capped = Array.from({ length: 16 }, (_, i) => `c${i}`);
  for (const id of capped) archive.put(id, `bytes of ${id}\n`, { tapeMs: 200 });
  await withCartd({ archive, env: { CARTD_RECALLS_MAX: "4" } }, async ({ url }) => {
    await ready(url, "capped", capped);
    const spans = capped.map((id): [number, number] => {
      const post = firstAt(archive, id, "POST");
      return [post, firstAt(archive, id, "HEAD", post + 200)];
    });
    assert.equal(mostOverlapping(spans), 4, "4 recalls outstanding at most, and the cap is used");
  });
});

Deno.test("96 files on 4 tapes and 2 drives, listed out of tape order: each tape is mounted once", async () => {
  await using archive = startFakeArchive({
    tapeLibrary: { drives: 2, mountMs: 300, readMs: 5 },
  });
  const ids = Array.from({ length: 96 }, (_, i) => `f${String(i).padStart(2, "0")}`);
  // File i is on tape i % 4 at a position unrelated to its place in the cart.
  ids.forEach((id, i) =>
    archive.put(id, `bytes of ${id}\n`, {
      tape: { tape: `T${i % 4}`, position: (i * 37) % 96 },
    })
  );
  await withCartd({ archive }, async ({ url }) => {
    await ready(url, "library", ids);
    const stats = archive.libraryStats();
    assert.equal(stats.mounts, 4, `mounts by tape: ${JSON.stringify(stats.mountsByTape)}`);
    assert.equal(stats.filesRead, 96);
  });
});

Deno.test("a cart on disk posted while two tape carts wait is ready at once, even with CARTD_CARTS_IN_FLIGHT=2", async () => {
  await using archive = startFakeArchive();
  const tape = (c: string) => Array.from({ length: 20 }, (_, i) => `${c}${i}`);
  for (const id of [...tape("a"), ...tape("b")]) archive.put(id, "slow\n", { tapeMs: 20_000 });
  const disk = Array.from({ length: 10 }, (_, i) => `d${i}`);
  for (const id of disk) archive.put(id, `bytes of ${id}\n`);
  await withCartd({ archive, env: { CARTD_CARTS_IN_FLIGHT: "2" } }, async ({ url }) => {
    for (const c of ["a", "b"]) {
      assert.equal((await postCart(url, `tape-${c}`, cartOf(tape(c)))).status, 201);
    }
    // Both tape carts are recalling (every one of their files asked for).
    const deadline = Date.now() + 10_000;
    while ([...tape("a"), ...tape("b")].some((id) => archive.counts(id).post === 0)) {
      assert.ok(Date.now() < deadline, "the tape carts' stage requests went out");
      await new Promise((r) => setTimeout(r, 25));
    }
    const started = performance.now();
    await ready(url, "on-disk", disk, 10_000);
    const ms = performance.now() - started;
    assert.ok(ms < 3000, `the disk cart was ready after ${ms.toFixed(0)} ms (tape: 20 s)`);
    assert.equal((await cartStatus(url, "tape-a"))[1], "staging");
    for (const c of ["a", "b"]) {
      await fetch(url + `tape-${c}`, { method: "DELETE" }).then((r) => r.body?.cancel());
    }
  });
});

Deno.test("CARTD_HEADS_PER_SECOND bounds the archive HEADs that poll recalls", async () => {
  await using archive = startFakeArchive();
  const ids = Array.from({ length: 60 }, (_, i) => `h${i}`);
  for (const id of ids) archive.put(id, `bytes of ${id}\n`, { tapeMs: 3000 });
  await withCartd({ archive, env: { CARTD_HEADS_PER_SECOND: "20" } }, async ({ url }) => {
    await ready(url, "ceiling", ids);
    // The polls: each file's HEADs but its first, its size HEAD (before its stage request, or
    // after one sent ahead of it; the first size HEADs, sent before any recall is outstanding,
    // go at the pace of their concurrency only).
    const polls = ids.flatMap((id) =>
      archive.log(id).filter((r) => r.method === "HEAD").slice(1).map((r) => r.at)
    ).sort((a, b) => a - b);
    let most = 0;
    for (let i = 0, j = 0; i < polls.length; i++) {
      while (polls[i] - polls[j] >= 1000) j++;
      most = Math.max(most, i - j + 1);
    }
    // One more than the ceiling is arrival jitter: cartd starts at most 20 in any second.
    assert.ok(most <= 21, `${most} HEADs arrived within one second (ceiling 20)`);
    assert.ok(polls.length >= 60, `${polls.length} polls`);
  });
});

Deno.test("the HEAD ceiling binding, a cart found on tape has every stage request sent ahead of its HEADs; a cart on disk sends none", async () => {
  await using archive = startFakeArchive();
  const tape = Array.from({ length: 40 }, (_, i) => `a${i}`);
  const disk = Array.from({ length: 20 }, (_, i) => `d${i}`);
  for (const id of tape) archive.put(id, `bytes of ${id}\n`, { tapeMs: 300 });
  for (const id of disk) archive.put(id, `bytes of ${id}\n`);
  await withCartd({ archive, env: { CARTD_HEADS_PER_SECOND: "20" } }, async ({ url }) => {
    await ready(url, "disk", disk);
    assert.equal(disk.reduce((n, id) => n + archive.counts(id).post, 0), 0);
    await ready(url, "ahead", tape);
    // 40 size HEADs at 20 a second take two seconds; the stage requests go once the first
    // HEAD has said `tape`. Ordered by the fake's log, not timed.
    const ahead = tape.filter((id) => {
      const log = archive.log(id);
      return log.findIndex((r) => r.method === "POST") < log.findIndex((r) => r.method === "HEAD");
    });
    assert.ok(ahead.length >= 30, `${ahead.length} of 40 stage requests before their HEAD`);
    for (const id of tape) assert.equal(archive.counts(id).post, 1, `${id}: one stage request`);
  });
});

Deno.test("a file pushed back to tape before its download is recalled again, and the cart is ready", async () => {
  await using archive = startFakeArchive(); // a GET of a file on tape answers 500
  // One fetch at a time: the slow file holds it while the tape file comes to disk and waits.
  archive.put("slow", { size: 1 << 20 }, { chunkSize: 64 << 10, chunkDelayMs: 150 });
  archive.put("pushed", "recalled twice\n", { tapeMs: 300 });
  await withCartd({ archive, env: { CARTD_FILES_PER_CART: "1" } }, async ({ url }) => {
    assert.equal((await postCart(url, "pushed-back", cartOf(["slow", "pushed"]))).status, 201);
    const deadline = Date.now() + 10_000;
    // On disk, and seen so by cartd (a HEAD after the 300 ms), while "slow" still downloads.
    while (archive.log("pushed").filter((r) => r.method === "HEAD").length < 3) {
      assert.ok(Date.now() < deadline, "cartd polled the recall");
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(archive.counts("pushed").get, 0, "not fetched yet");
    assert.ok(archive.evict("pushed"), "the archive pushed the file back to tape");
    const status = await waitFor(url, "pushed-back", "ready", 20_000);
    assert.equal(status[1], "ready", status.join(" "));
    const asked = archive.counts("pushed");
    assert.ok(asked.post >= 2, `recalled again (${asked.post} stage requests)`);
    assert.equal(asked.get, 2, "one GET found it on tape, the next fetched it");
  });
});

Deno.test("an archive answering 500 to stage requests and HEADs in bursts is asked again; one that keeps failing fails the cart naming the file", async () => {
  await using archive = startFakeArchive();
  // A burst: the first HEADs answer 500 (size and polls), stage requests 500 for a while.
  archive.put("bursty", "made it\n", { tapeMs: 300, failHeads: 4, postStatus: 500 });
  archive.put("never", "unreachable\n", { tapeMs: Infinity, postStatus: 500 });
  await withCartd({ archive, env: { CARTD_MISSING_AFTER: "2" } }, async ({ url }) => {
    assert.equal((await postCart(url, "bursts", cartOf(["bursty"]))).status, 201);
    await new Promise((r) => setTimeout(r, 1000));
    assert.ok(archive.counts("bursty").post >= 2, "the failed stage request was sent again");
    archive.put("bursty", "made it\n", { tapeMs: 300 }); // the archive is well again
    const ok = await waitFor(url, "bursts", "ready", 20_000);
    assert.equal(ok[1], "ready", ok.join(" "));

    const started = performance.now();
    assert.equal((await postCart(url, "failing", cartOf(["never"]))).status, 201);
    const failed = await waitFor(url, "failing", "error", 20_000);
    const ms = performance.now() - started;
    assert.equal(failed[1], "error");
    assert.match(failed[2], /fileids\[0\] \(id never\)/, failed[2]);
    assert.match(failed[2], /counts as missing/, failed[2]);
    assert.ok(ms >= 1900, `failed after ${ms.toFixed(0)} ms, not before CARTD_MISSING_AFTER`);
  });
});
