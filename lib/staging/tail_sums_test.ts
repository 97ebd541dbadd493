import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import { QuickFs } from "./quick_fs.ts";
import { TailSums } from "./tail_sums.ts";

/** `n` bytes of a pattern that differs from chunk to chunk. */
function bytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed * 7) & 0xff;
  return out;
}

/** A temporary file, open for appending, removed on dispose. */
async function growingFile() {
  const path = await Deno.makeTempFile({ prefix: "tail_sums_test_" });
  const writer = await Deno.open(path, { write: true, append: true });
  return {
    path,
    async append(data: Uint8Array) {
      for (let off = 0; off < data.byteLength;) off += await writer.write(data.subarray(off));
    },
    async [Symbol.asyncDispose]() {
      try {
        writer.close();
      } catch { /* closed */ }
      await Deno.remove(path);
    },
  };
}

Deno.test("the sums read behind a writer are those of the whole file", async () => {
  await using file = await growingFile();
  const sha256 = createHash("sha256");
  const sha1 = createHash("sha1");
  using tail = await TailSums.open(file.path, [sha256, sha1], new QuickFs());
  const parts = [bytes(3 << 20, 1), bytes(12_345, 2), bytes(0, 3), bytes((1 << 20) + 1, 4)];
  const seen: number[] = [];
  for (const part of parts) {
    await file.append(part);
    // Everything written so far is read: what a tick of the pipe's watchdog does.
    while (!(await tail.catchUp(1_000))) { /* more to read */ }
    seen.push(tail.bytes);
    assert.equal(await tail.size(), tail.bytes);
  }
  await tail.finish();
  const all = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let off = 0;
  for (const part of parts) all.set(part, (off += part.byteLength) - part.byteLength);
  assert.deepEqual(seen, [3 << 20, (3 << 20) + 12_345, (3 << 20) + 12_345, all.byteLength]);
  assert.equal(tail.bytes, all.byteLength);
  assert.equal(tail.crc32, crc32(all) >>> 0);
  assert.equal(sha256.digest("hex"), createHash("sha256").update(all).digest("hex"));
  assert.equal(sha1.digest("hex"), createHash("sha1").update(all).digest("hex"));
});

Deno.test("a catch-up stops at its time budget, after one chunk at least; finish reads the rest", async () => {
  await using file = await growingFile();
  await file.append(bytes(5 << 20, 9));
  // A clock that moves 1 ms a look: a budget of 1 ms allows one chunk (1 MiB) a call.
  let t = 0;
  using tail = await TailSums.open(file.path, [], new QuickFs(), () => t++);
  assert.equal(await tail.catchUp(1), false);
  assert.equal(tail.bytes, 1 << 20);
  assert.equal(await tail.catchUp(1), false);
  assert.equal(tail.bytes, 2 << 20);
  await tail.finish();
  assert.equal(tail.bytes, 5 << 20);
  assert.equal(tail.crc32, crc32(bytes(5 << 20, 9)) >>> 0);
  // At the end of what is written: true, and nothing more read.
  assert.equal(await tail.catchUp(1), true);
  assert.equal(tail.bytes, 5 << 20);
});

Deno.test("a catch-up asked while one runs reads nothing more", async () => {
  await using file = await growingFile();
  await file.append(bytes(2 << 20, 5));
  // A volume judged slow: reads are asynchronous, so a second call comes while one runs.
  const slow = new QuickFs(2, 60_000);
  await slow.call(() => {
    const until = performance.now() + 30;
    while (performance.now() < until) { /* a slow synchronous call */ }
  }, () => Promise.resolve());
  assert.equal(slow.quick, false);
  let t = 0;
  using tail = await TailSums.open(file.path, [], slow, () => t++);
  const first = tail.catchUp(1);
  const second = tail.catchUp(1);
  assert.equal(await second, false);
  assert.equal(await first, false);
  assert.equal(tail.bytes, 1 << 20, "the second call waited for the first and read nothing");
  await tail.finish();
  assert.equal(tail.bytes, 2 << 20);
});

Deno.test("a read that fails is thrown by finish, not by the catch-up", async () => {
  await using file = await growingFile();
  await file.append(bytes(1000, 1));
  const tail = await TailSums.open(file.path, [], new QuickFs());
  tail[Symbol.dispose](); // the handle is closed: every read fails
  assert.equal(await tail.catchUp(5), false);
  await assert.rejects(tail.finish(), Deno.errors.BadResource);
});

Deno.test("finish stops when its signal aborts", async () => {
  await using file = await growingFile();
  await file.append(bytes(3 << 20, 2));
  let t = 0;
  using tail = await TailSums.open(file.path, [], new QuickFs(), () => t++);
  const stop = new AbortController();
  stop.abort(new Error("stopped"));
  await assert.rejects(tail.finish(stop.signal), /stopped/);
  assert.equal(tail.bytes, 0);
});

Deno.test("a catch-up asked while finish runs reads nothing: the chunks are summed in order", async () => {
  await using file = await growingFile();
  const data = bytes(6 << 20, 8);
  await file.append(data);
  const sha256 = createHash("sha256");
  using tail = await TailSums.open(file.path, [sha256], new QuickFs());
  const finishing = tail.finish();
  // What a tick of the download's watchdog does while the rest is read.
  const ticks = [tail.catchUp(1_000), tail.catchUp(1_000)];
  await finishing;
  assert.deepEqual(await Promise.all(ticks), [false, false]);
  assert.equal(tail.bytes, data.byteLength);
  assert.equal(tail.crc32, crc32(data) >>> 0);
  assert.equal(sha256.digest("hex"), createHash("sha256").update(data).digest("hex"));
});
