/**
 * `deno task bench access` (or `deno run -A bench/access.ts`): the cost of access control
 * (issue 17: ≤ 5 %), side by side with access off, in one run.
 *
 * One SQLite volume holds the same two ready carts twice, once without an owner (access off)
 * and once of `alice`: `ready` (3 small files) and `big` (one 1 GiB file). `cartd serve` runs
 * on it with access off, then on (a tokens file, JWTs and the proxy header all on, the request
 * rate quota out of the way), in alternating rounds. Each round: HEAD of `ready` by 8 clients
 * for 5 s (HEADs per second), and the 1 GiB GET of `big` by curl, 3 times (the median's
 * MiB/s). With access on, each request carries alice's bearer token and writes its access log
 * line, as in production. The figures are medians over the rounds, and their ratios.
 *
 * @module
 */
import { join } from "node:path";
import { planCartBundle } from "../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import { parseCartDocument } from "../lib/cart/document.ts";
import { openSqlite } from "../lib/db/sqlite.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { CartStore } from "../lib/store/store.ts";
import { Volume } from "../lib/volume/volume.ts";
import { tokenDigest } from "../http/access.ts";
import { startCartd } from "../tests/support/harness.ts";
import { exec, GiB, median, MiB } from "./common.ts";

const TOKEN = "bench-token-of-alice-0123456789";
const CLIENTS = 8;
const HEAD_MS = 5_000;
const GETS = 3;
const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);

/** Writes the carts `ready` and `big` of `owner` (files on the volume, rows in the store). */
async function fill(store: CartStore, volume: Volume, owner: string): Promise<void> {
  for (const [uid, sizes] of [["ready", [10, 10, 10]], ["big", [GiB]]] as const) {
    const doc = parseCartDocument(JSON.stringify({
      fileids: sizes.map((_, i) => ({ id: `${uid}-${i}`, path: `${uid}/f${i}.dat` })),
    }));
    const { cart } = await store.createCart(uid, doc, `${uid}-${owner}`, owner);
    await volume.prepare(cart.id);
    await store.startStaging(cart.id, null);
    for (const [idx, size] of sizes.entries()) {
      const path = volume.filePath(cart.id, idx);
      await Deno.writeFile(path, new Uint8Array(0));
      await Deno.truncate(path, size); // sparse: the bench measures cartd, not the disk
      await store.fileStaged(cart.id, idx, {
        size,
        mtime: 1,
        sha256: "ab".repeat(32),
        crc32: 1,
      });
    }
    await store.startBundling(cart.id, null);
    const readyAt = Date.now();
    const plan = planCartBundle(
      { ...cart, readyAt },
      await StagedFiles.load(store, cart, volume),
    );
    await store.markReady(cart.id, null, { readyAt, size: plan.size, etag: plan.etag });
  }
}

/** HEADs per second of `url` with CLIENTS clients for HEAD_MS. */
async function headRate(url: string, headers: Record<string, string>): Promise<number> {
  const end = performance.now() + HEAD_MS;
  let count = 0;
  const client = async () => {
    while (performance.now() < end) {
      const res = await fetch(url, { method: "HEAD", headers });
      await res.body?.cancel();
      if (res.status !== 204) throw new Error(`HEAD answered ${res.status}`);
      count++;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, client));
  return count / ((performance.now() - started) / 1000);
}

/** MiB/s of one curl GET of `url` (1 GiB and a little). */
async function download(url: string, headers: Record<string, string>): Promise<number> {
  const args = ["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"];
  for (const [k, v] of Object.entries(headers)) args.push("-H", `${k}: ${v}`);
  const r = await exec("curl", [...args, url]);
  const [status, bytes, seconds] = r.stdout.trim().split(" ").map(Number);
  if (status !== 200 || bytes < GiB) throw new Error(`GET answered ${status}, ${bytes} bytes`);
  return bytes / MiB / seconds;
}

/** Runs the rounds and prints the figures; returns the exit code. */
export async function main(): Promise<number> {
  const dir = await Deno.makeTempDir({ prefix: "cartd-bench-access-" });
  try {
    const db = openSqlite(join(dir, "cartd.sqlite3"));
    await syncSchema(db);
    const store = new CartStore(db);
    const volume = new Volume(dir);
    await fill(store, volume, "");
    await fill(store, volume, "alice");
    await db.close();
    await Deno.writeTextFile(join(dir, "tokens"), `${tokenDigest(TOKEN)} alice\n`);
    const modes = {
      off: { env: {}, headers: {} as Record<string, string> },
      on: {
        env: {
          CARTD_ACCESS_TOKENS: join(dir, "tokens"),
          CARTD_ACCESS_JWT_SECRET: "bench-jwt-secret-0123456789abcdef",
          CARTD_ACCESS_PROXY_ADDRESSES: "127.0.0.2/32",
          CARTD_QUOTA_RATE: "1000000",
        },
        headers: { authorization: `Bearer ${TOKEN}` },
      },
    };
    const figures = {
      off: { head: [] as number[], get: [] as number[] },
      on: { head: [] as number[], get: [] as number[] },
    };
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of round % 2 ? ["on", "off"] as const : ["off", "on"] as const) {
        const { env, headers } = modes[mode];
        await using cartd = await startCartd({
          role: "serve",
          volume: dir,
          env: { ARCHIVE_INTERFACE_URL: "http://127.0.0.1:9/", CARTD_LOG_LEVEL: "info", ...env },
        });
        const head = await headRate(cartd.url + "ready", headers);
        const gets: number[] = [];
        for (let i = 0; i < GETS; i++) gets.push(await download(cartd.url + "big", headers));
        figures[mode].head.push(head);
        figures[mode].get.push(median(gets));
        console.log(
          `round ${round + 1}, access ${mode}: HEAD ${head.toFixed(0)}/s; ` +
            `1 GiB GET ${median(gets).toFixed(0)} MiB/s (median of ${GETS})`,
        );
      }
    }
    const m = (xs: number[]) => median(xs);
    const headCost = 1 - m(figures.on.head) / m(figures.off.head);
    const getCost = 1 - m(figures.on.get) / m(figures.off.get);
    console.log(
      `HEAD, ${CLIENTS} clients: off ${m(figures.off.head).toFixed(0)}/s, on ` +
        `${m(figures.on.head).toFixed(0)}/s: access costs ${(headCost * 100).toFixed(1)} % ` +
        `(target ≤ 5 %)`,
    );
    console.log(
      `1 GiB GET: off ${m(figures.off.get).toFixed(0)} MiB/s, on ${m(figures.on.get).toFixed(0)} ` +
        `MiB/s: access costs ${(getCost * 100).toFixed(1)} % (target ≤ 5 %)`,
    );
    return 0;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) Deno.exit(await main());
