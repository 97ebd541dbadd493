/**
 * `deno task bench status` (or `deno run -A bench/status.ts`): issue 16's progress figures.
 *
 * - HEAD rate of a ready cart: 8 clients HEAD it back to back, with the progress headers (the
 *   default) and without them (`CARTD_PROGRESS_HEADERS=false`), each from its own
 *   `cartd serve` on the volume, by turns of 1.5 s (10 each; the order turns), and a third
 *   process with the headers on as a control (its difference from the first is the noise of
 *   the run). Prints the rates and the server's CPU time per HEAD, the paired ratios' medians,
 *   against issue 16's target (≤ 5 % slower); then the handler alone in this process
 *   (`cartRoutes` on a SQLite store, headers on and off by turns), free of network and clients.
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
import { loadConfig } from "../lib/config/config.ts";
import { MemoryQueue } from "../lib/queue/memory.ts";
import { Cancellations } from "../lib/space/cancellations.ts";
import { Volume } from "../lib/volume/volume.ts";
import { cartRoutes } from "../http/routes.ts";
import { startCartd } from "../tests/support/harness.ts";
import { median } from "./common.ts";

/** Files of the big cart. */
const BIG = 100_000;
/** Concurrent HEAD clients, and how long they run (ms). */
const CLIENTS = 8;
const HEAD_MS = 5_000;
/** Turns of HEADs with the progress headers and without, the length of each (ms). */
const HEAD_ROUNDS = 10;
const HEAD_SLICE_MS = 1_500;
/** Issue 16's target: HEAD at most 5 % slower with the progress headers. */
const HEAD_TARGET = 0.05;
/** HEADs per turn, and turns each way, of the handler alone (in this process). */
const HANDLER_BATCH = 200;
const HANDLER_ROUNDS = 200;
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

/** User + system CPU seconds of process `pid` so far. */
function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * HEADs per second of `url` with CLIENTS clients for `ms` (HEAD_MS), and, with the server's
 * `pid`, the server's CPU time per HEAD (µs): less sensitive than the rate to the other work
 * on the machine, which takes the clients' and the server's turns alike.
 */
async function headRate(url: string, ms = HEAD_MS, pid?: number) {
  const end = performance.now() + ms;
  let count = 0;
  const client = async () => {
    while (performance.now() < end) {
      const res = await fetch(url, { method: "HEAD" });
      await res.body?.cancel();
      if (res.status !== 204) throw new Error(`HEAD answered ${res.status}`);
      count++;
    }
  };
  const cpu0 = pid ? cpuSeconds(pid) : 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, client));
  const rate = count / ((performance.now() - started) / 1000);
  return { rate, cpuUs: pid ? (cpuSeconds(pid) - cpu0) * 1e6 / count : NaN };
}

/**
 * The handler's time per HEAD of a ready cart (µs, the medians of the turns), with the
 * progress headers and without: two apps of `cartRoutes` on one SQLite store in this
 * process, HEADs by turns of HANDLER_BATCH (on, off, off, on), so the network and the
 * clients do not blur the difference; and the median and quartiles of the rounds' ratios.
 */
async function handlerCost(): Promise<{ on: number; off: number; ratio: number[] }> {
  const dir = await Deno.makeTempDir({ prefix: "cartd-bench-handler-" });
  const db = openSqlite(join(dir, "cartd.sqlite3"));
  try {
    await syncSchema(db);
    const store = new CartStore(db);
    const doc = parseCartDocument('{"fileids": [{"id": "1", "path": "a"}]}');
    const { cart } = await store.createCart("ready", doc, "hash");
    await store.startStaging(cart.id, null);
    const facts = { size: 10, mtime: 1, sha256: "cd".repeat(32), crc32: 1 };
    await store.filesStaged(cart.id, [{ idx: 0, facts }]);
    await store.startBundling(cart.id, null);
    await store.markReady(cart.id, null, { readyAt: Date.now(), size: 10_240, etag: '"e"' });
    const app = (on: boolean) => {
      const config = loadConfig({
        VOLUME_PATH: join(dir, "volume"),
        CARTD_PROGRESS_HEADERS: String(on),
      });
      return cartRoutes({
        store,
        queue: new MemoryQueue(),
        volume: new Volume(join(dir, "volume")),
        config,
        cancellations: new Cancellations(),
      });
    };
    const apps = { on: app(true), off: app(false) };
    const turn = async (which: "on" | "off") => {
      const started = performance.now();
      for (let i = 0; i < HANDLER_BATCH; i++) {
        const res = await apps[which].fetch(
          new Request("http://cartd/ready", { method: "HEAD", headers: { host: "cartd" } }),
        );
        if (res.status !== 204) throw new Error(`HEAD answered ${res.status}`);
      }
      return (performance.now() - started) * 1000 / HANDLER_BATCH;
    };
    await turn("on");
    await turn("off");
    const times = { on: [] as number[], off: [] as number[] };
    const ratios: number[] = [];
    for (let round = 0; round < HANDLER_ROUNDS; round++) {
      const [a, b, c, d] = [
        await turn("on"),
        await turn("off"),
        await turn("off"),
        await turn("on"),
      ];
      times.on.push(a, d);
      times.off.push(b, c);
      ratios.push((a + d) / (b + c));
    }
    ratios.sort((x, y) => x - y);
    const q = (f: number) => ratios[Math.floor(f * (ratios.length - 1))];
    return { on: median(times.on), off: median(times.off), ratio: [q(0.25), q(0.5), q(0.75)] };
  } finally {
    await db.close();
    await Deno.remove(dir, { recursive: true });
  }
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
    const load = () => Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
    console.log(`load average: ${load()} (other work on the machine adds noise)`);
    // Headers on and off: two `cartd serve` processes on the volume, measured by turns in
    // short slices (the order alternating), so that drift in the machine's load hits both.
    const serve = (on: boolean) =>
      startCartd({
        role: "serve",
        volume,
        env: {
          ARCHIVE_INTERFACE_URL: "http://127.0.0.1:9/",
          CARTD_PROGRESS_HEADERS: String(on),
        },
      });
    // A third process, headers on too, is the control: what the same code differs by
    // from itself in this run is the noise the on/off figure has to be read against.
    const servers = { on: await serve(true), off: await serve(false), control: await serve(true) };
    for (const [name, c] of Object.entries(servers)) {
      const probe = await fetch(c.url + "ready", { method: "HEAD" });
      await probe.body?.cancel();
      const files = probe.headers.get("x-cartd-files");
      console.log(`  ${name}: X-Cartd-Files ${files === null ? "absent" : files}`);
      await headRate(c.url + "ready", 1000); // warm up
    }
    type Mode = keyof typeof servers;
    const modes: Mode[] = ["on", "off", "control"];
    const got = { on: [], off: [], control: [] } as Record<Mode, { rate: number; cpuUs: number }[]>;
    for (let round = 0; round < HEAD_ROUNDS; round++) {
      // The order turns each round, so no mode always follows another.
      for (let k = 0; k < modes.length; k++) {
        const mode = modes[(k + round) % modes.length];
        const c = servers[mode];
        got[mode].push(await headRate(c.url + "ready", HEAD_SLICE_MS, c.process.pid));
      }
    }
    /** The median over the rounds of `a`'s figure over `b`'s, less 1. */
    const paired = (a: Mode, b: Mode, figure: "rate" | "cpuUs") =>
      median(got[a].map((x, i) => x[figure] / got[b][i][figure])) - 1;
    const med = (mode: Mode, figure: "rate" | "cpuUs") => median(got[mode].map((x) => x[figure]));
    const slower = -paired("on", "off", "rate");
    const pct = (x: number) => `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)} %`;
    console.log(
      `HEAD of a ready cart, ${CLIENTS} clients, ${HEAD_ROUNDS} turns × ${
        HEAD_SLICE_MS / 1000
      } s ` +
        `each: ${med("on", "rate").toFixed(0)}/s with the progress headers, ` +
        `${med("off", "rate").toFixed(0)}/s without (medians); paired, the rate with them: ` +
        `${pct(-slower)} (target ≥ −${100 * HEAD_TARGET} %) ${
          slower <= HEAD_TARGET ? "OK" : "MISS"
        }`,
    );
    console.log(
      `  server CPU per HEAD: ${med("on", "cpuUs").toFixed(0)} µs with them, ` +
        `${med("off", "cpuUs").toFixed(0)} µs without: ${pct(paired("on", "off", "cpuUs"))}; ` +
        `control (headers on, a second process) against on: rate ` +
        `${pct(paired("control", "on", "rate"))}, CPU ${pct(paired("control", "on", "cpuUs"))} ` +
        `(the noise of this run); load ${load()}`,
    );
    const handler = await handlerCost();
    console.log(
      `  the handler alone, in process (${HANDLER_ROUNDS} rounds of 4 turns of ${HANDLER_BATCH} ` +
        `HEADs): ${handler.on.toFixed(1)} µs with the headers, ${handler.off.toFixed(1)} µs ` +
        `without (medians); the rounds' ratio: ${pct(handler.ratio[1] - 1)} (quartiles ` +
        `${pct(handler.ratio[0] - 1)}, ${pct(handler.ratio[2] - 1)})`,
    );
    const headOk = slower <= HEAD_TARGET;
    await servers.off[Symbol.asyncDispose]();
    await servers.control[Symbol.asyncDispose]();
    await using cartd = servers.on;
    let ok = headOk;
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
