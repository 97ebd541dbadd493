/**
 * One archive file: one recall and one fetch for every cart that needs it (issue 14 item 2),
 * against a real cartd and the fake archive: bytes stored once (hard links), counted once,
 * reused without an archive request by the hash rule, kept while another live cart holds
 * them (delete, LRU purge), and a crash in the middle of a shared fetch.
 *
 * @module
 */
import assert from "node:assert/strict";
import { openSqlite } from "../../lib/db/sqlite.ts";
import { startFakeArchive } from "../support/fake_archive.ts";
import { eventually } from "../support/eventually.ts";
import { cartStatus, postCart, startCartd, waitFor, withCartd } from "../support/harness.ts";

const KiB = 1024;

type FileRow = { idx: number; archive_id: string; counted: number; content_key: string | null };

/** Reads cartd's SQLite database on `volume` (cartd may be running: WAL). */
async function query<T>(volume: string, sql: string, params: (string | number)[] = []) {
  const db = openSqlite(`${volume}/cartd.sqlite3`);
  try {
    return await db.all(sql, params) as T[];
  } finally {
    await db.close();
  }
}

/** The live cart of `uid`: its id and reservation. */
async function cartRow(volume: string, uid: string) {
  const [row] = await query<{ id: string; reserved_bytes: number }>(
    volume,
    "SELECT id, reserved_bytes FROM carts WHERE live_uid = ?",
    [uid],
  );
  assert.ok(row, `cart ${uid} is live`);
  return { id: String(row.id), reserved: Number(row.reserved_bytes) };
}

/** Where archive file `archiveId` of cart `uid` is staged, and its row. */
async function fileOf(volume: string, uid: string, archiveId: string) {
  const { id } = await cartRow(volume, uid);
  const [row] = await query<FileRow>(
    volume,
    "SELECT idx, archive_id, counted, content_key FROM cart_files WHERE cart_id = ? AND archive_id = ?",
    [id, archiveId],
  );
  return { path: `${volume}/carts/${id}/files/${row.idx}`, row };
}

/** The sum of the reservations of the live carts. */
async function reservedSum(volume: string): Promise<number> {
  const [row] = await query<{ n: number }>(
    volume,
    "SELECT COALESCE(SUM(reserved_bytes), 0) AS n FROM carts WHERE live_uid IS NOT NULL",
  );
  return Number(row.n);
}

function docOf(ids: string[], hashes: Record<string, { hashtype: string; hashsum: string }> = {}) {
  return { fileids: ids.map((id) => ({ id, path: `data/${id}.bin`, ...hashes[id] })) };
}

async function readyCart(url: string, uid: string, doc: unknown, timeoutMs = 30_000) {
  const res = await postCart(url, uid, doc);
  assert.equal(res.status, 201, await res.text());
  const status = await waitFor(url, uid, "ready", timeoutMs);
  assert.equal(status[1], "ready", `cart ${uid}: ${status.join(" ")}`);
}

Deno.test("two carts posted together share each common file's recall and fetch; its bytes are stored and counted once", async () => {
  await using archive = startFakeArchive();
  const ids = Array.from({ length: 30 }, (_, i) => `f${i}`);
  ids.forEach((id, i) => archive.put(id, { size: (4 + i) * KiB }, { tapeMs: 300 }));
  const a = ids.slice(0, 20), b = ids.slice(10, 30), common = ids.slice(10, 20);
  await withCartd({ archive }, async ({ url, volume }) => {
    const posts = await Promise.all([postCart(url, "a", docOf(a)), postCart(url, "b", docOf(b))]);
    for (const res of posts) assert.equal(res.status, 201, await res.text());
    for (const uid of ["a", "b"]) {
      assert.equal((await waitFor(url, uid, "ready", 30_000))[1], "ready");
    }
    for (const id of common) {
      const n = archive.counts(id);
      assert.equal(n.get, 1, `${id} fetched once for both carts`);
      assert.equal(n.post, 1, `${id} recalled once (one stage request)`);
      const [inA, inB] = [await fileOf(volume, "a", id), await fileOf(volume, "b", id)];
      const [sa, sb] = [await Deno.stat(inA.path), await Deno.stat(inB.path)];
      assert.equal(sa.ino, sb.ino, `${id}: one inode in both folders`);
      assert.equal(sa.nlink, 2);
      assert.deepEqual(await Deno.readFile(inB.path), await archive.bytes(id));
      assert.equal(inA.row.counted + inB.row.counted, 1, `${id} counted by one cart`);
      assert.equal(inA.row.content_key, inB.row.content_key);
    }
    const distinct = ids.reduce((n, id) => n + archive.size(id), 0);
    assert.equal(await reservedSum(volume), distinct, "the reservations count each file once");
  });
});

Deno.test("a file staged for a live cart is reused with no archive request, by the hash rule only", async () => {
  await using archive = startFakeArchive();
  archive.put("x", { size: 8 * KiB });
  archive.put("y", { size: 9 * KiB });
  await withCartd({ archive }, async ({ url, volume }) => {
    const md5y = await archive.digest("y", "md5");
    await readyCart(url, "first", docOf(["x", "y"], { y: { hashtype: "md5", hashsum: md5y } }));
    archive.resetCounts();
    const sha256x = await archive.digest("x", "sha256");
    const sha1x = await archive.digest("x", "sha1");
    // x by its SHA-256 (measured at staging), y by the md5 the first cart had verified.
    await readyCart(
      url,
      "same-hashes",
      docOf(["x", "y"], {
        x: { hashtype: "sha256", hashsum: sha256x },
        y: { hashtype: "md5", hashsum: md5y },
      }),
    );
    // x by a hash type nobody asked for: the link is hashed here, still no archive request.
    await readyCart(url, "other-type", docOf(["x"], { x: { hashtype: "sha1", hashsum: sha1x } }));
    for (const id of ["x", "y"]) {
      assert.deepEqual(archive.counts(id), { head: 0, post: 0, get: 0 }, `${id}: no request`);
    }
    const first = await Deno.stat((await fileOf(volume, "first", "x")).path);
    assert.equal(first.nlink, 3, "x stored once for the three carts");
    // A hashsum the stored bytes do not match: never reused; this cart fetches its own copy
    // (and fails on it, as the archive's bytes do not match either).
    const res = await postCart(
      url,
      "wrong",
      docOf(["y"], { y: { hashtype: "md5", hashsum: "0".repeat(32) } }),
    );
    assert.equal(res.status, 201);
    const status = await waitFor(url, "wrong", "error", 30_000);
    assert.equal(status[1], "error", status.join(" "));
    assert.ok(archive.counts("y").get >= 1, "the archive was asked for its own copy");
    assert.equal((await Deno.stat((await fileOf(volume, "first", "y")).path)).nlink, 2);
    const distinct = archive.size("x") + archive.size("y");
    assert.equal(await reservedSum(volume), distinct, "shared bytes counted once");
  });
});

Deno.test("deleting or purging one cart keeps the bytes another live cart uses, and hands their count over", async () => {
  await using archive = startFakeArchive();
  archive.put("x", { size: 40 * KiB });
  archive.put("y", { size: 30 * KiB });
  archive.put("z", { size: 30 * KiB });
  archive.put("w", { size: 60 * KiB });
  archive.put("v", { size: 10 * KiB });
  const env = { CARTD_VOLUME_SIZE: String(150 * KiB), LRU_BUFFER_TIME: "0" };
  await withCartd({ archive, env }, async (cartd) => {
    const { url, volume } = cartd;
    await readyCart(url, "a", docOf(["x", "y"]));
    await readyCart(url, "b", docOf(["x", "z"]));
    assert.equal((await cartRow(volume, "b")).reserved, 30 * KiB, "b counts z only: x is a's");
    assert.equal(await reservedSum(volume), 100 * KiB);
    await cartStatus(url, "b"); // b was used last: a goes first
    // c needs 60 KiB; 160 > 150: the LRU purge removes a, which frees y (30 KiB) and not x.
    await readyCart(url, "c", docOf(["w"]));
    assert.equal((await cartStatus(url, "a"))[0], 404, "a was purged");
    const bx = await fileOf(volume, "b", "x");
    assert.deepEqual(await Deno.readFile(bx.path), await archive.bytes("x"), "b's x is whole");
    assert.equal(bx.row.counted, 1, "b counts x now");
    assert.equal((await cartRow(volume, "b")).reserved, 70 * KiB);
    assert.equal(await reservedSum(volume), 130 * KiB, "x, z and w, each once");
    await eventually(
      "the purge's log line",
      () => /LRU purge: removing a cart.*uid=a.*frees=30720.*kept=40960/.test(cartd.output()),
    );
    // Delete: d shares v with e; deleting d leaves e's v, counted by e.
    await readyCart(url, "d", docOf(["v"]));
    await readyCart(url, "e", docOf(["v"]));
    const del = await fetch(url + "d", { method: "DELETE" });
    await del.body?.cancel();
    assert.equal(del.status, 200);
    const ev = await fileOf(volume, "e", "v");
    assert.deepEqual(await Deno.readFile(ev.path), await archive.bytes("v"));
    assert.equal(ev.row.counted, 1);
    assert.equal((await cartRow(volume, "e")).reserved, 10 * KiB);
    const got = await fetch(url + "e");
    assert.equal(got.status, 200);
    assert.ok((await got.arrayBuffer()).byteLength > 10 * KiB, "e still downloads");
  });
});

Deno.test("a crash in the middle of a shared fetch loses nothing and counts nothing twice", async () => {
  await using archive = startFakeArchive();
  // x is slow to download: 16 chunks of 16 KiB, 100 ms apart.
  archive.put("x", { size: 256 * KiB }, { chunkSize: 16 * KiB, chunkDelayMs: 100 });
  archive.put("p", { size: 5 * KiB });
  archive.put("q", { size: 6 * KiB });
  const volume = await Deno.makeTempDir({ prefix: "cartd-test-" });
  const env = { ARCHIVE_INTERFACE_URL: archive.url };
  try {
    const first = await startCartd({ env, volume });
    const posts = await Promise.all([
      postCart(first.url, "a", docOf(["p", "x"])),
      postCart(first.url, "b", docOf(["x", "q"])),
    ]);
    for (const res of posts) assert.equal(res.status, 201, await res.text());
    await eventually("x's download is under way", () => archive.counts("x").get === 1);
    await new Promise((r) => setTimeout(r, 300));
    await first.kill();
    await using second = await startCartd({ env, volume });
    for (const uid of ["a", "b"]) {
      const status = await waitFor(second.url, uid, "ready", 30_000);
      assert.equal(status[1], "ready", `${uid}: ${status.join(" ")}\n${second.output()}`);
    }
    assert.equal(archive.counts("x").get, 2, "x fetched once more after the crash, not twice");
    const [xa, xb] = [await fileOf(volume, "a", "x"), await fileOf(volume, "b", "x")];
    assert.equal((await Deno.stat(xa.path)).ino, (await Deno.stat(xb.path)).ino, "stored once");
    assert.deepEqual(await Deno.readFile(xb.path), await archive.bytes("x"));
    assert.equal(xa.row.counted + xb.row.counted, 1, "counted once");
    const distinct = ["x", "p", "q"].reduce((n, id) => n + archive.size(id), 0);
    assert.equal(await reservedSum(volume), distinct);
  } finally {
    await Deno.remove(volume, { recursive: true }).catch(() => {});
  }
});
