import assert from "node:assert/strict";
import { ArchiveClient, ArchiveError, archiveText, encodeArchiveId } from "./client.ts";
import { ArchiveHealth } from "./health.ts";
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

Deno.test("an archive unreachable for longer than the outage limit fails the call, naming the outage", async () => {
  const fake = startFakeArchive();
  const url = fake.url;
  await fake.close();
  const health = new ArchiveHealth(url, { outageMaxMs: 600, probeInitialMs: 50 });
  const started = performance.now();
  await assert.rejects(new ArchiveClient(url, { health }).status("1"), (e) => {
    assert.ok(e instanceof ArchiveError);
    assert.equal(e.retryable, false);
    assert.equal(e.unreachable, true);
    assert.equal(e.status, undefined);
    assert.match(e.message, /HEAD could not reach the archive: .*unreachable for 0\.\d s/);
    assert.match(e.message, /CARTD_ARCHIVE_OUTAGE_MAX/);
    return true;
  });
  assert.ok(performance.now() - started >= 550, "the call waited for the outage limit");
  assert.equal(health.up, false);
  health.close();
});

Deno.test("a call waits through a short outage and succeeds once the archive is back", async () => {
  const first = startFakeArchive();
  const port = new URL(first.url).port;
  await first.close();
  const health = new ArchiveHealth(`http://127.0.0.1:${port}/`, {
    outageMaxMs: 30_000,
    probeInitialMs: 50,
    probeMaxMs: 200,
  });
  const client = new ArchiveClient(`http://127.0.0.1:${port}/`, { health });
  let ups = 0;
  health.onUp(() => ups++);
  const call = client.status("1");
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(health.up, false, "the refused call took the health down");
  await using back = startFakeArchive({ port: Number(port) });
  back.put("1", "one");
  const st = await call;
  assert.equal(st.media, "disk");
  assert.equal(health.up, true);
  assert.equal(ups, 1);
  assert.equal(health.outages, 1);
  health.close();
});

Deno.test("archiveText keeps a short first line and hides absolute paths", () => {
  assert.equal(archiveText("File not found"), "File not found");
  assert.equal(
    archiveText("Can't open posix file: /srv/archive/secret/7.dat (errno 2)\nTraceback …"),
    "Can't open posix file: … (errno 2)",
  );
  assert.equal(archiveText("see http://archive/x for more"), "see http://archive/x for more");
  assert.equal(archiveText("bad C:\\data\\f.bin"), "bad …");
  assert.equal(archiveText("x".repeat(5000)).length, 200);
  assert.equal(archiveText("a\u0000b"), "a b");
});

Deno.test("an error page over 4 KiB reaches the error as a short cause without server paths", async () => {
  const page = "Can't open posix file: /srv/archive/secret/7.dat " + "x".repeat(6000);
  const fakeFetch = () => Promise.resolve(new Response(page, { status: 500 }));
  const client = new ArchiveClient("http://archive.invalid/", { fetch: fakeFetch });
  const err = await client.open("7").catch((e) => e);
  assert.ok(err instanceof ArchiveError);
  assert.ok(err.detail.length <= 200, `detail of ${err.detail.length} characters`);
  assert.ok(err.message.length < 300, err.message);
  assert.doesNotMatch(err.message, /secret/);
  assert.match(err.message, /answered 500 to GET: Can't open posix file: … x+…$/);
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
