/**
 * `deno task bench access` (or `deno run -A bench/access.ts`): the cost of access control
 * (issue 17: ≤ 5 %), side by side with access off, in one run.
 *
 * One SQLite volume holds the same two ready carts twice, once without an owner (access off)
 * and once of `alice`: `ready` (3 small files) and `big` (one sparse 1 GiB file). Two
 * `cartd serve` processes run on it at once, access off and access on (a tokens file, JWTs and
 * the proxy header all on, the request rate quota out of the way). Each round, for each
 * process in turn (the order alternates): HEAD of `ready` by 8 clients for 2 s (HEADs per
 * second, and the process's CPU per HEAD), then one curl GET of `big` (MiB/s, and CPU). With
 * access on, each request carries alice's bearer token and writes its access log line (HEAD's
 * at debug, as shipped); then the HEADs again to access on with alice's JWT (HS256) instead of
 * the token. Each process has a burst of HEADs first, unmeasured, to warm it up. The figures
 * are medians over the rounds (8, or BENCH_ROUNDS), and their ratios. `BENCH_IN_PROCESS_ONLY=1`
 * stops after the checks in process (below).
 * Before that, the access checks alone: HEAD through the app in this process, off, with the
 * token and with the JWT in alternating blocks (one Request sent again and again, so that the
 * client's cost of making one is not counted); and bob's HEAD of alice's cart beside his HEAD of a uid
 * nobody has (both 404), in alternating blocks, for the time an existence leak would take. The
 * checks alone are given in time and in this process's CPU (which, on a shared machine, leaves
 * out the waits for a core).
 *
 * @module
 */
import { join } from "node:path";
import process from "node:process";
import { planCartBundle } from "../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import { parseCartDocument } from "../lib/cart/document.ts";
import { openSqlite } from "../lib/db/sqlite.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { CartStore } from "../lib/store/store.ts";
import { Volume } from "../lib/volume/volume.ts";
import { tokenDigest } from "../http/access.ts";
import { startCartd } from "../tests/support/harness.ts";
import { loadConfig } from "../lib/config/config.ts";
import { MemoryQueue } from "../lib/queue/memory.ts";
import { Cancellations } from "../lib/space/cancellations.ts";
import { cartRoutes } from "../http/routes.ts";
import { SignJWT } from "jose";
import { cpuSeconds, exec, GiB, median, MiB } from "./common.ts";

const TOKEN = "bench-token-of-alice-0123456789";
const BOB = "bench-token-of-bob-9876543210";
const CLIENTS = 8;
const HEAD_MS = 2_000;
const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 8);
const JWT_SECRET = "bench-jwt-secret-0123456789abcdef";

/** Alice's JWT (HS256 under {@linkcode JWT_SECRET}), valid for an hour. */
function aliceJwt(): Promise<string> {
  return new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("alice")
    .setExpirationTime("1h").sign(new TextEncoder().encode(JWT_SECRET));
}

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

/** HEADs per second of `url` with CLIENTS clients for HEAD_MS, and how many were sent. */
async function headRate(
  url: string,
  headers: Record<string, string>,
): Promise<{ rate: number; count: number }> {
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
  return { rate: count / ((performance.now() - started) / 1000), count };
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

/**
 * The access checks alone: HEAD of `ready` through the app in this process (no HTTP, no other
 * process), access off and on in alternating blocks; the median µs per request of each.
 */
async function inProcess(
  dir: string,
  store: CartStore,
  volume: Volume,
  jwt: string,
): Promise<void> {
  const queue = new MemoryQueue();
  const app = (env: Record<string, string>) =>
    cartRoutes({
      store,
      queue,
      volume,
      cancellations: new Cancellations(),
      config: loadConfig({ VOLUME_PATH: dir, ...env }),
    });
  const off = app({});
  const on = app({
    CARTD_ACCESS_TOKENS: join(dir, "tokens"),
    CARTD_ACCESS_JWT_SECRET: JWT_SECRET,
    CARTD_QUOTA_RATE: "100000000",
  });
  const BLOCK = 2000;
  const times = { off: [] as number[], on: [] as number[], jwt: [] as number[] };
  // This process's CPU a request too: on a shared machine, unlike the time, it leaves out
  // the time spent waiting for a core (getrusage, in µs).
  const cpu = { off: [] as number[], on: [] as number[], jwt: [] as number[] };
  for (let block = 0; block < 12; block++) {
    for (
      const [mode, a, headers] of [
        ["off", off, {}],
        ["on", on, { authorization: `Bearer ${TOKEN}` }],
        ["jwt", on, { authorization: `Bearer ${jwt}` }],
      ] as const
    ) {
      // One request, sent BLOCK times: making a Request with one more header costs about 6 µs
      // in Deno, which is the client's, not cartd's (and would count against access on).
      const request = new Request("http://cartd/ready", {
        method: "HEAD",
        headers: { host: "cartd", ...headers },
      });
      const started = performance.now();
      const cpuBefore = process.cpuUsage();
      for (let i = 0; i < BLOCK; i++) {
        const r = await a.fetch(request);
        if (r.status !== 204) throw new Error(`in-process HEAD (${mode}) answered ${r.status}`);
      }
      const used = process.cpuUsage(cpuBefore);
      if (block > 1) {
        times[mode].push((performance.now() - started) / BLOCK * 1000);
        cpu[mode].push((used.user + used.system) / BLOCK);
      }
    }
  }
  // Another's cart against a uid nobody has, as bob (who owns neither): the same one query.
  await Deno.writeTextFile(
    join(dir, "tokens"),
    `${tokenDigest(TOKEN)} alice\n${tokenDigest(BOB)} bob\n`,
  );
  const bob = app({ CARTD_ACCESS_TOKENS: join(dir, "tokens"), CARTD_QUOTA_RATE: "100000000" });
  const leak = { others: [] as number[], missing: [] as number[] };
  for (let block = 0; block < 12; block++) {
    for (const [kind, uid] of [["others", "ready"], ["missing", "nobody"]] as const) {
      const request = new Request(`http://cartd/${uid}`, {
        method: "HEAD",
        headers: { host: "cartd", authorization: `Bearer ${BOB}` },
      });
      const started = performance.now();
      for (let i = 0; i < BLOCK; i++) {
        const r = await bob.fetch(request);
        if (r.status !== 404) throw new Error(`bob's HEAD of ${uid} answered ${r.status}`);
      }
      if (block > 1) leak[kind].push((performance.now() - started) / BLOCK * 1000);
    }
  }
  console.log(
    `in process, bob's HEAD (404 both): alice's cart ${median(leak.others).toFixed(1)} µs, ` +
      `a uid nobody has ${median(leak.missing).toFixed(1)} µs`,
  );
  await queue.close();
  const offUs = median(times.off);
  const onUs = median(times.on);
  const jwtUs = median(times.jwt);
  console.log(
    `in process (the app's fetch, no HTTP): HEAD off ${offUs.toFixed(1)} µs, token ` +
      `${onUs.toFixed(1)} µs, JWT ${jwtUs.toFixed(1)} µs: the access checks cost ` +
      `${(onUs - offUs).toFixed(1)} µs a request with a token, ${(jwtUs - offUs).toFixed(1)} ` +
      "µs with a JWT",
  );
  const [cpuOff, cpuOn, cpuJwt] = [median(cpu.off), median(cpu.on), median(cpu.jwt)];
  const more = (us: number) => `${us - cpuOff < 0 ? "" : "+"}${(us - cpuOff).toFixed(1)}`;
  console.log(
    `in process, this process's CPU a request: HEAD off ${cpuOff.toFixed(1)} µs, token ` +
      `${cpuOn.toFixed(1)} µs (${more(cpuOn)}), JWT ${cpuJwt.toFixed(1)} µs (${more(cpuJwt)}); ` +
      `load average ${Deno.loadavg()[0].toFixed(1)}`,
  );
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
    await Deno.writeTextFile(join(dir, "tokens"), `${tokenDigest(TOKEN)} alice\n`);
    const jwt = await aliceJwt();
    await inProcess(dir, store, volume, jwt);
    await db.close();
    // BENCH_IN_PROCESS_ONLY=1: the checks alone (about 20 s), to pair two trees run by turns.
    if (Deno.env.get("BENCH_IN_PROCESS_ONLY") === "1") return 0;
    const modes = {
      off: { env: {}, headers: {} as Record<string, string> },
      on: {
        env: {
          CARTD_ACCESS_TOKENS: join(dir, "tokens"),
          CARTD_ACCESS_JWT_SECRET: JWT_SECRET,
          CARTD_ACCESS_PROXY_ADDRESSES: "127.0.0.2/32",
          CARTD_QUOTA_RATE: "1000000",
        },
        headers: { authorization: `Bearer ${TOKEN}` },
      },
    };
    // Both processes run at once, and the bursts alternate, so that the other helpers' load
    // falls on both alike.
    await using off = await startCartd({
      role: "serve",
      volume: dir,
      env: { ARCHIVE_INTERFACE_URL: "http://127.0.0.1:9/", ...modes.off.env },
    });
    await using on = await startCartd({
      role: "serve",
      volume: dir,
      env: { ARCHIVE_INTERFACE_URL: "http://127.0.0.1:9/", ...modes.on.env },
    });
    const servers = { off, on };
    const figures = {
      off: {
        head: [] as number[],
        headCpu: [] as number[],
        get: [] as number[],
        getCpu: [] as number[],
      },
      on: {
        head: [] as number[],
        headCpu: [] as number[],
        get: [] as number[],
        getCpu: [] as number[],
      },
    };
    const jwtHeads = { head: [] as number[], headCpu: [] as number[] };
    // Each process warmed up first (its JIT), or the first round's first process pays for it.
    for (
      const [url, headers] of [
        [off.url, {}],
        [on.url, modes.on.headers],
        [on.url, { authorization: `Bearer ${jwt}` }],
      ] as const
    ) {
      await headRate(url + "ready", headers);
    }
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of round % 2 ? ["on", "off"] as const : ["off", "on"] as const) {
        const { headers } = modes[mode];
        const { url, process } = servers[mode];
        let before = cpuSeconds(process.pid);
        const { rate, count } = await headRate(url + "ready", headers);
        figures[mode].head.push(rate);
        figures[mode].headCpu.push((cpuSeconds(process.pid) - before) / count * 1e6);
        before = cpuSeconds(process.pid);
        figures[mode].get.push(await download(url + "big", headers));
        figures[mode].getCpu.push(cpuSeconds(process.pid) - before);
        console.log(
          `round ${round + 1}, access ${mode}: HEAD ${rate.toFixed(0)}/s, ` +
            `${figures[mode].headCpu.at(-1)!.toFixed(0)} µs CPU each; 1 GiB GET ` +
            `${figures[mode].get.at(-1)!.toFixed(0)} MiB/s, ${
              figures[mode].getCpu.at(-1)!.toFixed(2)
            } s CPU`,
        );
      }
      // The HEADs again to access on, with alice's JWT instead of her token.
      const before = cpuSeconds(on.process.pid);
      const { rate, count } = await headRate(on.url + "ready", { authorization: `Bearer ${jwt}` });
      jwtHeads.head.push(rate);
      jwtHeads.headCpu.push((cpuSeconds(on.process.pid) - before) / count * 1e6);
      console.log(
        `round ${round + 1}, access on, JWT: HEAD ${rate.toFixed(0)}/s, ` +
          `${jwtHeads.headCpu.at(-1)!.toFixed(0)} µs CPU each`,
      );
    }
    const m = (xs: number[]) => median(xs);
    const cost = (key: keyof typeof figures.on, higherIsBetter: boolean) => {
      const [a, b] = [m(figures.off[key]), m(figures.on[key])];
      return ((higherIsBetter ? 1 - b / a : b / a - 1) * 100).toFixed(1);
    };
    console.log(
      `HEAD, ${CLIENTS} clients, ${HEAD_MS / 1000} s a burst, median of ${ROUNDS}: off ` +
        `${m(figures.off.head).toFixed(0)}/s, on ${m(figures.on.head).toFixed(0)}/s ` +
        `(${cost("head", true)} % slower); CPU off ${m(figures.off.headCpu).toFixed(0)} µs, ` +
        `on ${m(figures.on.headCpu).toFixed(0)} µs (${
          cost("headCpu", false)
        } % more); target ≤ 5 %`,
    );
    const jwtCpu = m(jwtHeads.headCpu);
    console.log(
      `HEAD with a JWT, median of ${ROUNDS}: ${m(jwtHeads.head).toFixed(0)}/s; CPU ` +
        `${jwtCpu.toFixed(0)} µs (${((jwtCpu / m(figures.off.headCpu) - 1) * 100).toFixed(1)} % ` +
        "more than access off)",
    );
    console.log(
      `1 GiB GET, median of ${ROUNDS}: off ${m(figures.off.get).toFixed(0)} MiB/s, on ` +
        `${m(figures.on.get).toFixed(0)} MiB/s (${cost("get", true)} % slower); CPU off ` +
        `${m(figures.off.getCpu).toFixed(2)} s, on ${m(figures.on.getCpu).toFixed(2)} s ` +
        `(${cost("getCpu", false)} % more); target ≤ 5 %`,
    );
    return 0;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) Deno.exit(await main());
