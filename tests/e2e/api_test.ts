/**
 * End-to-end tests of the cart API (SPEC §1) against the real cartd command, a fake Pacifica
 * archive over HTTP, and SQLite: every row of the API, every error path, replace, delete during
 * staging, restart-and-resume, and 20 carts at once.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { FAKE_MTIME, type FakeArchive, startFakeArchive } from "../support/fake_archive.ts";
import {
  type Cartd,
  cartStatus,
  listFiles,
  postCart,
  stagedFirstFile,
  startCartd,
  waitFor,
  withCartd,
} from "../support/harness.ts";
import { eventually } from "../support/eventually.ts";
import { run } from "../support/run.ts";

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

async function download(url: string, uid: string, query = ""): Promise<Response> {
  return await fetch(url + encodeURIComponent(uid) + query);
}

/** One HEAD answer: the code, both status headers and the message. */
interface Head {
  code: number;
  /** `X-Pacifica-Status`. */
  status: string;
  /** `X-Cartd-State`, the precise state ("" when absent). */
  state: string;
  message: string;
}

async function head(url: string, uid: string): Promise<Head> {
  const res = await fetch(url + encodeURIComponent(uid), { method: "HEAD" });
  await res.body?.cancel();
  return {
    code: res.status,
    status: res.headers.get("x-pacifica-status") ?? "",
    state: res.headers.get("x-cartd-state") ?? "",
    message: res.headers.get("x-pacifica-message") ?? "",
  };
}

/**
 * Polls HEAD of `uid` every few ms until its state is `ready` or `error`; returns each answer
 * that differs from the one before (so every state the cart showed, in order).
 */
async function watchStates(url: string, uid: string, timeoutMs = 30_000): Promise<Head[]> {
  const seen: Head[] = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = await head(url, uid);
    if (JSON.stringify(now) !== JSON.stringify(seen.at(-1))) seen.push(now);
    if (now.state === "ready" || now.state === "error" || now.code === 404) return seen;
    if (Date.now() > deadline) throw new Error(`${uid} did not finish: ${JSON.stringify(seen)}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function bodyBytes(res: Response): Promise<Uint8Array> {
  return new Uint8Array(await res.arrayBuffer());
}

/** Extracts a tar into a fresh folder with GNU tar; fails on any warning. */
async function untar(bytes: Uint8Array): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "cartd-untar-" });
  await Deno.writeFile(`${dir}/cart.tar`, bytes);
  const r = await run("tar", ["-xf", "cart.tar"], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "", "GNU tar printed a warning");
  await Deno.remove(`${dir}/cart.tar`);
  return dir;
}

/** {@linkcode withCartd} of the harness, with the steps first and the settings after them. */
const withCartdThen = (
  fn: (cartd: Cartd, archive: FakeArchive) => Promise<void>,
  env: Record<string, string> = {},
) => withCartd({ env }, fn);

Deno.test("GET / says the service is up, as JSON", async () => {
  await withCartdThen(async ({ url }) => {
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/json");
    assert.deepEqual(await res.json(), { message: "Pacifica Cartd Interface Up and Running" });
  });
});

Deno.test("a cart goes from POST to a tar that GNU tar extracts, with paths and mtimes", async () => {
  await withCartdThen(async ({ url, volume }, archive) => {
    archive.put("foo.txt", "foo contents\n");
    archive.put("1234", "baz contents\n", { mtime: 1700000000.5 });
    const sha1 = await archive.digest("1234", "sha1");
    const res = await fetch(url + "mycart", {
      method: "POST",
      // Like `curl --upload-file`: no Content-Type.
      body: new TextEncoder().encode(JSON.stringify({
        fileids: [
          { id: "foo.txt", path: "/1/2/3/foo.txt" },
          { id: 1234, path: "2/3/4/baz.ini", hashtype: "sha1", hashsum: sha1.toUpperCase() },
        ],
      })),
    });
    assert.equal(res.status, 201);
    assert.equal(res.headers.get("content-type"), "application/json");
    assert.deepEqual(await res.json(), { message: "Cart Processing has begun" });

    const [code, status, message] = await waitFor(url, "mycart", "ready");
    assert.deepEqual([code, status, message], [204, "ready", ""]);
    assert.equal((await head(url, "mycart")).state, "ready");

    const tar = await download(url, "mycart", "?filename=my_cart.tar");
    assert.equal(tar.status, 200);
    assert.equal(tar.headers.get("content-type"), "application/octet-stream");
    assert.equal(tar.headers.get("content-disposition"), 'attachment; filename="my_cart.tar"');
    const bytes = await bodyBytes(tar);
    assert.equal(Number(tar.headers.get("content-length")), bytes.length);
    const dir = await untar(bytes);
    assert.equal(await Deno.readTextFile(`${dir}/my_cart/1/2/3/foo.txt`), "foo contents\n");
    assert.equal(await Deno.readTextFile(`${dir}/my_cart/2/3/4/baz.ini`), "baz contents\n");
    const stat = await Deno.stat(`${dir}/my_cart/2/3/4/baz.ini`);
    assert.equal(Math.floor(stat.mtime!.getTime() / 1000), 1700000000);
    const listing = await run("tar", ["-tf", "-"], { stdin: bytes });
    assert.deepEqual(listing.stdout.trim().split("\n"), [
      "my_cart/",
      "my_cart/1/",
      "my_cart/1/2/",
      "my_cart/1/2/3/",
      "my_cart/1/2/3/foo.txt",
      "my_cart/2/",
      "my_cart/2/3/",
      "my_cart/2/3/4/",
      "my_cart/2/3/4/baz.ini",
    ]);
    await Deno.remove(dir, { recursive: true });

    // Without ?filename: data_YYYY_MM_DD_HH_MM_SS.tar, and the same bytes every time.
    const a = await download(url, "mycart");
    const name = /filename="(data_\d{4}(_\d\d){5}\.tar)"/.exec(
      a.headers.get("content-disposition") ?? "",
    );
    assert.ok(name, `default name: ${a.headers.get("content-disposition")}`);
    const b = await download(url, "mycart");
    assert.equal(sha256(await bodyBytes(a)), sha256(await bodyBytes(b)));

    // Nothing outside the cart's own folder.
    const files = await listFiles(volume);
    for (const f of files) {
      assert.match(f, /^(cartd\.sqlite3(-wal|-shm)?|carts\/[0-9a-f-]{36}\/files\/\d+)$/, f);
    }

    const del = await fetch(url + "mycart", { method: "DELETE" });
    assert.equal(del.status, 200);
    assert.deepEqual(await del.json(), { message: "Cart Deleted Successfully" });
    assert.deepEqual(await listFiles(`${volume}/carts`), []);
    assert.equal((await cartStatus(url, "mycart"))[0], 404);
  });
});

Deno.test("unknown carts: HEAD 404, GET 404 JSON, DELETE 404 JSON", async () => {
  await withCartdThen(async ({ url }) => {
    assert.deepEqual(await head(url, "nope"), {
      code: 404,
      status: "error",
      state: "error", // the 404 tells an unknown cart from a failed one
      message: "No cart with uid nope found",
    });
    const get = await download(url, "nope");
    assert.equal(get.status, 404);
    assert.equal(get.headers.get("content-type"), "application/json");
    assert.deepEqual(await get.json(), {
      message: "The cart does not exist or has already been deleted",
    });
    const del = await fetch(url + "nope", { method: "DELETE" });
    assert.equal(del.status, 404);
    assert.deepEqual(await del.json(), { message: "Not Found" });
  });
});

Deno.test("bad cart documents get 400 naming the rule, and nothing is stored", async () => {
  await withCartdThen(async ({ url, volume }, archive) => {
    archive.put("a", "a");
    const cases: [unknown, RegExp][] = [
      ["{not json", /not valid JSON/],
      [[], /JSON object/],
      [{}, /^fileids: is required/],
      [{ fileids: [] }, /^fileids: must list at least one file/],
      [{ fileids: [{ id: "a" }] }, /^fileids\[0\]\.path: is required/],
      [
        { fileids: [{ id: "a", path: "x" }, { id: "a", path: "y" }, { id: "a", path: "a/../b" }] },
        /^fileids\[2\]\.path: "\.\." is not allowed$/,
      ],
      [{ fileids: [{ id: "a", path: "a/./b" }] }, /^fileids\[0\]\.path: "\." is not allowed/],
      [{ fileids: [{ id: "a", path: "a//b" }] }, /^fileids\[0\]\.path: empty segments/],
      [{ fileids: [{ id: "a", path: "a\u0000b" }] }, /^fileids\[0\]\.path: control characters/],
      [{ fileids: [{ id: "a", path: "x".repeat(4097) }] }, /longer than 4096 bytes/],
      [{ fileids: [{ id: "a", path: "p" }, { id: "b", path: "p" }] }, /already the path/],
      [{ fileids: [{ id: "a", path: "d" }, { id: "b", path: "d/e" }] }, /cannot also be a folder/],
      [{ fileids: [{ id: "a", path: "p", hashtype: "sha1" }] }, /hashtype and hashsum go together/],
      [
        { fileids: [{ id: "a", path: "p", hashtype: "crc", hashsum: "00" }] },
        /hashtype: must be one of md5/,
      ],
      [
        { fileids: [{ id: "a", path: "p", hashtype: "md5", hashsum: "xyz" }] },
        /hashsum: must be hexadecimal/,
      ],
      [{ fileids: [{ id: 1.5, path: "p" }] }, /^fileids\[0\]\.id:/],
      [{ fileids: [{ id: "a", path: "p" }], bundle: "yes" }, /^bundle: must be true or false/],
    ];
    for (const [doc, rule] of cases) {
      const res = await postCart(url, "bad", doc);
      assert.equal(res.status, 400, JSON.stringify(doc));
      assert.equal(res.headers.get("content-type"), "application/json");
      const body = await res.json();
      assert.match(body.message, rule, JSON.stringify(doc));
      assert.doesNotMatch(JSON.stringify(body), /\n\s+at /);
    }
    const long = await postCart(url, "u".repeat(256), { fileids: [{ id: "a", path: "p" }] });
    assert.equal(long.status, 400);
    assert.match((await long.json()).message, /256 bytes long; at most 255/);
    assert.equal((await cartStatus(url, "bad"))[0], 404);
    assert.deepEqual(await listFiles(`${volume}/carts`), []);
    // A 255-byte uid with non-ASCII characters is fine.
    const uid = "é".repeat(127) + "x";
    assert.equal((await postCart(url, uid, { fileids: [{ id: "a", path: "p" }] })).status, 201);
    assert.equal((await waitFor(url, uid, "ready"))[1], "ready");
  }, { CARTD_MAX_BODY: "1M" });
});

/**
 * A cart that shows every state for a while: `behind` waits behind `ahead` (one cart in
 * flight, `ahead` on tape), stages `b1` at once and `b2` from tape, and is held in bundling
 * because `b1`'s staged copy is removed and fetching it again takes a second. Returns the HEAD
 * answers of `behind`, one per change.
 */
async function everyState(
  { url, volume }: Cartd,
  archive: ReturnType<typeof startFakeArchive>,
): Promise<Head[]> {
  // A slow download holds the only place among CARTD_CARTS_IN_FLIGHT=1 (a cart waiting for
  // tape would free it: worker/dispatcher.ts), so "behind" is seen waiting.
  archive.put("a1", "ahead\n", { getDelayMs: 1500 });
  archive.put("b1", { size: 300_000 });
  archive.put("b2", "behind\n", { tapeMs: 1500 });
  assert.equal((await postCart(url, "ahead", { fileids: [{ id: "a1", path: "a" }] })).status, 201);
  await eventually("ahead is staging", async () => (await head(url, "ahead")).state === "staging");
  const doc = { fileids: [{ id: "b1", path: "b1" }, { id: "b2", path: "b2" }] };
  assert.equal((await postCart(url, "behind", doc)).status, 201);
  const watched = watchStates(url, "behind");
  const staged = await stagedFirstFile(volume, 300_000, "b1 is staged");
  archive.put("b1", { size: 300_000 }, { getDelayMs: 1000 });
  await Deno.remove(staged);
  const seen = await watched;
  assert.equal((await download(url, "behind")).status, 200);
  return seen;
}

Deno.test("HEAD by default: X-Pacifica-Status says staging for waiting and bundling, X-Cartd-State the state", async () => {
  await withCartdThen(async (cartd, archive) => {
    const seen = await everyState(cartd, archive);
    assert.deepEqual(seen.map((h) => [h.code, h.status, h.state, h.message]), [
      [204, "staging", "waiting", ""],
      [204, "staging", "staging", ""],
      [204, "staging", "bundling", ""],
      [204, "ready", "ready", ""],
    ]);
  }, { CARTD_CARTS_IN_FLIGHT: "1" });
});

Deno.test("HEAD with CARTD_STATUS_WORDS=precise: X-Pacifica-Status says all five states", async () => {
  await withCartdThen(async (cartd, archive) => {
    const seen = await everyState(cartd, archive);
    assert.deepEqual(seen.map((h) => [h.code, h.status, h.state]), [
      [204, "waiting", "waiting"],
      [204, "staging", "staging"],
      [204, "bundling", "bundling"],
      [204, "ready", "ready"],
    ]);
    archive.put("broken", "x", { error: true, message: "tape library offline" });
    await postCart(cartd.url, "bad", { fileids: [{ id: "broken", path: "x" }] });
    const failed = (await watchStates(cartd.url, "bad")).at(-1)!;
    assert.deepEqual([failed.code, failed.status, failed.state], [500, "error", "error"]);
    assert.match(failed.message, /tape library offline/);
    const unknown = await head(cartd.url, "nope");
    assert.deepEqual([unknown.code, unknown.status, unknown.state], [404, "error", "error"]);
  }, { CARTD_CARTS_IN_FLIGHT: "1", CARTD_STATUS_WORDS: "precise" });
});

Deno.test("a body over CARTD_MAX_BODY gets 413 JSON", async () => {
  await withCartdThen(async ({ url }) => {
    const big = { fileids: [{ id: "a", path: "p", pad: "x".repeat(5000) }] };
    const res = await postCart(url, "big", big);
    assert.equal(res.status, 413);
    assert.match((await res.json()).message, /CARTD_MAX_BODY/);
    assert.equal((await cartStatus(url, "big"))[0], 404);
  }, { CARTD_MAX_BODY: "4K" });
});

Deno.test("a file on tape: staging (waiting or staging in X-Cartd-State), 202, then ready with few polls", async () => {
  await withCartdThen(async ({ url }, archive) => {
    archive.put("tape1", "from tape\n", { tapeMs: 1500 });
    assert.equal(
      (await postCart(url, "t", { fileids: [{ id: "tape1", path: "t.txt" }] })).status,
      201,
    );
    const early = await head(url, "t");
    assert.equal(early.status, "staging", "Pacifica's word for a cart not ready yet");
    assert.ok(["waiting", "staging"].includes(early.state), early.state);
    const notReady = await download(url, "t");
    assert.equal(notReady.status, 202);
    assert.equal(await notReady.text(), "The cart is not ready for download.");
    assert.equal((await waitFor(url, "t", "ready"))[1], "ready");
    const counts = archive.counts("tape1");
    assert.ok(counts.post >= 1, "a stage request was sent");
    // 0.05 s doubling to a 0.3 s cap over 1.5 s: about 8 polls, never a hot loop.
    assert.ok(counts.head <= 15, `HEAD requests: ${counts.head}`);
    assert.equal(counts.get, 1);
  });
});

Deno.test("archive faults end the cart in error with a message naming the file", async () => {
  await withCartdThen(async ({ url }, archive) => {
    archive.put("ok", "fine");
    archive.put("bad-hash", "the real bytes", { corruptGets: Infinity });
    archive.put("media-error", "x", { error: true, message: "tape library offline" });
    archive.put("no-size", "x", { omitHeaders: ["X-Content-Length"] });
    const md5 = await archive.digest("bad-hash", "md5");
    const cases: [string, unknown, RegExp][] = [
      [
        // Missing: HEAD answers 500 for CARTD_MISSING_AFTER seconds (1 here).
        "missing",
        { fileids: [{ id: "ok", path: "a" }, { id: "gone", path: "b" }] },
        /fileids\[1\].*gone/,
      ],
      [
        "hash",
        { fileids: [{ id: "bad-hash", path: "h", hashtype: "md5", hashsum: md5 }] },
        /^File hash does not match for fileids\[0\] \(id bad-hash\)$/,
      ],
      [
        "media",
        { fileids: [{ id: "media-error", path: "m" }] },
        /fileids\[0\].*error.*tape library offline/,
      ],
      ["headers", { fileids: [{ id: "no-size", path: "n" }] }, /fileids\[0\].*X-Content-Length/],
    ];
    for (const [uid, doc] of cases) assert.equal((await postCart(url, uid, doc)).status, 201);
    for (const [uid, , rule] of cases) {
      const [code, status, message] = await waitFor(url, uid, "error");
      assert.equal(status, "error", uid);
      assert.equal(code, 500, uid);
      assert.match(message, rule, uid);
      assert.equal((await head(url, uid)).state, "error", uid);
      const get = await download(url, uid);
      assert.equal(get.status, 500);
      assert.equal(get.headers.get("content-type"), "application/json");
      const body = await get.json();
      assert.match(body.message, rule);
      assert.doesNotMatch(JSON.stringify(body), /\.ts:\d+|\n\s+at /);
    }
  }, { CARTD_MISSING_AFTER: "1" });
});

Deno.test("passing download faults are retried: corrupt, cut, short, 500 once", async () => {
  await withCartdThen(async ({ url }, archive) => {
    const size = 3 * 1024 * 1024 + 17;
    archive.put("corrupt", { size }, { corruptGets: 1 });
    archive.put("cut", { size }, { cutGets: 1 });
    archive.put("short", { size }, { shortGets: 1 });
    archive.put("fail", { size }, { failGets: 1 });
    const doc = {
      fileids: await Promise.all(["corrupt", "cut", "short", "fail"].map(async (id) => ({
        id,
        path: `d/${id}`,
        hashtype: "sha256",
        hashsum: await archive.digest(id, "sha256"),
      }))),
    };
    assert.equal((await postCart(url, "retry", doc)).status, 201);
    assert.equal((await waitFor(url, "retry", "ready"))[1], "ready");
    const dir = await untar(await bodyBytes(await download(url, "retry", "?filename=r.tar")));
    for (const id of ["corrupt", "cut", "short", "fail"]) {
      assert.equal(
        sha256(await Deno.readFile(`${dir}/r/d/${id}`)),
        await archive.digest(id, "sha256"),
      );
      assert.ok(archive.counts(id).get >= 2, `${id} was fetched again`);
    }
    await Deno.remove(dir, { recursive: true });
  });
});

Deno.test("re-POST replaces a live cart; an identical re-POST keeps it", async () => {
  await withCartdThen(async ({ url, volume }, archive) => {
    archive.put("slow", "slow", { tapeMs: 60_000 });
    archive.put("quick", "quick");
    assert.equal((await postCart(url, "r", { fileids: [{ id: "slow", path: "s" }] })).status, 201);
    await eventually(
      "the first cart is staging",
      async () => (await head(url, "r")).state === "staging",
    );
    const firstDirs = await listFiles(`${volume}/carts`);
    assert.equal((await postCart(url, "r", { fileids: [{ id: "quick", path: "q" }] })).status, 201);
    assert.equal((await waitFor(url, "r", "ready"))[1], "ready");
    const dir = await untar(await bodyBytes(await download(url, "r", "?filename=x.tar")));
    assert.deepEqual(await listFiles(`${dir}/x`), ["q"]);
    await Deno.remove(dir, { recursive: true });
    // The old cart's files are gone; only the new cart's folder remains.
    await eventually("the replaced cart's folder is removed", async () => {
      const ids = new Set((await listFiles(`${volume}/carts`)).map((f) => f.split("/")[0]));
      return ids.size === 1 && !firstDirs.some((f) => ids.has(f.split("/")[0]));
    });
    // Identical document: kept (no new work, same bytes).
    const before = archive.counts("quick").get;
    assert.equal((await postCart(url, "r", { fileids: [{ id: "quick", path: "q" }] })).status, 201);
    assert.deepEqual((await cartStatus(url, "r")).slice(0, 2), [204, "ready"]);
    assert.equal(archive.counts("quick").get, before);
  });
});

Deno.test("DELETE during staging stops the work and leaves no file behind", async () => {
  await withCartdThen(async ({ url, volume }, archive) => {
    archive.put("big", { size: 8 * 1024 * 1024 }, { chunkDelayMs: 200, chunkSize: 256 * 1024 });
    archive.put("tape", "t", { tapeMs: 60_000 });
    const doc = { fileids: [{ id: "big", path: "b" }, { id: "tape", path: "t" }] };
    assert.equal((await postCart(url, "d", doc)).status, 201);
    await eventually("a download is under way", () => archive.counts("big").get > 0);
    const del = await fetch(url + "d", { method: "DELETE" });
    assert.equal(del.status, 200);
    await del.body?.cancel();
    assert.equal((await cartStatus(url, "d"))[0], 404);
    await eventually(
      "the cart's folder is gone",
      async () => (await listFiles(`${volume}/carts`)).length === 0,
    );
    // Still healthy.
    archive.put("after", "after");
    assert.equal(
      (await postCart(url, "d2", { fileids: [{ id: "after", path: "a" }] })).status,
      201,
    );
    assert.equal((await waitFor(url, "d2", "ready"))[1], "ready");
    // The stopped cart never reappears.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal((await cartStatus(url, "d"))[0], 404);
    const ids = new Set((await listFiles(`${volume}/carts`)).map((f) => f.split("/")[0]));
    assert.equal(ids.size, 1);
  });
});

Deno.test("?filename is checked; non-ASCII names use filename*", async () => {
  await withCartdThen(async ({ url }, archive) => {
    archive.put("f", "f");
    await postCart(url, "n", { fileids: [{ id: "f", path: "f" }] });
    await waitFor(url, "n", "ready");
    for (const bad of ["a/b.tar", "a\\b.tar", 'a"b.tar', "a\u0001b.tar"]) {
      const res = await download(url, "n", `?filename=${encodeURIComponent(bad)}`);
      assert.equal(res.status, 400, bad);
      assert.match((await res.json()).message, /filename may not contain/);
    }
    const res = await download(url, "n", `?filename=${encodeURIComponent("données.tar")}`);
    assert.equal(res.status, 200);
    assert.equal(
      res.headers.get("content-disposition"),
      `attachment; filename="donnees.tar"; filename*=UTF-8''donn%C3%A9es.tar`,
    );
    // The ASCII fallback never carries a quote or a slash a compatibility form folds to.
    const folded = await download(url, "n", `?filename=${encodeURIComponent("ａ＂ｂ／ç.tar")}`);
    assert.equal(folded.status, 200);
    await folded.body?.cancel();
    assert.equal(
      folded.headers.get("content-disposition"),
      `attachment; filename="a_b_c.tar"; filename*=UTF-8''%EF%BD%81%EF%BC%82%EF%BD%82%EF%BC%8F%C3%A7.tar`,
    );
    const dir = await untar(await bodyBytes(res));
    assert.deepEqual(await listFiles(dir), ["données/f"]);
    await Deno.remove(dir, { recursive: true });
  });
});

Deno.test('"bundle": true gives the bytes of a streamed cart named after its uid', async () => {
  await withCartdThen(async ({ url, volume }, archive) => {
    archive.put("x", { size: 2 * 1024 * 1024 + 5 });
    archive.put("y", "why");
    const files = [{ id: "x", path: "deep/x.bin" }, { id: "y", path: "y.txt" }];
    await postCart(url, "streamed", { fileids: files });
    await postCart(url, "bundled", { fileids: files, bundle: true });
    await waitFor(url, "streamed", "ready");
    await waitFor(url, "bundled", "ready");
    // A bundle cart's top folder is its uid whatever ?filename= says (SPEC, Download).
    const a = await bodyBytes(await download(url, "streamed", "?filename=bundled.tar"));
    const b = await bodyBytes(await download(url, "bundled", "?filename=other.tar"));
    assert.equal(sha256(a), sha256(b));
    assert.ok((await listFiles(`${volume}/carts`)).some((f) => f.endsWith("/bundle.tar")));
  });
});

Deno.test("Range, If-Range and 416 on a ready cart", async () => {
  await withCartdThen(async ({ url }, archive) => {
    archive.put("r1", { size: 3 * 1024 * 1024 + 3 });
    archive.put("r2", { size: 100_000 });
    await postCart(url, "rg", { fileids: [{ id: "r1", path: "a" }, { id: "r2", path: "b/c" }] });
    await waitFor(url, "rg", "ready");
    const full = await download(url, "rg");
    const etag = full.headers.get("etag")!;
    assert.match(etag, /^"[^"]+"$/);
    assert.equal(full.headers.get("accept-ranges"), "bytes");
    const body = await bodyBytes(full);
    const get = (headers: Record<string, string>) => fetch(url + "rg", { headers });
    for (let i = 0; i < 20; i++) {
      const a = Math.floor(Math.random() * body.length);
      const b = Math.min(body.length - 1, a + Math.floor(Math.random() * 2_000_000));
      const part = await get({ Range: `bytes=${a}-${b}` });
      assert.equal(part.status, 206);
      assert.equal(part.headers.get("content-range"), `bytes ${a}-${b}/${body.length}`);
      assert.deepEqual(await bodyBytes(part), body.subarray(a, b + 1));
    }
    const tail = await get({ Range: "bytes=-1000" });
    assert.equal(tail.status, 206);
    assert.deepEqual(await bodyBytes(tail), body.subarray(body.length - 1000));
    const open = await get({ Range: `bytes=${body.length - 10}-` });
    assert.deepEqual(await bodyBytes(open), body.subarray(body.length - 10));
    const stale = await get({ Range: "bytes=0-9", "If-Range": '"stale"' });
    assert.equal(stale.status, 200);
    assert.equal((await bodyBytes(stale)).length, body.length);
    const fresh = await get({ Range: "bytes=0-9", "If-Range": etag });
    assert.equal(fresh.status, 206);
    await fresh.body?.cancel();
    const bad = await get({ Range: `bytes=${body.length}-` });
    assert.equal(bad.status, 416);
    assert.equal(bad.headers.get("content-range"), `bytes */${body.length}`);
    await bad.body?.cancel();
  });
});

Deno.test("downloads of a cart at once share one plan, and each gets every byte", async () => {
  await withCartdThen(async (cartd, archive) => {
    const { url } = cartd;
    archive.put("s1", { size: 24 * 1024 * 1024 }); // more than loopback's socket buffers hold
    archive.put("s2", { size: 1000 });
    await postCart(url, "sh", { fileids: [{ id: "s1", path: "a" }, { id: "s2", path: "b/c" }] });
    await waitFor(url, "sh", "ready");
    const shared = () => cartd.output().split("\n").filter((l) => l.includes("plan=shared"));
    const first = await download(url, "sh");
    const reader = first.body!.getReader();
    try {
      const head = (await reader.read()).value!; // under way, then stalled by us
      // A second download meanwhile takes the first one's plan; a zip is planned on its own.
      const second = await bodyBytes(await download(url, "sh"));
      const zip = await download(url, "sh", "?format=zip");
      await zip.body?.cancel();
      await eventually("the second download's log line", () => shared().length === 1);
      const parts = [head];
      for (let r = await reader.read(); !r.done; r = await reader.read()) parts.push(r.value);
      assert.deepEqual(new Uint8Array(await new Blob(parts).arrayBuffer()), second);
      assert.equal(second.length, Number(first.headers.get("content-length")));
    } finally {
      await reader.cancel().catch(() => {});
    }
    // Both over: the next download plans afresh.
    await bodyBytes(await download(url, "sh"));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(shared().length, 1);
    // Plans are shared within an HTTP thread (docs/operations.md): one thread, so that both
    // connections land on it.
  }, { CARTD_HTTP_THREADS: "1" });
});

Deno.test("curl resumes a cut download (-C -) to identical bytes", async () => {
  await withCartdThen(async ({ url }, archive) => {
    archive.put("big", { size: 24 * 1024 * 1024 });
    await postCart(url, "resume", { fileids: [{ id: "big", path: "big.bin" }] });
    await waitFor(url, "resume", "ready");
    const full = await download(url, "resume");
    const whole = sha256(await bodyBytes(full));
    const dir = await Deno.makeTempDir();
    const out = `${dir}/cart.tar`;
    const size = Number(full.headers.get("content-length"));
    // Cut at 30 %: curl's output stops there (head closes the pipe, as a dropped link would).
    const cut30 = Math.floor(size * 0.3);
    const first = await run("bash", [
      "-c",
      `curl -s '${url}resume' | head -c ${cut30} > '${out}'`,
    ]);
    assert.equal(first.code, 0, first.stderr);
    assert.equal((await Deno.stat(out)).size, cut30);
    // Resume from there, cut again at 70 %.
    const cut70 = Math.floor(size * 0.7);
    const second = await run("bash", [
      "-c",
      `curl -s -C ${cut30} '${url}resume' | head -c ${cut70 - cut30} >> '${out}'`,
    ]);
    assert.equal(second.code, 0, second.stderr);
    assert.equal((await Deno.stat(out)).size, cut70);
    // And let curl work out where to resume by itself.
    const r = await run("curl", ["-s", "-f", "-C", "-", "-o", out, url + "resume"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(sha256(await Deno.readFile(out)), whole);
    await Deno.remove(dir, { recursive: true });
  });
});

Deno.test("?format=zip passes unzip -t; ?manifest=1 passes sha256sum -c", async () => {
  await withCartdThen(async ({ url }, archive) => {
    archive.put("z1", "zip one\n");
    archive.put("z2", { size: 1024 * 1024 + 1 });
    await postCart(url, "z", {
      fileids: [{ id: "z1", path: "a/one.txt" }, { id: "z2", path: "two" }],
    });
    await waitFor(url, "z", "ready");
    const zip = await download(url, "z", "?format=zip&filename=z.zip");
    assert.equal(zip.status, 200);
    const dir = await Deno.makeTempDir();
    await Deno.writeFile(`${dir}/z.zip`, await bodyBytes(zip));
    const t = await run("unzip", ["-t", "z.zip"], { cwd: dir });
    assert.equal(t.code, 0, t.stdout + t.stderr);
    // The cart asked for no manifest: staging measured no SHA-256s, the first manifest asked
    // for measures them; the default tar's ETag is the same before and after.
    const first = await download(url, "z", "");
    await first.body?.cancel();
    const etag = first.headers.get("etag");
    assert.ok(etag);
    const m = await untar(await bodyBytes(await download(url, "z", "?manifest=1&filename=m.tar")));
    const check = await run("sha256sum", ["-c", "manifest-sha256.txt"], { cwd: `${m}/m` });
    assert.equal(check.code, 0, check.stdout + check.stderr);
    assert.match(check.stdout, /data\/a\/one\.txt: OK/);
    const again = await untar(
      await bodyBytes(await download(url, "z", "?manifest=1&filename=m.tar")),
    );
    assert.equal(
      await Deno.readTextFile(`${again}/m/manifest-sha256.txt`),
      await Deno.readTextFile(`${m}/m/manifest-sha256.txt`),
    );
    await Deno.remove(again, { recursive: true });
    const tar = await download(url, "z", "");
    await tar.body?.cancel();
    assert.equal(tar.headers.get("etag"), etag);
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(m, { recursive: true });
  });
});

Deno.test("a manifest cart's bag checks out, with a file shared from a cart staged without sha256s", async () => {
  await withCartdThen(async ({ url }, archive) => {
    archive.put("s1", { size: 2 * 1024 * 1024 + 3 });
    archive.put("s2", "second\n");
    // Staged without a manifest: no sha256 measured for s1.
    await postCart(url, "plain", { fileids: [{ id: "s1", path: "one.bin" }] });
    assert.equal((await waitFor(url, "plain", "ready"))[1], "ready");
    // Linked from "plain" (no archive GET), in a "bundle": true cart with a manifest: the bag
    // written at bundling time must carry s1's real sha256.
    await postCart(url, "bag", {
      fileids: [{ id: "s1", path: "a/one.bin" }, { id: "s2", path: "two.txt" }],
      bundle: true,
      manifest: true,
    });
    assert.equal((await waitFor(url, "bag", "ready"))[1], "ready");
    assert.equal(archive.counts("s1").get, 1);
    const m = await untar(await bodyBytes(await download(url, "bag")));
    const check = await run("sha256sum", ["-c", "manifest-sha256.txt"], { cwd: `${m}/bag` });
    assert.equal(check.code, 0, check.stdout + check.stderr);
    assert.match(check.stdout, /data\/a\/one\.bin: OK/);
    await Deno.remove(m, { recursive: true });
  });
});

Deno.test("20 carts at once all reach ready with the right bytes", async () => {
  await withCartdThen(async ({ url }, archive) => {
    const uids = Array.from({ length: 20 }, (_, i) => `many-${i}`);
    for (const [i, uid] of uids.entries()) {
      for (let j = 0; j < 3; j++) archive.put(`${uid}-${j}`, `cart ${i} file ${j}\n`.repeat(i + 1));
    }
    const posted = await Promise.all(uids.map((uid) =>
      postCart(url, uid, {
        fileids: [0, 1, 2].map((j) => ({ id: `${uid}-${j}`, path: `f/${j}.txt` })),
      })
    ));
    assert.ok(posted.every((r) => r.status === 201));
    for (const [i, uid] of uids.entries()) {
      assert.equal((await waitFor(url, uid, "ready"))[1], "ready", uid);
      const dir = await untar(await bodyBytes(await download(url, uid, "?filename=c.tar")));
      assert.equal(await Deno.readTextFile(`${dir}/c/f/2.txt`), `cart ${i} file 2\n`.repeat(i + 1));
      await Deno.remove(dir, { recursive: true });
    }
  });
});

Deno.test("a restart resumes unfinished carts: kill -9 during staging, then start again", async () => {
  await using archive = startFakeArchive();
  archive.put("t1", "tape one\n", { tapeMs: 2500 });
  archive.put("d1", { size: 2 * 1024 * 1024 });
  const env = { ARCHIVE_INTERFACE_URL: archive.url };
  const first = await startCartd({ env });
  const volume = first.volume;
  try {
    await postCart(first.url, "survivor", {
      fileids: [{ id: "d1", path: "d1" }, { id: "t1", path: "t1" }],
    });
    await eventually(
      "staging started",
      async () => (await head(first.url, "survivor")).state === "staging",
    );
    await first.kill();
    const second = await startCartd({ env, volume });
    try {
      const [, status] = await waitFor(second.url, "survivor", "ready", 30_000);
      assert.equal(status, "ready", second.output());
      const dir = await untar(
        await bodyBytes(await download(second.url, "survivor", "?filename=s.tar")),
      );
      assert.equal(await Deno.readTextFile(`${dir}/s/t1`), "tape one\n");
      assert.equal(
        sha256(await Deno.readFile(`${dir}/s/d1`)),
        await archive.digest("d1", "sha256"),
      );
      await Deno.remove(dir, { recursive: true });
    } finally {
      await second.stop();
    }
  } finally {
    await Deno.remove(volume, { recursive: true }).catch(() => {});
  }
});

Deno.test("a staged file gone from disk before bundling is fetched again", async () => {
  await withCartdThen(async (cartd, archive) => {
    const { url, volume } = cartd;
    archive.put("d1", { size: 300_000 });
    archive.put("t1", "tape one\n", { tapeMs: 2500 });
    await postCart(url, "gone", { fileids: [{ id: "d1", path: "d1" }, { id: "t1", path: "t1" }] });
    // d1 is staged while t1 is still on tape; then somebody removes it.
    const staged = await stagedFirstFile(volume, 300_000, "d1 staged");
    await Deno.remove(staged);
    assert.deepEqual(await waitFor(url, "gone", "ready", 30_000), [204, "ready", ""]);
    assert.match(cartd.output(), /staged files missing at bundling; fetching again .*files=1/);
    const dir = await untar(await bodyBytes(await download(url, "gone", "?filename=g.tar")));
    assert.equal(sha256(await Deno.readFile(`${dir}/g/d1`)), await archive.digest("d1", "sha256"));
    assert.equal(await Deno.readTextFile(`${dir}/g/t1`), "tape one\n");
    await Deno.remove(dir, { recursive: true });
  });
});

Deno.test("the archive's Last-Modified becomes the file's mtime in the tar", async () => {
  await withCartdThen(async ({ url }, archive) => {
    archive.put("m", "m");
    await postCart(url, "mt", { fileids: [{ id: "m", path: "m" }] });
    await waitFor(url, "mt", "ready");
    const listing = await run("tar", ["--utc", "--full-time", "-tvf", "-"], {
      stdin: await bodyBytes(await download(url, "mt", "?filename=t.tar")),
    });
    const expected = new Date(Math.floor(FAKE_MTIME) * 1000).toISOString().replace("T", " ")
      .slice(0, 19);
    assert.match(listing.stdout, new RegExp(`${expected} t/m`));
  });
});

Deno.test("a file-system failure names the file, not the volume's paths", async () => {
  await withCartdThen(async ({ url, volume }, archive) => {
    archive.put("foo.txt", "hello\n", { tapeMs: 1000 });
    await postCart(url, "fs", { fileids: [{ id: "foo.txt", path: "a/foo.txt" }] });
    let id = "";
    await eventually("the cart has its files folder", async () => {
      for await (const e of Deno.readDir(`${volume}/carts`)) id = e.name;
      // The cart's folder and its files folder are made one after the other: wait for both.
      return id !== "" &&
        await Deno.stat(`${volume}/carts/${id}/files`).then(() => true, () => false);
    });
    // While the file is on tape, a plain file takes the place of the cart's files folder.
    await Deno.remove(`${volume}/carts/${id}/files`, { recursive: true });
    await Deno.writeTextFile(`${volume}/carts/${id}/files`, "in the way");
    const [code, status, message] = await waitFor(url, "fs", "error");
    assert.deepEqual([code, status], [500, "error"]);
    assert.match(message, /^fileids\[0\] \(id foo\.txt\): /);
    assert.doesNotMatch(message, new RegExp(volume.replaceAll("/", "\\/")));
    assert.doesNotMatch(message, /carts\//);
    const get = await download(url, "fs");
    assert.equal(get.status, 500);
    assert.doesNotMatch(await get.text(), /carts\//);
  }, { CARTD_FETCH_ATTEMPTS: "1" });
});
