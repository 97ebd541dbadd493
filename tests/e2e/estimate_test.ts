/**
 * End-to-end tests of `POST /_cartd/estimate` (http/estimate.ts) against the real cartd
 * command and the fake archive: the counts and bytes by media, files staged for live carts
 * (not asked of the archive, and only with a matching hash), unknown ids, one HEAD per file at
 * bounded concurrency, the space verdict, and the bad documents that `POST /{uid}` refuses,
 * refused alike, with nothing stored.
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { listFiles, postCart, startCartd, waitFor, withCartd } from "../support/harness.ts";
import type { Estimate } from "../../http/estimate.ts";

/** POSTs `doc` (a value, or raw text) to the estimate. */
async function estimate(url: string, doc: unknown): Promise<Response> {
  return await fetch(url + "_cartd/estimate", {
    method: "POST",
    body: typeof doc === "string" ? doc : JSON.stringify(doc),
  });
}

/** The estimate of `doc`, which must answer 200 JSON. */
async function estimated(url: string, doc: unknown): Promise<Estimate> {
  const res = await estimate(url, doc);
  assert.equal(res.headers.get("content-type"), "application/json");
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  return body;
}

/** Rows of the cart tables in the volume's SQLite file. */
function storedRows(volume: string): { carts: number; files: number } {
  const db = new DatabaseSync(`${volume}/cartd.sqlite3`, { readOnly: true });
  try {
    const count = (table: string) =>
      Number(db.prepare(`SELECT COUNT(*) AS n FROM ${table}`).get()?.n);
    return { carts: count("carts"), files: count("cart_files") };
  } finally {
    db.close();
  }
}

Deno.test("estimate: media, staged files, unknown ids, one HEAD per file", async (t) => {
  await withCartd({ env: { CARTD_FILES_PER_CART: "2" } }, async ({ url, volume }, archive) => {
    await t.step(
      "files on disk, on tape and in error, and ids the archive does not know",
      async () => {
        archive.put("disk1", { size: 100 });
        archive.put("disk2", { size: 50 });
        archive.put("tape1", { size: 300 }, { tapeMs: Infinity });
        archive.put("tape2", { size: 7 }, { tape: { tape: "T1", position: 0 } });
        archive.put("broken", { size: 0 }, { error: true });
        const got = await estimated(url, {
          fileids: [
            { id: "disk1", path: "a/disk1" },
            { id: "disk1", path: "b/disk1" },
            { id: "disk2", path: "disk2" },
            { id: "tape1", path: "tape1" },
            { id: "tape2", path: "tape2" },
            { id: "broken", path: "broken" },
            { id: "nope", path: "nope" },
            { id: "a/b", path: "slash" },
          ],
        });
        assert.equal(got.files, 8);
        assert.equal(got.bytes, 100 + 100 + 50 + 300 + 7);
        assert.deepEqual(got.disk, { files: 3, bytes: 250 });
        assert.deepEqual(got.tape, { files: 2, bytes: 307 });
        assert.deepEqual(got.error, { files: 1, bytes: 0 });
        assert.deepEqual(got.staged, { files: 0, bytes: 0 });
        assert.equal(got.unknown.files, 2);
        assert.deepEqual(got.unknown.ids.map((u) => u.id), ["nope", "a/b"]);
        assert.match(got.unknown.ids[0].message, /counts as missing.*File not found/);
        assert.match(got.unknown.ids[1].message, /cannot serve an id that contains "\/"/);
        assert.equal(got.space.fits, true);
        assert.equal(got.space.needed, got.bytes);
        // One HEAD per id the archive knows (disk1 once for its two entries), nothing else.
        for (const id of ["disk1", "disk2", "tape1", "tape2", "broken", "a/b"]) {
          assert.deepEqual(archive.counts(id), { head: 1, post: 0, get: 0 }, id);
        }
        // A 500 is asked again for a few seconds (SPEC §2), then one GET reads its message.
        assert.ok(archive.counts("nope").head >= 2);
        assert.deepEqual([archive.counts("nope").post, archive.counts("nope").get], [0, 1]);
        assert.equal(archive.libraryStats().stageRequests, 0);
        assert.deepEqual(storedRows(volume), { carts: 0, files: 0 });
        assert.deepEqual(await listFiles(`${volume}/carts`), []);
      },
    );

    await t.step("HEADs go CARTD_FILES_PER_CART at a time", async () => {
      archive.resetCounts();
      const ids = ["c0", "c1", "c2", "c3", "c4", "c5"];
      for (const id of ids) archive.put(id, "x", { headDelayMs: 200 });
      const got = await estimated(url, { fileids: ids.map((id) => ({ id, path: id })) });
      assert.deepEqual(got.disk, { files: 6, bytes: 6 });
      const arrivals = ids.map((id) => archive.log(id)[0].at).sort((a, b) => a - b);
      // Two lanes: the third HEAD starts only once one of the first two has been answered.
      for (let i = 2; i < arrivals.length; i++) {
        assert.ok(arrivals[i] - arrivals[i - 2] >= 150, `HEADs ${i - 2} and ${i} overlap`);
      }
    });

    await t.step(
      "a file staged for a live cart counts as staged, unasked; only with its hash",
      async () => {
        archive.put("s1", "staged one\n");
        archive.put("s2", "staged two\n");
        const sha1 = await archive.digest("s1", "sha1");
        // With a manifest, staging measures every file's sha256 (without one it measures none).
        const res = await postCart(url, "live", {
          fileids: [
            { id: "s1", path: "s1", hashtype: "sha1", hashsum: sha1 },
            { id: "s2", path: "s2" },
          ],
          manifest: true,
        });
        assert.equal(res.status, 201);
        await res.body?.cancel();
        assert.equal((await waitFor(url, "live", "ready"))[1], "ready");
        archive.resetCounts();
        const rowsBefore = storedRows(volume);
        const doc = {
          fileids: [
            // The cart checked sha1; its measured sha256 serves a sha256 too.
            {
              id: "s1",
              path: "x/s1",
              hashtype: "sha256",
              hashsum: await archive.digest("s1", "sha256"),
            },
            { id: "s1", path: "y/s1", hashtype: "sha1", hashsum: sha1.toUpperCase() },
            { id: "s2", path: "x/s2" },
            // A hash the staged copy was never checked against does not count it as staged.
            { id: "s2", path: "y/s2", hashtype: "md5", hashsum: "0".repeat(32) },
          ],
        };
        const got = await estimated(url, doc);
        assert.deepEqual(got.staged, { files: 3, bytes: 11 * 3 });
        assert.deepEqual(got.disk, { files: 1, bytes: 11 });
        assert.deepEqual(archive.counts("s1"), { head: 0, post: 0, get: 0 });
        assert.deepEqual(archive.counts("s2"), { head: 1, post: 0, get: 0 });
        assert.deepEqual(storedRows(volume), rowsBefore);

        // Once the cart is deleted, its files are no one's: the archive is asked again.
        const deleted = await fetch(url + "live", { method: "DELETE" });
        assert.equal(deleted.status, 200);
        await deleted.body?.cancel();
        const after = await estimated(url, doc);
        assert.deepEqual(after.staged, { files: 0, bytes: 0 });
        assert.deepEqual(after.disk, { files: 4, bytes: 44 });
        assert.equal(archive.counts("s1").head, 1);
      },
    );
  });
});

Deno.test("estimate: bad documents answer as POST does, and space says whether it fits", async (t) => {
  const env = { CARTD_VOLUME_SIZE: "10000", CARTD_MAX_BODY: "2048" };
  await withCartd({ env }, async ({ url, volume }, archive) => {
    await t.step("400 and 413 as POST /{uid} answers them, nothing stored", async () => {
      const bad = [
        "not json",
        "",
        "{}",
        { fileids: [] },
        { fileids: [{ id: "a", path: "../a" }] },
        { fileids: [{ id: "a", path: "a", hashtype: "sha1" }] },
        { fileids: [{ id: "a", path: "a" }, { id: "b", path: "a" }] },
        JSON.stringify({ fileids: [{ id: "a", path: "p".repeat(3000) }] }),
      ];
      const before = storedRows(volume);
      for (const doc of bad) {
        const posted = await postCart(url, "cart", doc);
        const asked = await estimate(url, doc);
        assert.ok(posted.status === 400 || posted.status === 413, String(posted.status));
        assert.equal(asked.status, posted.status, JSON.stringify(doc).slice(0, 80));
        assert.equal(asked.headers.get("content-type"), "application/json");
        assert.deepEqual(await asked.json(), await posted.json());
      }
      assert.deepEqual(storedRows(volume), before);
      assert.deepEqual(before, { carts: 0, files: 0 });
      assert.equal(archive.totals().head, 0);
      // Only POST is served there.
      const get = await fetch(url + "_cartd/estimate");
      assert.equal(get.status, 404);
      await get.body?.cancel();
    });

    await t.step(
      "a cart larger than CARTD_VOLUME_SIZE does not fit, and says by how much",
      async () => {
        archive.put("big", { size: 25_000 });
        archive.put("small", { size: 1_000 });
        const big = await estimated(url, { fileids: [{ id: "big", path: "big" }] });
        assert.equal(big.space.fits, false);
        assert.equal(big.space.fitsAfterPurge, false);
        assert.equal(big.space.volumeSize, 10_000);
        assert.equal(big.space.needed, 25_000);
        assert.equal(big.space.short, 15_000);
        const small = await estimated(url, { fileids: [{ id: "small", path: "small" }] });
        assert.equal(small.space.fits, true);
        assert.equal(small.space.short, 0);
        // A "bundle": true cart also needs room for its tar.
        const bundled = await estimated(url, {
          fileids: [{ id: "small", path: "s" }],
          bundle: true,
        });
        assert.ok(bundled.space.needed > 1_000 + 1_024, String(bundled.space.needed));
        assert.deepEqual(storedRows(volume), { carts: 0, files: 0 });
      },
    );
  });
});

Deno.test("estimate: an archive that cannot be reached answers 502, naming it", async () => {
  // A port that was free a moment ago: nothing answers there.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: `http://127.0.0.1:${port}/` },
  });
  const res = await estimate(cartd.url, { fileids: [{ id: "a", path: "a" }] });
  const body = await res.json();
  assert.equal(res.status, 502, JSON.stringify(body));
  assert.match(body.message, /archive at http:\/\/127.0.0.1:\d+\/ could not be reached/);
});
