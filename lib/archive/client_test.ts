import assert from "node:assert/strict";
import { ArchiveClient, ArchiveError, encodeArchiveId } from "./client.ts";
import { FAKE_MTIME, startFakeArchive } from "../../tests/support/fake_archive.ts";

const text = (s: string) => new TextEncoder().encode(s);

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

Deno.test("status reads media, size, mtime and message of a file on disk", async () => {
  await using fake = startFakeArchive();
  fake.put("1234", text("hello world"), { mtime: 1795991303.87 });
  const st = await new ArchiveClient(fake.url).status("1234");
  assert.deepEqual(st, {
    media: "disk",
    size: 11,
    mtime: 1795991303.87,
    message: "File was found",
  });
  assert.deepEqual(fake.counts("1234"), { head: 1, post: 0, get: 0 });
});

Deno.test("status reports tape and error media", async () => {
  await using fake = startFakeArchive();
  fake.put("t", text("x"), { tapeMs: Infinity });
  fake.put("e", text("x"), { error: true, message: "tape drive broken" });
  const client = new ArchiveClient(fake.url);
  assert.equal((await client.status("t")).media, "tape");
  const e = await client.status("e");
  assert.equal(e.media, "error");
  assert.equal(e.message, "tape drive broken");
});

Deno.test("status without X-Content-Length names the header", async () => {
  await using fake = startFakeArchive();
  fake.put("1", text("abc"), { omitHeaders: ["X-Content-Length"] });
  await assert.rejects(new ArchiveClient(fake.url).status("1"), (e) => {
    assert.ok(e instanceof ArchiveError);
    assert.match(e.message, /X-Content-Length/);
    assert.match(e.message, /"1"/);
    assert.equal(e.retryable, false);
    return true;
  });
});

Deno.test("status with an invalid X-Content-Length names the header and value", async () => {
  await using fake = startFakeArchive();
  fake.put("1", text("abc"), { headers: { "X-Content-Length": "12abc" } });
  await assert.rejects(
    new ArchiveClient(fake.url).status("1"),
    /invalid X-Content-Length: "12abc"/,
  );
});

Deno.test("status without the media header names it", async () => {
  await using fake = startFakeArchive();
  fake.put("1", text("abc"), { omitHeaders: ["X-Pacifica-File-Storage-Media"] });
  await assert.rejects(new ArchiveClient(fake.url).status("1"), /X-Pacifica-File-Storage-Media/);
  fake.put("2", text("abc"), { headers: { "X-Pacifica-File-Storage-Media": "cloud" } });
  await assert.rejects(new ArchiveClient(fake.url).status("2"), /unknown .*"cloud"/);
});

Deno.test("status without Last-Modified uses the time of the HEAD", async () => {
  await using fake = startFakeArchive();
  fake.put("1", text("abc"), { omitHeaders: ["Last-Modified"] });
  const before = Date.now() / 1000;
  const st = await new ArchiveClient(fake.url).status("1");
  assert.ok(st.mtime >= before - 1 && st.mtime <= Date.now() / 1000 + 1, `mtime ${st.mtime}`);
  assert.notEqual(st.mtime, FAKE_MTIME);
});

Deno.test("a missing file answers 500: retryable ArchiveError naming id and status", async () => {
  await using fake = startFakeArchive();
  const client = new ArchiveClient(fake.url);
  for (const call of [client.status("nope"), client.stage("nope"), client.open("nope")]) {
    await assert.rejects(call, (e) => {
      assert.ok(e instanceof ArchiveError);
      assert.equal(e.status, 500);
      assert.equal(e.retryable, true);
      assert.match(e.message, /"nope"/);
      assert.match(e.message, /500/);
      return true;
    });
  }
  // GET and POST carry the JSON error page's message (not its traceback); HEAD has no body.
  for (const call of [client.stage("nope"), client.open("nope")]) {
    await assert.rejects(call, (e) => {
      assert.ok(e instanceof ArchiveError);
      assert.equal(e.detail, "File not found: nope");
      assert.match(
        e.reason,
        /^the archive answered 500 Internal Server Error to (GET|POST): File not found: nope$/,
      );
      return true;
    });
  }
  await assert.rejects(client.status("nope"), (e) => {
    assert.ok(e instanceof ArchiveError);
    assert.equal(e.detail, "");
    assert.equal(e.reason, "the archive answered 500 Internal Server Error to HEAD");
    return true;
  });
  assert.deepEqual(fake.counts("nope"), { head: 2, post: 2, get: 2 });
});

Deno.test("the fake answers an id with '/' as the real archive does: HEAD 404, GET 500", async () => {
  await using fake = startFakeArchive();
  fake.put("a/b", text("x"));
  const client = new ArchiveClient(fake.url);
  await assert.rejects(client.status("a/b"), (e) => {
    assert.ok(e instanceof ArchiveError);
    assert.equal(e.status, 404);
    assert.equal(e.retryable, false);
    return true;
  });
  await assert.rejects(client.open("a/b"), (e) => e instanceof ArchiveError && e.status === 500);
});

Deno.test("the fake's HEAD fails the first N times, or for a while, then answers", async () => {
  await using fake = startFakeArchive();
  fake.put("n", text("n"), { failHeads: 2 });
  fake.put("t", text("t"), { failHeadsMs: 300 });
  const client = new ArchiveClient(fake.url);
  for (let i = 0; i < 2; i++) await assert.rejects(client.status("n"), /500/);
  assert.equal((await client.status("n")).size, 1);
  await assert.rejects(client.status("t"), /500/);
  await new Promise((r) => setTimeout(r, 350));
  assert.equal((await client.status("t")).size, 1);
});

Deno.test("stage sends an empty POST with Content-Length: 0", async () => {
  await using fake = startFakeArchive();
  fake.put("7", text("abc"), { tapeMs: 10_000 });
  await new ArchiveClient(fake.url).stage("7");
  const log = fake.log("7");
  assert.equal(log.length, 1);
  assert.equal(log[0].method, "POST");
  assert.equal(log[0].contentLength, "0");
});

Deno.test("stage fails when the archive does not answer 2xx", async () => {
  await using fake = startFakeArchive();
  fake.put("7", text("abc"), { tapeMs: 10_000, postStatus: 503 });
  await assert.rejects(new ArchiveClient(fake.url).stage("7"), (e) => {
    assert.ok(e instanceof ArchiveError);
    assert.equal(e.status, 503);
    assert.match(e.message, /503 .*POST/);
    return true;
  });
});

Deno.test("open streams the bytes", async () => {
  await using fake = startFakeArchive();
  fake.put("big", { size: (3 << 20) + 17 });
  const got = await readAll(await new ArchiveClient(fake.url).open("big"));
  assert.deepEqual(got, await fake.bytes("big"));
});

Deno.test("a slow answer times out with a message naming the call", async () => {
  await using fake = startFakeArchive();
  fake.put("slow", text("abc"), { headDelayMs: 400, getDelayMs: 400 });
  const client = new ArchiveClient(fake.url, { requestTimeoutMs: 100 });
  for (const call of [client.status("slow"), client.open("slow")]) {
    const t = performance.now();
    await assert.rejects(call, (e) => {
      assert.ok(e instanceof ArchiveError);
      assert.equal(e.timedOut, true);
      assert.equal(e.retryable, true);
      assert.match(e.message, /did not answer (HEAD|GET) within 0\.1 s/);
      return true;
    });
    assert.ok(performance.now() - t < 350);
  }
  await new Promise((r) => setTimeout(r, 400)); // let the fake finish its delayed answers
});

Deno.test("an abort rejects with the caller's reason", async () => {
  await using fake = startFakeArchive();
  fake.put("slow", text("abc"), { headDelayMs: 300 });
  const ac = new AbortController();
  const reason = new Error("cart deleted");
  setTimeout(() => ac.abort(reason), 30);
  await assert.rejects(new ArchiveClient(fake.url).status("slow", ac.signal), (e) => e === reason);
  await new Promise((r) => setTimeout(r, 300));
});

Deno.test("an unreachable archive gives a retryable ArchiveError", async () => {
  const fake = startFakeArchive();
  const url = fake.url;
  await fake.close();
  await assert.rejects(new ArchiveClient(url).status("1"), (e) => {
    assert.ok(e instanceof ArchiveError);
    assert.equal(e.retryable, true);
    assert.equal(e.status, undefined);
    assert.match(e.message, /HEAD to the archive failed/);
    return true;
  });
});

Deno.test("fileUrl percent-encodes, keeps '/' and never lets dots escape", () => {
  const c = new ArchiveClient("http://archive:8080/");
  assert.equal(c.fileUrl("1234"), "http://archive:8080/1234");
  assert.equal(c.fileUrl("1/2/foo bar?.txt"), "http://archive:8080/1/2/foo%20bar%3F.txt");
  assert.equal(c.fileUrl("a#b%c"), "http://archive:8080/a%23b%25c");
  assert.equal(c.fileUrl("../etc/passwd"), "http://archive:8080/..%2Fetc%2Fpasswd");
  assert.equal(encodeArchiveId("a/./b"), "a%2F.%2Fb");
  assert.equal(encodeArchiveId("x\\y"), "x%5Cy");
  assert.equal(new ArchiveClient("http://h/base").fileUrl("1"), "http://h/base/1");
  // The dotted form survives URL parsing unchanged.
  assert.equal(new URL(c.fileUrl("../x")).pathname, "/..%2Fx");
});

Deno.test("path-like and unusual ids reach the archive exactly", async () => {
  await using fake = startFakeArchive({ pathIds: true });
  const ids = ["1/2/3/foo bar.txt", "ünï#?%.bin", "../up", "a/./b"];
  for (const id of ids) fake.put(id, text(id));
  const client = new ArchiveClient(fake.url);
  for (const id of ids) {
    assert.equal((await client.status(id)).size, text(id).byteLength, id);
    assert.equal(new TextDecoder().decode(await readAll(await client.open(id))), id);
  }
});
