/**
 * cartd benchmarks (`deno task bench [scenario …] [--large] [--rounds N]`). They measure and
 * print; they assert nothing.
 *
 * Scenarios (all of them when none is named):
 *
 * - `download`: a ready cart of 16 × 64 MiB, GET over loopback (curl, and a Deno fetch),
 *   beside `tar cf - <the same staged files> | cat > /dev/null` in the same run.
 * - `range`: a ranged GET of the last 64 MiB of that cart, beside the full GET.
 * - `small`: POST → ready for 1,000 × 4 KiB and 10,000 × 1 KiB, beside a plain client
 *   (POST + HEAD + GET per file, written to disk) at the same concurrency; paired rounds
 *   (cartd, then the plain client), the median of their ratios. Peak RSS: the highest round.
 * - `memory`: peak RSS of the cartd process during those (runs `download` and `small`), and
 *   while 4 clients download each small-file cart at once; it runs `connections` too.
 * - `connections`: issue 18's figures (bench/connections.ts): the peak RSS of one and of 4
 *   POSTs of 20,000 one-byte chunks (981 and 4,084 MiB before), and the RSS of 1,000 idle
 *   connections and after one request each (the process used to exit at ~993), with the
 *   descriptor limit.
 * - `polling`: archive HEADs for one file that stays on tape for 60 s, default poll settings.
 *   It runs in the background, beside the other scenarios (its cartd is idle but for timers).
 * - `production`: the 1 GiB download and the 10,000-file cart on MariaDB + RabbitMQ with one
 *   `cartd serve` and two `cartd worker` processes, beside the embedded default.
 * - `tape`: against a fake archive with a tape library (bench/tape.ts): mounts and time to
 *   ready of 96 files on 4 tapes, 1,000 files on 5 s recalls, a cart on disk behind carts on
 *   tape, two carts sharing 50 files. `tape-big` (only when named): 100,000 files on tape.
 *
 * - `bigfiles` (only when named; bench/bigfiles.ts): issue 15's staging of 16 × 64 MiB and
 *   8 × 1 GiB, with and without hashes in the document, beside a plain client that fetches
 *   (and hashes) the same files at the same concurrency; `--before PATH` adds an older cartd,
 *   `--cold` skips the untimed warm-up pass before the first round.
 * - `small100k` (only when named; long): POST → ready of 100,000 × 1 KiB beside 10,000 × 1 KiB
 *   in the same run, for the time per file.
 *
 * - `forget` (only when named; bench/forget.ts): how long removing the rows of a cart of
 *   10,000 and of 100,000 files holds the thread (the longest gap between event-loop turns).
 *
 * - `access` (only when named; bench/access.ts): the cost of access control (issue 17) on
 *   HEAD and on a 1 GiB download, beside access off, in one run.
 *
 * `--large` adds a 4 GiB cart (64 × 64 MiB) and a 40,000 × 1 KiB cart.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { loadConfig } from "../lib/config/config.ts";
import { type Cartd, cartStatus, postCart, startCartd } from "../tests/support/harness.ts";
import { tapeScenarios, type TapeSection } from "./tape.ts";
import { connectionRows } from "./connections.ts";
import {
  type ArchiveProcess,
  BENCH_DIR,
  benchEnv,
  benchIds,
  cartDoc,
  type Cpu,
  cpuSeconds,
  cpuSince,
  curlGet,
  exec,
  fetchGet,
  GiB,
  median,
  MiB,
  PeakRss,
  printRows,
  type Row,
  rssNow,
  startArchiveProcess,
  threadCpu,
  timeShell,
  type Transfer,
} from "./common.ts";

const SCENARIOS = [
  "download",
  "range",
  "small",
  "memory",
  "connections",
  "polling",
  "production",
  "tape",
  "tape-big",
  "small100k",
] as const;
type Scenario = typeof SCENARIOS[number];
if (Deno.args[0] === "metrics") Deno.exit(await (await import("./metrics.ts")).main());
if (Deno.args[0] === "status") Deno.exit(await (await import("./status.ts")).main());
if (Deno.args[0] === "access") Deno.exit(await (await import("./access.ts")).main());
if (Deno.args[0] === "webhooks") Deno.exit(await (await import("./webhooks.ts")).main());
if (Deno.args[0] === "events") Deno.exit(await (await import("./events.ts")).main());
if (Deno.args[0] === "concurrent") Deno.exit(await (await import("./concurrent.ts")).main());
if (Deno.args[0] === "bigfiles") Deno.exit(await (await import("./bigfiles.ts")).main());
if (Deno.args[0] === "forget") Deno.exit(await (await import("./forget.ts")).main());

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    large: { type: "boolean", default: false },
    rounds: { type: "string", default: "3" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  console.log(
    `deno task bench [${SCENARIOS.join(" ")}] [--large] [--rounds N]\n` +
      "No scenario named: all of them but tape-big. --large adds the 4 GiB / 40,000-file carts.",
  );
  Deno.exit(0);
}
for (const p of positionals) {
  if (!SCENARIOS.includes(p as Scenario)) {
    console.error(`Unknown scenario "${p}"; choose from ${SCENARIOS.join(", ")}`);
    Deno.exit(2);
  }
}
const selected = new Set<Scenario>(
  positionals.length
    ? positionals as Scenario[]
    : SCENARIOS.filter((s) => s !== "tape-big" && s !== "small100k"),
);
if (selected.has("memory")) {
  selected.add("download");
  selected.add("small");
  selected.add("connections");
}
const ROUNDS = Math.max(1, Number(values.rounds) || 3);
const LARGE = values.large;

const BENCH_ENV = benchEnv();
const FILES_PER_CART = loadConfig(BENCH_ENV).limits.filesPerCart;
const BIG_FILE = 64 * MiB;

// ---------------------------------------------------------------------------------------------
// Output

const sections: { title: string; rows: Row[] }[] = [];
function section(title: string): Row[] {
  const rows: Row[] = [];
  sections.push({ title, rows });
  return rows;
}
const notes: string[] = [];

const f0 = (n: number) => n.toFixed(0);
const f2 = (n: number) => n.toFixed(2);
const mibs = (bytes: number, seconds: number) => bytes / MiB / seconds;
const rate = (n: number) => `${f0(n)} MiB/s`;
const secs = (n: number) => `${n < 10 ? f2(n) : n.toFixed(1)} s`;
const mib = (bytes: number) => `${f0(bytes / MiB)} MiB`;

function printTable(): void {
  printRows(sections);
}

// ---------------------------------------------------------------------------------------------
// Processes and temp dirs

const tempDirs = new Set<string>();
/**
 * A temp folder, removed at the end of the run (or on Ctrl-C), not when its case ends: on an
 * ext4 volume without a journal (as here), creating files within a minute or more of deleting
 * thousands makes the kernel step over the recently freed inodes one by one
 * (`recently_deleted` in `find_inode_bit`), and whichever side ran next paid for it (10,000
 * files: up to 4 s of kernel time). Kept to the end, no measured side creates files right
 * after a mass delete of the run's own.
 */
async function tempDir(prefix: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix });
  tempDirs.add(dir);
  return dir;
}

function removeAllSync(): void {
  for (const dir of tempDirs) {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch { /* gone */ }
  }
  tempDirs.clear();
}
Deno.addSignalListener("SIGINT", () => {
  removeAllSync();
  Deno.exit(130);
});

/** RSS of each embedded cartd 1 s after its start, before any cart. */
const idleRss: number[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function progress(text: string): void {
  console.error(`bench: ${text}`);
}

/** Runs `fn` with a fresh all-in-one cartd (SQLite + in-process queue) and its own volume. */
async function withCartd<T>(
  archive: ArchiveProcess,
  fn: (cartd: Cartd) => Promise<T>,
): Promise<T> {
  const volume = await tempDir("cartd-bench-");
  const cartd = await startCartd({
    env: { ...BENCH_ENV, ARCHIVE_INTERFACE_URL: archive.url },
    volume,
  });
  try {
    await sleep(1000);
    idleRss.push(rssNow(cartd.process.pid));
    return await fn(cartd);
  } catch (e) {
    console.error(cartd.output().split("\n").slice(-15).join("\n"));
    throw e;
  } finally {
    await cartd.stop();
  }
}

/** POSTs a cart and polls HEAD until it is ready; returns the seconds from POST to ready. */
async function postAndWait(url: string, uid: string, doc: unknown, pollMs = 25): Promise<number> {
  const t0 = performance.now();
  const res = await postCart(url, uid, doc);
  const body = await res.text();
  if (res.status !== 201) throw new Error(`POST ${uid}: ${res.status} ${body}`);
  for (;;) {
    const [, status, message] = await cartStatus(url, uid);
    if (status === "ready") return (performance.now() - t0) / 1000;
    if (status === "error") throw new Error(`cart ${uid} failed: ${message}`);
    await sleep(pollMs);
  }
}

/** The id of the only cart folder under a volume. */
async function onlyCartId(volume: string): Promise<string> {
  const ids: string[] = [];
  for await (const e of Deno.readDir(`${volume}/carts`)) if (e.isDirectory) ids.push(e.name);
  if (ids.length !== 1) throw new Error(`expected one cart in ${volume}, found ${ids.length}`);
  return ids[0];
}

// ---------------------------------------------------------------------------------------------
// Scenarios

interface DownloadFigures {
  files: number;
  bundleBytes: number;
  stageSeconds: number;
  stageRss: number;
  curl: Transfer[];
  fetch: Transfer[];
  tarSeconds: number[];
  range: Transfer[];
  downloadRss: number;
  cpuPerGiB: number;
  /** CPU seconds per GiB of the curl GETs, by kind of thread (see threadCpu). */
  threadsPerGiB: Record<string, Cpu>;
}

/** A ready cart of `files` × 64 MiB: staging, then GETs beside the GNU tar baseline. */
async function downloadCart(
  archive: ArchiveProcess,
  files: number,
  opts: { tar: boolean; fetch: boolean; range: boolean },
): Promise<DownloadFigures> {
  const prefix = `big${files}-`;
  await archive.put({ prefix, count: files, size: BIG_FILE, kind: "pattern" });
  const doc = cartDoc(benchIds(prefix, files), "big");
  return await withCartd(archive, async (cartd) => {
    const pid = cartd.process.pid;
    const uid = `download-${files}`;
    progress(`staging ${files} × 64 MiB`);
    let peak = new PeakRss(pid);
    const stageSeconds = await postAndWait(cartd.url, uid, doc);
    const stageRss = peak.stop();

    const dir = `${cartd.volume}/carts/${await onlyCartId(cartd.volume)}/files`;
    const names = Array.from({ length: files }, (_, i) => String(i)).join(" ");
    const url = `${cartd.url}${uid}?filename=bench.tar`;
    const fig: DownloadFigures = {
      files,
      bundleBytes: 0,
      stageSeconds,
      stageRss,
      curl: [],
      fetch: [],
      tarSeconds: [],
      range: [],
      downloadRss: 0,
      cpuPerGiB: 0,
      threadsPerGiB: {},
    };
    const curlThreads: Record<string, Cpu> = {};
    let curlBytes = 0;
    let cpu = 0;
    let served = 0;
    // One unmeasured GET first: it compiles the stream's code and grows malloc's heap once,
    // as GNU tar finds the page cache warm. The rounds measure the steady state.
    progress(`download ${files} × 64 MiB, warm-up`);
    await curlGet(url);
    peak = new PeakRss(pid);
    for (let round = 1; round <= ROUNDS; round++) {
      progress(`download ${files} × 64 MiB, round ${round}/${ROUNDS}`);
      if (opts.tar) {
        fig.tarSeconds.push(await timeShell(`tar cf - -C ${dir} ${names} | cat >/dev/null`));
      }
      let c0 = cpuSeconds(pid);
      const t0 = threadCpu(pid);
      const c = await curlGet(url);
      cpu += cpuSeconds(pid) - c0;
      for (const [kind, spent] of Object.entries(cpuSince(t0, threadCpu(pid)))) {
        const sum = curlThreads[kind] ??= { user: 0, sys: 0 };
        sum.user += spent.user;
        sum.sys += spent.sys;
      }
      curlBytes += c.bytes;
      served += c.bytes;
      if (c.status !== 200) throw new Error(`GET answered ${c.status}`);
      fig.curl.push(c);
      fig.bundleBytes = c.bytes;
      if (opts.fetch) {
        c0 = cpuSeconds(pid);
        const f = await fetchGet(url);
        cpu += cpuSeconds(pid) - c0;
        served += f.bytes;
        if (f.bytes !== c.bytes) throw new Error(`fetch got ${f.bytes} bytes, curl ${c.bytes}`);
        fig.fetch.push(f);
      }
      if (opts.range) {
        const size = fig.bundleBytes;
        const r = await curlGet(url, [size - 64 * MiB, size - 1]);
        if (r.status !== 206 || r.bytes !== 64 * MiB) {
          throw new Error(`ranged GET answered ${r.status} with ${r.bytes} bytes`);
        }
        fig.range.push(r);
      }
    }
    fig.downloadRss = peak.stop();
    fig.cpuPerGiB = cpu / (served / GiB);
    for (const [kind, spent] of Object.entries(curlThreads)) {
      fig.threadsPerGiB[kind] = {
        user: spent.user / (curlBytes / GiB),
        sys: spent.sys / (curlBytes / GiB),
      };
    }
    return fig;
  });
}

interface SmallFigures {
  count: number;
  size: number;
  seconds: number;
  rss: number;
  downloadSeconds: number;
  downloadRss: number;
  /** Peak RSS while {@linkcode CONCURRENT_GETS} clients download the cart at once. */
  concurrentRss: number;
}

/** A small-file case over one or more paired rounds (cartd, then the plain client). */
interface SmallRun {
  /** Median seconds and GET time; the highest peak RSS of the rounds. */
  cartd: SmallFigures;
  /** Median seconds of the plain client. */
  plain: { seconds: number };
  /** cartd ÷ plain client, per round. */
  ratios: number[];
}

/** The medians of some rounds of one small-file case (peaks: the highest). */
function medianSmall(runs: { cartd: SmallFigures; plain: { seconds: number } }[]): SmallRun {
  const first = runs[0].cartd;
  const most = (pick: (f: SmallFigures) => number) => Math.max(...runs.map((r) => pick(r.cartd)));
  return {
    cartd: {
      count: first.count,
      size: first.size,
      seconds: median(runs.map((r) => r.cartd.seconds)),
      downloadSeconds: median(runs.map((r) => r.cartd.downloadSeconds)),
      rss: most((f) => f.rss),
      downloadRss: most((f) => f.downloadRss),
      concurrentRss: most((f) => f.concurrentRss),
    },
    plain: { seconds: median(runs.map((r) => r.plain.seconds)) },
    ratios: runs.map((r) => r.cartd.seconds / r.plain.seconds),
  };
}

/** Clients that download a small-file cart at once, for the memory of downloads in flight. */
const CONCURRENT_GETS = 4;

/** POST → ready of `count` × `size` bytes in the embedded cartd, then GETs of it. */
async function smallCart(archive: ArchiveProcess, count: number, size: number) {
  const prefix = `s${size}-`;
  await archive.put({ prefix, count, size, kind: "bytes" });
  const doc = cartDoc(benchIds(prefix, count), "small");
  return await withCartd(archive, async (cartd): Promise<SmallFigures> => {
    const pid = cartd.process.pid;
    progress(`cartd: ${count} × ${size} B, POST → ready`);
    let peak = new PeakRss(pid);
    const seconds = await postAndWait(cartd.url, `small-${count}`, doc);
    const rss = peak.stop();
    peak = new PeakRss(pid);
    const got = await curlGet(`${cartd.url}small-${count}?filename=small.tar`);
    const downloadRss = peak.stop();
    progress(`cartd: ${count} × ${size} B, ${CONCURRENT_GETS} GETs at once`);
    peak = new PeakRss(pid);
    await Promise.all(
      Array.from({ length: CONCURRENT_GETS }, () => curlGet(`${cartd.url}small-${count}`)),
    );
    const concurrentRss = peak.stop();
    return {
      count,
      size,
      seconds,
      rss,
      downloadSeconds: got.seconds,
      downloadRss,
      concurrentRss,
    };
  });
}

/** The plain client (bench/plain_client.ts) over the same ids, in its own process. */
async function plainClient(archive: ArchiveProcess, count: number, size: number) {
  const dir = await tempDir("cartd-bench-plain-");
  progress(`plain client: ${count} × ${size} B`);
  const r = await exec(Deno.execPath(), [
    "run",
    "--allow-net",
    "--allow-read",
    "--allow-write",
    `${BENCH_DIR}plain_client.ts`,
    archive.url,
    `s${size}-`,
    String(count),
    String(FILES_PER_CART),
    dir,
  ]);
  if (r.code !== 0) throw new Error(`plain client failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as { files: number; bytes: number; seconds: number };
}

interface PollFigures {
  head: number;
  post: number;
  get: number;
  seconds: number;
}

/** One file on tape for 60 s, cartd's default poll settings: how often is the archive asked? */
async function polling(archive: ArchiveProcess): Promise<PollFigures> {
  const id = "tape60-000000";
  await archive.put({
    prefix: "tape60-",
    count: 1,
    size: 4096,
    kind: "bytes",
    options: { tapeMs: 60_000 },
  });
  return await withCartd(archive, async (cartd) => {
    const seconds = await postAndWait(cartd.url, "polling", cartDoc([id], "tape"), 250);
    return { ...(await archive.counts(id)), seconds };
  });
}

interface ProductionFigures {
  download?: { stageSeconds: number; curl: Transfer[]; serveRss: number; workerRss: number };
  small?: { seconds: number; workerRss: number };
  error?: string;
}

/** MariaDB + RabbitMQ, one `cartd serve` and two `cartd worker` on one volume. */
async function production(archive: ArchiveProcess): Promise<ProductionFigures> {
  const name = `cartd_bench_${Deno.pid}`;
  const env = {
    ...BENCH_ENV,
    ARCHIVE_INTERFACE_URL: archive.url,
    DATABASE_URL: `mysql://root@127.0.0.1:3306/${name}`,
    BROKER_URL: `amqp://guest:guest@127.0.0.1:5672/${name}`,
  };
  const volume = await tempDir("cartd-bench-prod-");
  const procs: Cartd[] = [];
  const fig: ProductionFigures = {};
  let vhost = false;
  try {
    // A vhost of our own: cartd's queue name is fixed, so nothing else can take our messages.
    for (
      const args of [
        ["add_vhost", name],
        ["set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
      ]
    ) {
      const r = await exec("rabbitmqctl", args);
      if (r.code !== 0) throw new Error(`rabbitmqctl ${args[0]}: ${r.stderr.trim()}`);
      vhost = true;
    }
    progress("production: starting cartd serve + 2 × cartd worker (MariaDB, RabbitMQ)");
    // The API first (it creates the schema), then the workers.
    procs.push(await startCartd({ env, role: "serve", volume }));
    procs.push(await startCartd({ env, role: "worker", volume }));
    procs.push(await startCartd({ env, role: "worker", volume }));
    const [serve, ...workers] = procs;

    const files = 16;
    await archive.put({ prefix: `big${files}-`, count: files, size: BIG_FILE, kind: "pattern" });
    let peaks = workers.map((w) => new PeakRss(w.process.pid));
    progress("production: staging 16 × 64 MiB");
    const stageSeconds = await postAndWait(
      serve.url,
      "prod-download",
      cartDoc(benchIds(`big${files}-`, files), "big"),
    );
    let workerRss = Math.max(...peaks.map((p) => p.stop()));
    const servePeak = new PeakRss(serve.process.pid);
    const curl: Transfer[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      progress(`production: download round ${round}/${ROUNDS}`);
      curl.push(await curlGet(`${serve.url}prod-download?filename=bench.tar`));
    }
    fig.download = { stageSeconds, curl, serveRss: servePeak.stop(), workerRss };

    await archive.put({ prefix: "s1024-", count: 10_000, size: 1024, kind: "bytes" });
    peaks = workers.map((w) => new PeakRss(w.process.pid));
    progress("production: 10,000 × 1 KiB, POST → ready");
    const seconds = await postAndWait(
      serve.url,
      "prod-small",
      cartDoc(benchIds("s1024-", 10_000), "small"),
    );
    workerRss = Math.max(...peaks.map((p) => p.stop()));
    fig.small = { seconds, workerRss };
  } catch (e) {
    fig.error = e instanceof Error ? e.message.split("\n")[0] : String(e);
    for (const p of procs) {
      console.error(`--- cartd (${p.url || "worker"}) said:`);
      console.error(p.output().split("\n").slice(-10).join("\n"));
    }
  } finally {
    for (const p of procs.reverse()) await p.stop();
    const drop = await exec("mysql", [
      "-h",
      "127.0.0.1",
      "-u",
      "root",
      "-e",
      `DROP DATABASE IF EXISTS \`${name}\``,
    ]);
    if (drop.code !== 0) notes.push(`could not drop database ${name}: ${drop.stderr.trim()}`);
    if (vhost) await exec("rabbitmqctl", ["delete_vhost", name]);
  }
  return fig;
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const config = loadConfig(BENCH_ENV);
  console.log(
    `cartd benchmarks — ${new Date().toISOString()}, Deno ${Deno.version.deno}, ` +
      `${navigator.hardwareConcurrency} cores`,
  );
  console.log(`scenarios: ${[...selected].join(" ")}${LARGE ? " --large" : ""}; rounds: ${ROUNDS}`);
  console.log(
    "cartd settings (the defaults): " +
      Object.entries(BENCH_ENV).map(([k, v]) => `${k}=${v}`).join(" ") +
      "; SQLite + in-process queue unless stated",
  );
  console.log(
    `  → poll ${config.staging.pollInitialMs} ms … ${config.staging.pollMaxMs} ms, ` +
      `${config.limits.filesPerCart} files per cart, ${config.limits.filesInFlight} in flight, ` +
      `${config.limits.threads} threads`,
  );

  const load = () => Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  console.log(`load average at start: ${load()} (other work on the machine adds noise)`);
  const archive = await startArchiveProcess();
  console.log(
    "processes: bench/run.ts (driver: POST, HEAD polls every 25 ms, RSS sampling); " +
      `bench/archive_server.ts (fake archive, pid ${archive.pid}); cartd = \`deno run main.ts\` ` +
      `(main thread + ${BENCH_ENV.CARTD_THREADS} Web Worker thread(s), one pid); clients curl, ` +
      "bench/fetch_client.ts and bench/plain_client.ts each in their own process; all on " +
      `${navigator.hardwareConcurrency} shared cores, no pinning.`,
  );
  console.log("");

  let poll: Promise<PollFigures | Error> | undefined;
  try {
    if (selected.has("polling")) {
      progress("polling: one file on tape for 60 s (in the background)");
      poll = polling(archive).catch((e) => e as Error);
    }

    const downloads: DownloadFigures[] = [];
    if (selected.has("download") || selected.has("range")) {
      downloads.push(await downloadCart(archive, 16, { tar: true, fetch: true, range: true }));
      if (LARGE && selected.has("download")) {
        downloads.push(await downloadCart(archive, 64, { tar: true, fetch: true, range: false }));
      }
    }
    const smalls: SmallRun[] = [];
    if (selected.has("small") || selected.has("small100k")) {
      // The 1,000- and 10,000-file carts take seconds: ROUNDS paired rounds each, as the
      // plain client's time alone varies up to 2× between runs here. The 40,000-file cart once.
      // small100k alone: 10,000 files (ROUNDS) and 100,000 (once, without the plain client,
      // which takes minutes there), for the time per file.
      const cases: [number, number, number][] = selected.has("small")
        ? [[1000, 4096, ROUNDS], [10_000, 1024, ROUNDS]]
        : [[10_000, 1024, ROUNDS]];
      if (LARGE) cases.push([40_000, 1024, 1]);
      if (selected.has("small100k")) cases.push([100_000, 1024, 1]);
      for (const [count, size, rounds] of cases) {
        const runs: { cartd: SmallFigures; plain: { seconds: number } }[] = [];
        for (let round = 1; round <= rounds; round++) {
          if (rounds > 1) progress(`small files: ${count} × ${size} B, round ${round}/${rounds}`);
          const cartd = await smallCart(archive, count, size);
          const plain = count >= 100_000
            ? { seconds: NaN }
            : await plainClient(archive, count, size);
          runs.push({ cartd, plain });
        }
        smalls.push(medianSmall(runs));
      }
    }
    let prod: ProductionFigures | undefined;
    if (selected.has("production")) {
      // The embedded figures to compare with, when the scenarios above did not measure them.
      if (!downloads.some((d) => d.files === 16)) {
        downloads.push(await downloadCart(archive, 16, { tar: false, fetch: false, range: false }));
      }
      if (!smalls.some((s) => s.cartd.count === 10_000)) {
        smalls.push({
          cartd: await smallCart(archive, 10_000, 1024),
          plain: { seconds: NaN },
          ratios: [],
        });
      }
      prod = await production(archive);
    }
    let connections: Row[] | undefined;
    if (selected.has("connections")) {
      connections = await connectionRows({
        env: BENCH_ENV,
        archiveUrl: archive.url,
        tempDir,
        progress,
      }).catch((e) => [{ figure: "PENDING: the run failed", cartd: String(e) }]);
    }
    const polled = poll ? await poll : undefined;
    let tape: TapeSection[] = [];
    if (selected.has("tape") || selected.has("tape-big")) {
      tape = await tapeScenarios({
        env: BENCH_ENV,
        tape: selected.has("tape"),
        big: selected.has("tape-big"),
        tempDir,
        progress,
      });
    }

    // ---- the table
    for (const d of selected.has("download") ? downloads : []) {
      const gib = d.bundleBytes / GiB;
      const rows = section(`download: ${d.files} × 64 MiB = ${f2(gib)} GiB tar, ready cart`);
      const tar = d.tarSeconds.length ? mibs(d.bundleBytes, median(d.tarSeconds)) : NaN;
      const tarText = `GNU tar ${rate(tar)}`;
      const curl = mibs(d.bundleBytes, median(d.curl.map((t) => t.seconds)));
      rows.push({
        figure: "GET, curl -o /dev/null (median)",
        cartd: rate(curl),
        baseline: tarText,
        ratio: `${f2(curl / tar)}×`,
        target: "≥ 0.80× tar",
        ok: curl / tar >= 0.8,
      });
      if (d.tarSeconds.length === d.curl.length && d.curl.length > 1) {
        // Each round's curl beside the tar run just before it: the machine's slow spells
        // (this VM's rates drift by ±30 % within minutes) then weigh on both sides alike.
        const paired = d.curl.map((c, i) => d.tarSeconds[i] / c.seconds);
        const r = median(paired);
        rows.push({
          figure: "GET, curl ÷ GNU tar of the same round (median)",
          cartd: `${f2(r)}×`,
          baseline: `rounds ${f2(Math.min(...paired))}–${f2(Math.max(...paired))}×`,
          ratio: `${f2(r)}×`,
          target: "≥ 0.80× tar",
          ok: r >= 0.8,
        });
      }
      if (d.fetch.length) {
        const fetch = mibs(d.bundleBytes, median(d.fetch.map((t) => t.seconds)));
        rows.push({
          figure: "GET, Deno fetch (median)",
          cartd: rate(fetch),
          baseline: tarText,
          ratio: `${f2(fetch / tar)}×`,
          target: "≥ 0.80× tar",
          ok: fetch / tar >= 0.8,
        });
      }
      rows.push({
        figure: "GET, curl (best of rounds)",
        cartd: rate(mibs(d.bundleBytes, Math.min(...d.curl.map((t) => t.seconds)))),
        baseline: `GNU tar ${rate(mibs(d.bundleBytes, Math.min(...d.tarSeconds)))}`,
      });
      rows.push({ figure: "cartd CPU per GiB served", cartd: secs(d.cpuPerGiB) });
      // Where it goes (curl GETs only): the main thread's system time is mostly the kernel's
      // TCP work for the socket writes; gc time shows V8 collecting the spent chunks.
      const kinds = Object.entries(d.threadsPerGiB)
        .filter(([, c]) => c.user + c.sys >= 0.005)
        .map(([kind, c]) => `${kind} ${f2(c.user)}u+${f2(c.sys)}s`);
      rows.push({ figure: `  by thread (curl GETs, s/GiB): ${kinds.join(", ")}`, cartd: "" });
      rows.push({
        figure: "staging, POST → ready",
        cartd: `${secs(d.stageSeconds)} (${rate(mibs(d.files * BIG_FILE, d.stageSeconds))})`,
      });
    }
    const d1 = downloads.find((d) => d.files === 16);
    if (selected.has("range") && d1) {
      const rows = section("range: last 64 MiB of the 1 GiB cart (curl -r)");
      const full = median(d1.curl.map((t) => t.seconds));
      const part = median(d1.range.map((t) => t.seconds));
      rows.push({
        figure: "ranged GET time (median)",
        cartd: secs(part),
        baseline: `full GET ${secs(full)}`,
        ratio: `${(part / full).toFixed(3)} (1/${f0(full / part)})`,
        target: "≈ 1/16 = 0.063",
        ok: part / full <= 1.5 / 16,
      });
    }
    if (selected.has("small") || selected.has("small100k")) {
      const rows = section(
        `small files: POST → ready, plain client = POST+HEAD+GET per file, ${FILES_PER_CART} at once`,
      );
      for (const { cartd, plain, ratios } of smalls) {
        const name = `${cartd.count.toLocaleString("en")} × ${cartd.size / 1024} KiB`;
        // Paired: each round's cartd ÷ the plain client right after it (the median of those).
        const ratio = ratios.length ? median(ratios) : cartd.seconds / plain.seconds;
        const of = ratios.length > 1 ? ` (median of ${ratios.length})` : "";
        rows.push({
          figure: `${name}, POST → ready${of}`,
          cartd: secs(cartd.seconds),
          baseline: Number.isNaN(plain.seconds) ? "" : `plain ${secs(plain.seconds)}`,
          ratio: Number.isNaN(ratio) ? "" : `${f2(ratio)}×`,
          target: "≤ 1.50×",
          ok: Number.isNaN(ratio) ? undefined : ratio <= 1.5,
        });
        if (ratios.length > 1) {
          rows.push({
            figure: `${name}, ÷ plain client, per round`,
            cartd: `${f2(Math.min(...ratios))}–${f2(Math.max(...ratios))}×`,
          });
        }
        rows.push({
          figure: `${name}, per file`,
          cartd: `${f2((cartd.seconds / cartd.count) * 1000)} ms`,
          baseline: Number.isNaN(plain.seconds)
            ? ""
            : `plain ${f2((plain.seconds / cartd.count) * 1000)} ms`,
        });
      }
      const first = smalls[0].cartd;
      for (const { cartd } of smalls.slice(1)) {
        const growth = (cartd.seconds / cartd.count) / (first.seconds / first.count);
        rows.push({
          figure: `per-file time, ${cartd.count.toLocaleString("en")} vs ${
            first.count.toLocaleString("en")
          } files`,
          cartd: `${f2(growth)}×`,
          target: "≈ 1 (linear)",
          ok: cartd.count >= 100_000 ? growth <= 1 : undefined,
        });
      }
      for (const { cartd } of smalls) {
        rows.push({
          figure: `${cartd.count.toLocaleString("en")}-file cart, GET (curl)`,
          cartd: secs(cartd.downloadSeconds),
        });
      }
    }
    if (selected.has("memory")) {
      const rows = section("memory: peak RSS of the cartd process (VmHWM / VmRSS, all threads)");
      rows.push({
        figure: "idle, 1 s after start (median of runs)",
        cartd: mib(median(idleRss)),
        target: "≤ 150 MiB",
        ok: median(idleRss) <= 150 * MiB,
      });
      for (const d of downloads) {
        const what = `${f2(d.files * BIG_FILE / GiB)} GiB`;
        rows.push({
          figure: `staging ${what}`,
          cartd: mib(d.stageRss),
          target: "≤ 150 MiB",
          ok: d.stageRss <= 150 * MiB,
        });
        rows.push({
          figure: `downloading ${what} (curl + fetch)`,
          cartd: mib(d.downloadRss),
          target: "≤ 150 MiB",
          ok: d.downloadRss <= 150 * MiB,
        });
      }
      for (const { cartd } of smalls) {
        const what = `${cartd.count.toLocaleString("en")}-file cart`;
        rows.push({
          figure: `${what}, POST → ready`,
          cartd: mib(cartd.rss),
          target: "≤ 150 MiB",
          ok: cartd.rss <= 150 * MiB,
        });
        rows.push({
          figure: `${what}, GET`,
          cartd: mib(cartd.downloadRss),
          target: "≤ 150 MiB",
          ok: cartd.downloadRss <= 150 * MiB,
        });
        rows.push({
          figure: `${what}, ${CONCURRENT_GETS} GETs at once`,
          cartd: mib(cartd.concurrentRss),
        });
      }
    }
    if (connections) {
      section("connections: issue 18's memory figures, one embedded cartd (RSS)").push(
        ...connections,
      );
    }
    if (polled) {
      const rows = section("polling: one file on tape for 60 s, default poll 0.5 s → 30 s");
      if (polled instanceof Error) {
        rows.push({ figure: "failed", cartd: polled.message });
      } else {
        rows.push({
          figure: "archive HEAD requests",
          cartd: String(polled.head),
          baseline: "Pacifica: hot loop",
          target: "≤ 15",
          ok: polled.head <= 15,
        });
        rows.push({
          figure: "archive stage POSTs / GETs",
          cartd: `${polled.post} / ${polled.get}`,
        });
        rows.push({ figure: "POST → ready", cartd: secs(polled.seconds) });
      }
    }
    if (prod) {
      const rows = section("production: MariaDB + RabbitMQ, 1 × cartd serve + 2 × cartd worker");
      if (prod.download && d1) {
        const p = mibs(d1.bundleBytes, median(prod.download.curl.map((t) => t.seconds)));
        const e = mibs(d1.bundleBytes, median(d1.curl.map((t) => t.seconds)));
        rows.push({
          figure: "1 GiB GET, curl (median)",
          cartd: rate(p),
          baseline: `embedded ${rate(e)}`,
          ratio: `${f2(e / p)}× slower`,
          target: "≤ 1.50×",
          ok: e / p <= 1.5,
        });
        rows.push({
          figure: "1 GiB staging, POST → ready",
          cartd: secs(prod.download.stageSeconds),
          baseline: `embedded ${secs(d1.stageSeconds)}`,
          ratio: `${f2(prod.download.stageSeconds / d1.stageSeconds)}×`,
        });
        rows.push({
          figure: "peak RSS: serve (GET) / workers (staging)",
          cartd: `${mib(prod.download.serveRss)} / ${mib(prod.download.workerRss)}`,
        });
      }
      const s10 = smalls.find((s) => s.cartd.count === 10_000);
      if (prod.small) {
        rows.push({
          figure: "10,000 × 1 KiB, POST → ready",
          cartd: secs(prod.small.seconds),
          baseline: s10 ? `embedded ${secs(s10.cartd.seconds)}` : "",
          ratio: s10 ? `${f2(prod.small.seconds / s10.cartd.seconds)}×` : "",
          target: "≤ 1.50×",
          ok: s10 ? prod.small.seconds / s10.cartd.seconds <= 1.5 : undefined,
        });
        rows.push({ figure: "peak RSS: workers (staging)", cartd: mib(prod.small.workerRss) });
      }
      if (prod.error) rows.push({ figure: "PENDING: the run failed", cartd: prod.error });
    }
    sections.push(...tape);
    printTable();
    console.log("");
    console.log(
      "Rates are MiB/s of the tar's bytes (2^20). GNU tar: `tar cf - -C <cart files dir> 0 … " +
        "| cat >/dev/null` over the same staged files (page cache warm for both). Medians over " +
        `${ROUNDS} interleaved rounds (tar, curl, fetch, range) after one unmeasured GET. Python Pacifica here: ` +
        "≈ 360 MiB/s download, 35 s / 1272 s small files.",
    );
    console.log(`load average at the end: ${load()}`);
    for (const n of notes) console.log(`note: ${n}`);
  } finally {
    await archive.stop();
    removeAllSync();
  }
}

await main();
