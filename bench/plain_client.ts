/**
 * The "plain client" baseline of the staging benchmarks: what a script without cartd does for
 * each file — `POST` (stage request), `HEAD` (status and size), `GET` written to
 * `DIR/<id>.part` and renamed to `DIR/<id>` — with `CONCURRENCY` files at once (cartd's
 * `CARTD_FILES_PER_CART`). No database. With `HASH` (e.g. `sha256`), each body is hashed as it
 * is written (node:crypto, streaming, one pass) and the digest checked against `EXPECTED`
 * when that is given: what cartd does for a cart document that carries hashes.
 *
 * `deno run --allow-net --allow-read --allow-write bench/plain_client.ts ARCHIVE_URL PREFIX
 * COUNT CONCURRENCY DIR [HASH [EXPECTED]]` prints `{"files": N, "bytes": B, "seconds": S}`.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { benchIds } from "./common.ts";

const [base, prefix, count, concurrency, dir, hash, expected] = Deno.args;
const ids = benchIds(prefix, Number(count));

/** Writes `body` to `path`, hashing it on the way; returns the hex digest. */
async function writeHashed(path: string, body: ReadableStream<Uint8Array>): Promise<string> {
  const digest = createHash(hash);
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  for await (const chunk of body) {
    const writing = (async () => {
      for (let off = 0; off < chunk.byteLength;) off += await file.write(chunk.subarray(off));
    })();
    digest.update(chunk);
    await writing;
  }
  return digest.digest("hex");
}

async function one(id: string): Promise<number> {
  const url = base + encodeURIComponent(id);
  const post = await fetch(url, { method: "POST", body: "" });
  await post.body?.cancel();
  if (!post.ok) throw new Error(`POST ${id}: ${post.status}`);
  const head = await fetch(url, { method: "HEAD" });
  await head.body?.cancel();
  if (head.headers.get("x-pacifica-file-storage-media") !== "disk") {
    throw new Error(`HEAD ${id}: not on disk`);
  }
  const size = Number(head.headers.get("x-content-length"));
  const res = await fetch(url);
  if (!res.ok || !res.body) throw new Error(`GET ${id}: ${res.status}`);
  const part = `${dir}/${id}.part`;
  if (hash) {
    const got = await writeHashed(part, res.body);
    if (expected && got !== expected) throw new Error(`GET ${id}: ${hash} ${got}, not ${expected}`);
  } else {
    await Deno.writeFile(part, res.body);
  }
  const written = (await Deno.stat(part)).size;
  if (written !== size) throw new Error(`GET ${id}: ${written} of ${size} bytes`);
  await Deno.rename(part, `${dir}/${id}`);
  return written;
}

const t0 = performance.now();
let next = 0;
let bytes = 0;
await Promise.all(
  Array.from({ length: Number(concurrency) }, async () => {
    while (next < ids.length) {
      const written = await one(ids[next++]);
      bytes += written; // not `bytes += await …`, which adds to the total read before the wait
    }
  }),
);
const seconds = (performance.now() - t0) / 1000;
console.log(JSON.stringify({ files: ids.length, bytes, seconds }));
