/**
 * `deno task bench metrics` (or `deno run -A bench/metrics.ts`): the time of `GET
 * /_cartd/metrics` with 10,000 live carts (issue 16's target: ≤ 50 ms). The carts are
 * written through the store into a fresh SQLite volume, a third of them in progress with a
 * reservation (so the space report's query of what they still owe has rows to read) and the
 * rest ready; then `cartd serve` runs on it (no worker, so nothing moves) and the route is
 * fetched 20 times after one unmeasured scrape. Prints the median and the max.
 *
 * @module
 */
import { join } from "node:path";
import { parseCartDocument } from "../lib/cart/document.ts";
import { openSqlite } from "../lib/db/sqlite.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { CartStore } from "../lib/store/store.ts";
import { startCartd } from "../tests/support/harness.ts";

/** Live carts in the database. */
const CARTS = 10_000;
/** Timed scrapes. */
const SCRAPES = 20;
/** The target of issue 16, in ms. */
const TARGET_MS = 50;

/** Writes `CARTS` live carts of 3 files each into the SQLite file of `volume`. */
async function fill(volume: string): Promise<void> {
  const db = openSqlite(join(volume, "cartd.sqlite3"));
  try {
    await syncSchema(db);
    const store = new CartStore(db);
    for (let i = 0; i < CARTS; i++) {
      const files = [0, 1, 2].map((f) => ({ id: `id-${i}-${f}`, path: `c${i}/f${f}.dat` }));
      const doc = parseCartDocument(JSON.stringify({ fileids: files }));
      const { cart } = await store.createCart(`cart-${i}`, doc, `hash-${i}`);
      if (i % 3 === 0) {
        await store.startStaging(cart.id, null);
        await store.setReserved(cart.id, 3 * 1024);
      } else {
        await store.startStaging(cart.id, null);
        await store.startBundling(cart.id, null);
        await store.markReady(cart.id, null, { readyAt: Date.now(), size: 10_240, etag: '"e"' });
      }
    }
  } finally {
    await db.close();
  }
}

/** Runs the case; returns the process exit code (1 when the target is missed). */
export async function main(): Promise<number> {
  const volume = await Deno.makeTempDir({ prefix: "cartd-bench-metrics-" });
  try {
    const t0 = performance.now();
    await fill(volume);
    console.log(`${CARTS} live carts written in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    await using cartd = await startCartd({
      role: "serve",
      volume,
      env: { ARCHIVE_INTERFACE_URL: "http://127.0.0.1:9/" },
    });
    const scrape = async () => {
      const started = performance.now();
      const res = await fetch(cartd.url + "_cartd/metrics");
      const text = await res.text();
      if (res.status !== 200) throw new Error(`the metrics answered ${res.status}: ${text}`);
      return { ms: performance.now() - started, text };
    };
    const first = await scrape();
    const live = [...first.text.matchAll(/^cartd_carts\{[^}]*\} (\d+)$/gm)]
      .reduce((n, m) => n + Number(m[1]), 0);
    if (live !== CARTS) throw new Error(`the metrics count ${live} live carts, not ${CARTS}`);
    const times: number[] = [];
    for (let i = 0; i < SCRAPES; i++) times.push((await scrape()).ms);
    times.sort((a, b) => a - b);
    const median = (times[SCRAPES / 2 - 1] + times[SCRAPES / 2]) / 2;
    const max = times[times.length - 1];
    const ok = max <= TARGET_MS;
    console.log(
      `GET /_cartd/metrics, ${CARTS} live carts, ${SCRAPES} scrapes: median ` +
        `${median.toFixed(1)} ms, max ${max.toFixed(1)} ms (target ≤ ${TARGET_MS} ms) ` +
        (ok ? "OK" : "MISS"),
    );
    return ok ? 0 : 1;
  } finally {
    await Deno.remove(volume, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) Deno.exit(await main());
