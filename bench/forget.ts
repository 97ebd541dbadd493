/**
 * `deno task bench forget [--files N]`: how long removing a big cart's rows
 * (`CartStore.forget`, after a `DELETE`, a purge or a replacement) holds the thread that runs
 * it, on the embedded SQLite database: the whole time, and the longest the thread's event loop
 * went without a turn meanwhile (a 1 ms timer beside it), for carts of 10,000 and 100,000 files
 * (or `--files N`). A turn of the event loop is what the main thread needs to answer a request.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { openSqlite } from "../lib/db/sqlite.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { CartStore } from "../lib/store/store.ts";
import { printRows, type Row } from "./common.ts";

/** Forgets a cart of `count` files (paths of about 440 bytes); its time and longest gap. */
async function forgetOnce(store: CartStore, count: number): Promise<{ ms: number; gap: number }> {
  const pad = "p".repeat(400);
  const files = Array.from({ length: count }, (_, i) => ({
    id: `id-${i}`,
    path: `d${i % 100}/${pad}/f${i}.dat`,
  }));
  const doc = { files, bundle: false, manifest: false };
  const { cart } = await store.createCart(`forget-${count}`, doc, "0".repeat(64));
  await store.unlive(cart.id);
  let gap = 0;
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    gap = Math.max(gap, now - last);
    last = now;
  }, 1);
  await new Promise((resolve) => setTimeout(resolve, 20));
  gap = 0;
  last = performance.now();
  const t0 = performance.now();
  await store.forget(cart.id);
  const ms = performance.now() - t0;
  await new Promise((resolve) => setTimeout(resolve, 5)); // the timer's turn after the last batch
  clearInterval(timer);
  return { ms, gap: Math.max(gap, performance.now() - last) };
}

/** Entry point: prints the table; returns the exit code. */
export async function main(args: string[] = Deno.args.slice(1)): Promise<number> {
  const { values } = parseArgs({ args, options: { files: { type: "string" } } });
  const counts = values.files ? [Number(values.files)] : [10_000, 100_000];
  const dir = await Deno.makeTempDir({ prefix: "cartd-bench-forget-" });
  const db = openSqlite(join(dir, "cartd.sqlite3"));
  try {
    await syncSchema(db);
    const store = new CartStore(db);
    const rows: Row[] = [];
    for (const count of counts) {
      const { ms, gap } = await forgetOnce(store, count);
      rows.push({
        figure: `forget a cart of ${count.toLocaleString("en")} files: time / longest gap`,
        cartd: `${ms.toFixed(0)} ms / ${gap.toFixed(0)} ms`,
        target: "gap ≤ 100 ms",
        ok: gap <= 100,
      });
    }
    console.log(
      `cartd bench forget — ${new Date().toISOString()}, SQLite, Deno ${Deno.version.deno}`,
    );
    printRows(rows);
    return 0;
  } finally {
    await db.close();
    await Deno.remove(dir, { recursive: true });
  }
}
