/**
 * A cart's progress against a real cartd and the fake archive (issue 16 item 1): the HEAD
 * progress headers, `GET /{uid}/status`, `GET /{uid}/files` paging, `Retry-After` on the
 * 202, 400s and 404s; Pacifica's HEAD answers stay as they were. And `CARTD_LOG_FORMAT=json`
 * (item 5): every log line is one JSON object.
 *
 * @module
 */
import assert from "node:assert/strict";
import { startFakeArchive } from "../support/fake_archive.ts";
import { postCart, waitFor, withCartd } from "../support/harness.ts";
import { eventually } from "../support/eventually.ts";

/** A cart document of `ids`. */
function cartOf(ids: string[]) {
  return { fileids: ids.map((id) => ({ id, path: `data/${id}.txt` })) };
}

/** HEAD of a cart: the status code and the headers. */
async function head(url: string, uid: string): Promise<[number, Headers]> {
  const res = await fetch(url + encodeURIComponent(uid), { method: "HEAD" });
  await res.body?.cancel();
  return [res.status, res.headers];
}

/** GET of `path` under the API as JSON: the status code and the body. */
async function getJson(url: string, path: string): Promise<[number, Record<string, unknown>]> {
  const res = await fetch(url + path);
  assert.equal(res.headers.get("content-type"), "application/json", path);
  return [res.status, await res.json()];
}

/** The status JSON, as the test reads it. */
interface Status {
  uid: string;
  state: string;
  message: string;
  times: Record<string, string | null>;
  files: Record<string, number>;
  bytes: { total: number | null; staged: number };
  eta: { seconds: number; at: string; basis: string; perSecond: number } | null;
  retention: { expiresAt: string | null };
  purge: { enabled: boolean; eligible: boolean; eligibleAt: string | null };
  download: { size: number; etag: string } | null;
}

Deno.test("progress moves from 0/N to N/N in HEAD and the status JSON, with an ETA and Retry-After", async () => {
  await using archive = startFakeArchive();
  archive.put("big1", "x".repeat(4000));
  archive.put("big2", "y".repeat(4000));
  archive.put("slow", "z".repeat(40), { tapeMs: 6000 });
  await withCartd(
    { archive, env: { CARTD_RETENTION: "3600", LRU_BUFFER_TIME: "60" } },
    async (c) => {
      const posted = await postCart(c.url, "prog", cartOf(["big1", "big2", "slow"]));
      assert.equal(posted.status, 201);
      // At once: nothing staged yet (the counters start at 0 with the cart).
      const [code, first] = await head(c.url, "prog");
      assert.equal(code, 204);
      assert.equal(first.get("x-pacifica-status"), "staging");
      assert.match(first.get("x-cartd-files")!, /^[0-2]\/3$/);
      assert.match(first.get("x-cartd-bytes")!, /^\d+\/(\*|8040)$/);

      // The disk files staged, the tape file not: 2/3, and an estimate after 2 s of staging.
      let status!: Status;
      let seen = "";
      await eventually("two files of three are staged, with an estimate", async () => {
        const [, h] = await head(c.url, "prog");
        const [s, body] = await getJson(c.url, "prog/status");
        assert.equal(s, 200);
        status = body as unknown as Status;
        seen = `${h.get("x-cartd-files")} ${h.get("x-cartd-bytes")} ${JSON.stringify(status)}`;
        return h.get("x-cartd-files") === "2/3" && h.get("x-cartd-bytes") === "8000/8040" &&
          status.eta !== null;
      }, 5000).catch((e) => {
        throw new Error(`${e.message}; last seen: ${seen}`);
      });
      assert.equal(status.uid, "prog");
      assert.equal(status.state, "staging");
      assert.deepEqual(status.files, { total: 3, pending: 1, staged: 2, error: 0 });
      assert.deepEqual(status.bytes, { total: 8040, staged: 8000 });
      assert.equal(status.eta!.basis, "bytes");
      assert.ok(status.eta!.seconds >= 0 && status.eta!.perSecond > 0, JSON.stringify(status.eta));
      assert.ok(status.times.created && status.times.stagingBegan, JSON.stringify(status.times));
      assert.equal(status.times.ready, null);
      assert.equal(status.download, null);
      assert.equal(status.retention.expiresAt, null);

      // GET keeps its 202 and text, and says when to come back.
      const res = await fetch(c.url + "prog");
      assert.equal(res.status, 202);
      assert.equal(await res.text(), "The cart is not ready for download.");
      const retry = Number(res.headers.get("retry-after"));
      assert.ok(Number.isInteger(retry) && retry >= 1 && retry <= 60, `Retry-After ${retry}`);

      // Ready: N/N, the download's facts, retention and purge times.
      assert.equal((await waitFor(c.url, "prog", "ready", 20_000))[1], "ready");
      const [, done] = await head(c.url, "prog");
      assert.equal(done.get("x-cartd-files"), "3/3");
      assert.equal(done.get("x-cartd-bytes"), "8040/8040");
      const [, readyBody] = await getJson(c.url, "prog/status");
      const ready = readyBody as unknown as Status;
      assert.equal(ready.state, "ready");
      assert.deepEqual(ready.files, { total: 3, pending: 0, staged: 3, error: 0 });
      assert.equal(ready.eta, null);
      const readyAt = Date.parse(ready.times.ready!);
      assert.equal(Date.parse(ready.retention.expiresAt!), readyAt + 3600_000);
      assert.equal(ready.purge.enabled, true);
      assert.equal(ready.purge.eligible, false, "used within LRU_BUFFER_TIME");
      assert.equal(
        Date.parse(ready.purge.eligibleAt!),
        Date.parse(ready.times.lastUsed!) + 60_000,
      );
      const download = await fetch(c.url + "prog");
      assert.equal(download.status, 200);
      assert.deepEqual(ready.download, {
        size: Number(download.headers.get("content-length")),
        etag: download.headers.get("etag"),
      });
      await download.body?.cancel();
    },
  );
});

Deno.test("GET /{uid}/files pages through 300 files: each once, in order; bad parameters are 400s", async () => {
  await using archive = startFakeArchive();
  const ids = Array.from({ length: 300 }, (_, i) => `f${i}`);
  for (const id of ids) archive.put(id, `bytes of ${id}\n`);
  // File 7 is not what the document's digest says: it fails the cart, and says why.
  const doc = cartOf(ids);
  Object.assign(doc.fileids[7], { hashtype: "sha1", hashsum: "0".repeat(40) });
  await withCartd({ archive }, async (c) => {
    assert.equal((await postCart(c.url, "many", doc)).status, 201);
    const final = await waitFor(c.url, "many", "error", 30_000);
    assert.equal(final[1], "error", final.join(" "));

    for (const limit of [7, 64, 1000]) {
      const seen: number[] = [];
      let after: number | null = -1;
      for (let pages = 0; after !== null; pages++) {
        assert.ok(pages <= 300);
        const query = after < 0 ? `limit=${limit}` : `after=${after}&limit=${limit}`;
        const [code, page] = await getJson(c.url, `many/files?${query}`);
        assert.equal(code, 200, JSON.stringify(page));
        const files = page.files as { idx: number; id: string; path: string; state: string }[];
        assert.ok(files.length <= limit);
        for (const f of files) {
          assert.equal(f.id, ids[f.idx]);
          assert.equal(f.path, `data/${ids[f.idx]}.txt`);
        }
        seen.push(...files.map((f) => f.idx));
        after = page.next as number | null;
      }
      assert.deepEqual(seen, ids.map((_, i) => i), `limit ${limit}`);
    }
    // The default page is 100 files; the failed file says what went wrong.
    const [, page] = await getJson(c.url, "many/files");
    const files = page.files as { idx: number; state: string; error: string | null }[];
    assert.equal(files.length, 100);
    assert.equal(page.next, 99);
    assert.equal(files[7].state, "error");
    assert.ok(files[7].error, "the failed file's error");
    const [, summary] = await getJson(c.url, "many/status");
    assert.equal((summary as unknown as Status).state, "error");
    assert.equal((summary as unknown as Status).files.error, 1);

    for (
      const [query, name] of [
        ["after=-1", "after"],
        ["after=x", "after"],
        ["after=1.5", "after"],
        ["limit=0", "limit"],
        ["limit=1001", "limit"],
        ["limit=", "limit"],
        ["after=3&limit=ten", "limit"],
      ]
    ) {
      const [code, body] = await getJson(c.url, `many/files?${query}`);
      assert.equal(code, 400, query);
      assert.match(String(body.message), new RegExp(`^${name} must be a whole number`), query);
    }
  });
});

Deno.test("unknown and deleted carts: 404 JSON on the new routes; Pacifica's HEAD answers unchanged", async () => {
  await using archive = startFakeArchive();
  archive.put("a", "hello\n");
  await withCartd({ archive }, async (c) => {
    for (const path of ["nobody/status", "nobody/files", "nobody/files?limit=5"]) {
      const [code, body] = await getJson(c.url, path);
      assert.equal(code, 404, path);
      assert.equal(body.message, "The cart does not exist or has already been deleted");
    }
    const [missing, missingHeaders] = await head(c.url, "nobody");
    assert.equal(missing, 404);
    assert.equal(missingHeaders.get("x-pacifica-status"), "error");
    assert.equal(missingHeaders.get("x-pacifica-message"), "No cart with uid nobody found");

    assert.equal((await postCart(c.url, "gone", cartOf(["a"]))).status, 201);
    assert.equal((await waitFor(c.url, "gone", "ready"))[1], "ready");
    const [readyCode, readyHeaders] = await head(c.url, "gone");
    assert.equal(readyCode, 204);
    assert.equal(readyHeaders.get("x-pacifica-status"), "ready");
    assert.equal(readyHeaders.get("x-pacifica-message"), "");
    assert.equal(readyHeaders.get("x-cartd-state"), "ready");
    const deleted = await fetch(c.url + "gone", { method: "DELETE" });
    assert.equal(deleted.status, 200);
    await deleted.body?.cancel();
    for (const path of ["gone/status", "gone/files"]) {
      assert.equal((await getJson(c.url, path))[0], 404, path);
    }

    // A failed cart: HEAD 500 with Pacifica's words, the progress headers beside them.
    archive.put("broken", "x", { error: true, message: "tape library offline" });
    assert.equal((await postCart(c.url, "bad", cartOf(["a", "broken"]))).status, 201);
    assert.equal((await waitFor(c.url, "bad", "error"))[1], "error");
    const [failed, failedHeaders] = await head(c.url, "bad");
    assert.equal(failed, 500);
    assert.equal(failedHeaders.get("x-pacifica-status"), "error");
    assert.ok(failedHeaders.get("x-pacifica-message"));
    assert.match(failedHeaders.get("x-cartd-files")!, /^[01]\/2$/);
  });
});

Deno.test("CARTD_LOG_FORMAT=json: every log line is one JSON object; a cart's lines carry its uid and id", async () => {
  await using archive = startFakeArchive();
  archive.put("a", "hello\n");
  await withCartd({ archive, env: { CARTD_LOG_FORMAT: "json" } }, async (c) => {
    assert.equal((await postCart(c.url, "logged\nuid", cartOf(["a"]))).status, 201);
    assert.equal((await waitFor(c.url, "logged\nuid", "ready"))[1], "ready");
    const lines = c.output().split("\n").filter((line) =>
      line.trim() && !line.startsWith("cartd listening on ")
    );
    const records = lines.map((line) => {
      try {
        return JSON.parse(line);
      } catch {
        throw new Error(`not a JSON line: ${line}`);
      }
    });
    for (const r of records) {
      assert.ok(!Number.isNaN(Date.parse(r.time)), JSON.stringify(r));
      assert.match(r.level, /^(debug|info|warn|error)$/);
      assert.equal(typeof r.message, "string");
    }
    const accepted = records.find((r) => r.message === "cart accepted");
    assert.ok(accepted, lines.join("\n"));
    assert.equal(accepted.uid, "logged\nuid");
    assert.match(accepted.cart, /^[0-9a-f-]{36}$/);
    assert.equal(accepted.files, 1);
  });
});

Deno.test("CARTD_PROGRESS_HEADERS=false: HEAD has Pacifica's headers and X-Cartd-State only", async () => {
  await using archive = startFakeArchive();
  archive.put("p1", "x".repeat(100));
  await withCartd({ archive, env: { CARTD_PROGRESS_HEADERS: "false" } }, async (c) => {
    assert.equal((await postCart(c.url, "plain", cartOf(["p1"]))).status, 201);
    assert.equal((await waitFor(c.url, "plain", "ready"))[1], "ready");
    const [code, headers] = await head(c.url, "plain");
    assert.equal(code, 204);
    assert.equal(headers.get("x-pacifica-status"), "ready");
    assert.equal(headers.get("x-cartd-state"), "ready");
    assert.equal(headers.get("x-cartd-files"), null);
    assert.equal(headers.get("x-cartd-bytes"), null);
    // The status page still has the figures.
    const [, status] = await getJson(c.url, "plain/status");
    assert.deepEqual((status as unknown as Status).bytes, { total: 100, staged: 100 });
  });
});
