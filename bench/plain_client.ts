/**
 * The "plain client" baseline of the many-small-files benchmark: what a script without cartd
 * does for each file — `POST` (stage request), `HEAD` (status and size), `GET` written to
 * `DIR/<id>.part` and renamed to `DIR/<id>` — with `CONCURRENCY` files at once (cartd's
 * `CARTD_FILES_PER_CART`). No hashing, no database.
 *
 * `deno run --allow-net --allow-read --allow-write bench/plain_client.ts ARCHIVE_URL PREFIX
 * COUNT CONCURRENCY DIR` prints `{"files": N, "bytes": B, "seconds": S}`.
 *
 * @module
 */
import { benchIds } from "./common.ts";

const [base, prefix, count, concurrency, dir] = Deno.args;
const ids = benchIds(prefix, Number(count));

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
  await Deno.writeFile(part, res.body);
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
    while (next < ids.length) bytes += await one(ids[next++]);
  }),
);
const seconds = (performance.now() - t0) / 1000;
console.log(JSON.stringify({ files: ids.length, bytes, seconds }));
