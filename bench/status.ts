/**
 * `deno task bench status` (or `deno run -A bench/status.ts`): issue 16's progress figures.
 *
 * - HEAD rate of a ready cart: 8 clients HEAD it back to back for 5 s; prints HEADs per
 *   second. The target (with the progress headers: ≤ 5 % slower) is checked by running this
 *   same file on the code before them (copy it into that tree): it only writes carts through
 *   store methods that both have.
 * - `GET /{uid}/status` and one page of `GET /{uid}/files` (the default 100, and the most,
 *   1,000, from the middle) of a 100,000-file cart half staged: median and max of 20 each
 *   (target ≤ 100 ms). Code without those routes prints that they are missing.
 *
 * The carts are written into a fresh SQLite volume, then `cartd serve` runs on it (no worker,
 * so nothing moves).
 *
 * @module
 */
import { join } from "node:path";
import { parseCartDocument } from "../lib/cart/document.ts";
import { openSqlite } from "../lib/db/sqlite.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { CartStore } from "../lib/store/store.ts";
import { startCartd } from "../tests/support/harness.ts";

/** Files of the big cart. */
const BIG = 100_000;
/** Concurrent HEAD clients, and how long they run (ms). */
const CLIENTS = 8;
const HEAD_MS = 5_000;
/** Timed requests per status case; the target of issue 16 (ms). */
const REPEATS = 20;
const TARGET_MS = 100;

/** Writes a ready 3-file cart `ready` and a staging cart `big` of BIG files, half staged. */
async function fill(volume: string): Promise<void> {
  const db = openSqlite(join(volume, "cartd.sqlite3"));
  try {
    await syncSchema(db);
    const store = new CartStore(db);
    const doc = (n: number, p: string) =>
      parseCartDocument(JSON.stringify({
        fileids: Array.from({ length: n }, (_, i) => ({ id: `${p}-${i}`, path: `${p}/f${i}.dat` })),
      }));
    const { cart: ready } = await store.createCart("ready", doc(3, "r"), "hash-r");
    await store.startStaging(ready.id, null);
    const staged = { size: 10, mtime: 1, sha256: "cd".repeat(32), crc32: 1 };
    await store.filesStaged(ready.id, [0, 1, 2].map((idx) => ({ idx, facts: staged })));
    await store.startBundling(ready.id, null);
    await store.markReady(ready.id, null, { readyAt: Date.now(), size: 10_240, etag: '"e"' });
    const { cart: big } = await store.createCart("big", doc(BIG, "b"), "hash-b");
    await store.startStaging(big.id, null);
    const sizes = Array.from({ length: BIG }, (_, idx) => ({ idx, size: 1024, mtime: 1 }));
    await store.setFileSizes(big.id, sizes);
    await store.setTotalBytes(big.id, BIG * 1024);
    const facts = { size: 1024, mtime: 1, sha256: "ab".repeat(32), crc32: 1 };
    for (let start = 0; start < BIG / 2; start += 1000) {
      const batch = Array.from({ length: 1000 }, (_, i) => ({ idx: start + i, facts }));
      await store.filesStaged(big.id, batch);
    }
  } finally {
    await db.close();
  }
}

/** HEADs per second of `url` with CLIENTS clients for HEAD_MS. */
async function headRate(url: string): Promise<number> {
  const end = performance.now() + HEAD_MS;
  let count = 0;
  const client = async () => {
    while (performance.now() < end) {
      const res = await fetch(url, { method: "HEAD" });
      await res.body?.cancel();
      if (res.status !== 204) throw new Error(`HEAD answered ${res.status}`);
      count++;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, client));
  return count / ((performance.now() - started) / 1000);
}

/** Median and max (ms) of REPEATS GETs of `url`, or null when the route is missing. */
async function timed(url: string): Promise<{ median: number; max: number } | null> {
  const once = async () => {
    const started = performance.now();
    const res = await fetch(url);
    await res.arrayBuffer();
    if (res.status === 404) return null;
    if (res.status !== 200) throw new Error(`${url} answered ${res.status}`);
    return performance.now() - started;
  };
  if ((await once()) === null) return null;
  const times: number[] = [];
  for (let i = 0; i < REPEATS; i++) times.push((await once())!);
  times.sort((a, b) => a - b);
  return { median: (times[REPEATS / 2 - 1] + times[REPEATS / 2]) / 2, max: times.at(-1)! };
}

/** Runs the cases; returns the process exit code (1 when a status target is missed). */
export async function main(): Promise<number> {
  const volume = await Deno.makeTempDir({ prefix: "cartd-bench-status-" });
  try {
    const t0 = performance.now();
    await fill(volume);
    console.log(`carts written in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    await using cartd = await startCartd({
      role: "serve",
      volume,
      env: { ARCHIVE_INTERFACE_URL: "http://127.0.0.1:9/" },
    });
    const probe = await fetch(cartd.url + "ready", { method: "HEAD" });
    await probe.body?.cancel();
    const progress = probe.headers.get("x-cartd-files");
    const rate = await headRate(cartd.url + "ready");
    console.log(
      `HEAD of a ready cart, ${CLIENTS} clients, ${HEAD_MS / 1000} s: ${rate.toFixed(0)}/s ` +
        `(progress headers ${progress === null ? "absent" : `on: X-Cartd-Files ${progress}`})`,
    );
    let ok = true;
    for (
      const [name, path] of [
        ["status", "big/status"],
        ["files, default page", "big/files"],
        ["files, 1,000 from the middle", `big/files?after=${BIG / 2}&limit=1000`],
      ]
    ) {
      const t = await timed(cartd.url + path);
      if (!t) {
        console.log(`GET /{uid}/${name} of ${BIG} files: no such route here`);
        continue;
      }
      const met = t.max <= TARGET_MS;
      ok &&= met;
      console.log(
        `GET ${path} (${name}), ${BIG} files, ${REPEATS} times: median ${t.median.toFixed(1)} ` +
          `ms, max ${t.max.toFixed(1)} ms (target ≤ ${TARGET_MS} ms) ${met ? "OK" : "MISS"}`,
      );
    }
    return ok ? 0 : 1;
  } finally {
    await Deno.remove(volume, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) Deno.exit(await main());
