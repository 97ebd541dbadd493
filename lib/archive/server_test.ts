import assert from "node:assert/strict";
import { join } from "node:path";
import { serveArchive } from "./server.ts";
import { ArchiveClient } from "./client.ts";
import { DEFAULT_STAGE_SETTINGS, stageFile } from "../staging/stage_file.ts";

async function setup() {
  const root = await Deno.makeTempDir({ prefix: "archive_server_test_" });
  const prefix = join(root, "archive");
  await Deno.mkdir(join(prefix, "1", "2", "3"), { recursive: true });
  await Deno.writeTextFile(join(prefix, "1", "2", "3", "foo.txt"), "hello foo\n");
  await Deno.writeTextFile(join(prefix, "sp ace#?.txt"), "odd name");
  await Deno.writeTextFile(join(root, "secret.txt"), "outside");
  await Deno.symlink(join(root, "secret.txt"), join(prefix, "link.txt"));
  await Deno.utime(join(prefix, "1", "2", "3", "foo.txt"), 1795991303.5, 1795991303.5);
  const ac = new AbortController();
  const server = serveArchive({ prefix, port: 0, hostname: "127.0.0.1", signal: ac.signal });
  const url = `http://127.0.0.1:${server.addr.port}/`;
  return {
    root,
    prefix,
    url,
    client: new ArchiveClient(url),
    async [Symbol.asyncDispose]() {
      ac.abort();
      await server.finished;
      await Deno.remove(root, { recursive: true });
    },
  };
}

Deno.test("HEAD of a file answers 204 with Pacifica's headers", async () => {
  await using t = await setup();
  const res = await fetch(t.url + "1/2/3/foo.txt", { method: "HEAD" });
  assert.equal(res.status, 204);
  assert.equal(res.headers.get("X-Pacifica-File-Storage-Media"), "disk");
  assert.equal(res.headers.get("X-Content-Length"), "10");
  assert.equal(res.headers.get("Last-Modified"), "1795991303.5");
  assert.equal(res.headers.get("X-Pacifica-Messsage"), "File was found");
  assert.equal(res.headers.get("X-Pacifica-Bytes-Per-Level"), "(10,)");
  assert.ok(res.headers.get("X-Pacifica-Ctime"));
  assert.deepEqual(await t.client.status("1/2/3/foo.txt"), {
    media: "disk",
    size: 10,
    mtime: 1795991303.5,
    message: "File was found",
  });
});

Deno.test("GET streams the bytes chunked; POST answers 200", async () => {
  await using t = await setup();
  const res = await fetch(t.url + "1/2/3/foo.txt");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-length"), null);
  assert.equal(await res.text(), "hello foo\n");
  const post = await fetch(t.url + "1/2/3/foo.txt", { method: "POST", body: "" });
  assert.equal(post.status, 200);
  await post.body?.cancel();
  await t.client.stage("1/2/3/foo.txt");
});

Deno.test("percent-encoded ids are decoded", async () => {
  await using t = await setup();
  const body = await t.client.open("sp ace#?.txt");
  assert.equal(await new Response(body).text(), "odd name");
});

Deno.test("a large file is served whole", async () => {
  await using t = await setup();
  const data = new Uint8Array(5_000_003).map((_, i) => (i * 31) & 0xff);
  await Deno.writeFile(join(t.prefix, "big.bin"), data);
  const got = new Uint8Array(await (await fetch(t.url + "big.bin")).arrayBuffer());
  assert.deepEqual(got, data);
});

Deno.test("missing files, folders and escapes answer 500 JSON", async () => {
  await using t = await setup();
  for (const path of ["nope.txt", "1/2", "..%2Fsecret.txt", "1/..%2F..%2Fsecret.txt", "link.txt"]) {
    for (const method of ["GET", "POST"]) {
      const res = await fetch(t.url + path, { method });
      assert.equal(res.status, 500, `${method} ${path}`);
      assert.equal(res.headers.get("content-type"), "application/json");
      const json = await res.json();
      assert.equal(typeof json.message, "string");
      assert.ok(!json.message.includes(t.root), "must not reveal server paths");
    }
    const head = await fetch(t.url + path, { method: "HEAD" });
    assert.equal(head.status, 500);
  }
  await assert.rejects(t.client.status("../secret.txt"), /500/);
  await assert.rejects(t.client.open("../secret.txt"), /outside the archive/);
});

Deno.test("stageFile works against the local archive", async () => {
  await using t = await setup();
  const dest = join(t.root, "cart", "foo.txt");
  const res = await stageFile({
    archiveUrl: t.url,
    archiveId: "1/2/3/foo.txt",
    dest,
    label: "fileids[0] (id 1/2/3/foo.txt)",
    hashtype: "md5",
    hashsum: "E23000915B9A8405DCCE5B758EFD9D75",
  }, DEFAULT_STAGE_SETTINGS);
  assert.equal(await Deno.readTextFile(dest), "hello foo\n");
  assert.equal(res.mtime, 1795991303.5);
  assert.equal((await Deno.stat(dest)).mtime?.getTime(), 1795991303500);
});

Deno.test("other methods answer 405 JSON", async () => {
  await using t = await setup();
  const res = await fetch(t.url + "1/2/3/foo.txt", { method: "PUT", body: "x" });
  assert.equal(res.status, 405);
  assert.match((await res.json()).message, /PUT/);
});

Deno.test("serveArchive refuses a missing folder or a file, naming the path and the flag", async () => {
  await using t = await setup();
  const file = join(t.prefix, "sp ace#?.txt");
  const missing = join(t.root, "nope");
  assert.throws(
    () => serveArchive({ prefix: missing, port: 0, hostname: "127.0.0.1" }),
    new RegExp(`the archive folder ${missing} \\(--prefix ${missing}\\) does not exist`),
  );
  assert.throws(
    () =>
      serveArchive({ prefix: file, port: 0, hostname: "127.0.0.1", prefixFlag: "--archive-dir" }),
    /\(--archive-dir .*sp ace#\?\.txt\) is not a folder/,
  );
});

Deno.test("serveArchive on a taken port names the address and the flag that changes it", async () => {
  await using t = await setup();
  const port = new URL(t.url).port;
  assert.throws(
    () =>
      serveArchive({
        prefix: t.prefix,
        port: Number(port),
        hostname: "127.0.0.1",
        portFlag: "--archive-port PORT",
      }),
    new RegExp(
      `the archive cannot listen on 127\\.0\\.0\\.1:${port}: the address is already in use.*` +
        "choose another with --archive-port PORT",
    ),
  );
});
