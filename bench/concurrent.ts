/**
 * `deno task bench concurrent [--rounds N]`: the figures of issue 15, many clients at once,
 * each measured beside its baseline in the same run:
 *
 * - 10 concurrent GETs of a ready 1 GiB cart (16 × 64 MiB) against one GET, and against ten
 *   concurrent `tar cf - … | cat` over the same staged files; the slowest of the ten against
 *   the fastest; one GET against one GNU tar; and the same one and ten GETs of the same files
 *   from a server that costs nothing (bench/sendfile_server.py, sendfile(2)): what the cores
 *   allow, against which the ten-to-one ratio can be read;
 * - 100 concurrent GETs of a 16 MiB cart (4 × 4 MiB): failures and aggregate rate;
 * - 4 full-speed GETs of the 1 GiB cart alone, then beside 20 slow readers (1 KiB/s);
 * - peak RSS: idle, one download, 10, 100, 20 slow readers, and the cost per download;
 * - 100 slow readers, then all closed: RSS before, during, after;
 * - four 64 MiB cart documents of 100,000 files POSTed at once: peak RSS, the slowest
 *   `GET /` meanwhile (curl, every 50 ms), RSS after.
 *
 * Clients are curl processes. Everything shares the machine's cores with cartd: figures are
 * noisy when other work runs; the ratios compare sides measured minutes apart at most.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { SETTINGS } from "../lib/config/config.ts";
import { cartStatus, postCart, startCartd } from "../tests/support/harness.ts";
import {
  BENCH_DIR,
  benchIds,
  cartDoc,
  type Cpu,
  cpuSince,
  GiB,
  median,
  MiB,
  PeakRss,
  type Row,
  rssNow,
  spawnAnnouncing,
  startArchiveProcess,
  threadCpu,
  timeShell,
} from "./common.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const progress = (text: string) => console.error(`bench concurrent: ${text}`);
const f2 = (n: number) => n.toFixed(2);
const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;
const rate = (bytesPerSecond: number) => `${(bytesPerSecond / MiB).toFixed(0)} MiB/s`;

/** A running curl GET: resolves with its status, bytes and seconds. */
interface Curl {
  done: Promise<{ status: number; bytes: number; seconds: number; code: number }>;
  kill(): void;
}

function curl(url: string, limitRate?: string): Curl {
  const args = ["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"];
  if (limitRate) args.push("--limit-rate", limitRate);
  const child = new Deno.Command("curl", {
    args: [...args, url],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const done = child.output().then((out) => {
    const [status, bytes, seconds] = new TextDecoder().decode(out.stdout).trim().split(" ").map(
      Number,
    );
    return { status, bytes, seconds, code: out.code };
  });
  return {
    done,
    kill: () => {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
    },
  };
}

/** Runs `n` curls at once; the aggregate rate (total bytes / wall time) and each one's rate. */
async function together(url: string, n: number) {
  const t0 = performance.now();
  const runs = await Promise.all(Array.from({ length: n }, () => curl(url).done));
  const wall = (performance.now() - t0) / 1000;
  const bytes = runs.reduce((s, r) => s + r.bytes, 0);
  const failed = runs.filter((r) => r.code !== 0 || r.status !== 200).length;
  const rates = runs.map((r) => r.bytes / r.seconds);
  return { wall, bytes, aggregate: bytes / wall, rates, failed };
}

/**
 * Starts bench/sendfile_server.py over `names` in `dir`: every GET of it is those files, one
 * after the other, sent by the kernel (sendfile). The machine's ceiling for HTTP downloads.
 */
async function startSendfileServer(
  dir: string,
  names: string[],
): Promise<{ url: string; stop(): Promise<void> }> {
  const { child, line } = await spawnAnnouncing("bench/sendfile_server.py", "python3", [
    `${BENCH_DIR}sendfile_server.py`,
    dir,
    ...names,
  ]);
  return {
    url: `http://127.0.0.1:${Number(line.trim())}/`,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

/** Adds one run's CPU by kind of thread to `sums`, with the bytes it served. */
function addCpu(
  sums: Record<string, Cpu & { bytes: number }>,
  spent: Record<string, Cpu>,
  bytes: number,
): void {
  for (const [kind, c] of Object.entries(spent)) {
    const sum = sums[kind] ??= { user: 0, sys: 0, bytes: 0 };
    sum.user += c.user;
    sum.sys += c.sys;
    sum.bytes += bytes;
  }
}

/** POSTs a cart and waits for ready. */
async function ready(base: string, uid: string, doc: unknown): Promise<void> {
  const res = await postCart(base, uid, doc);
  const body = await res.text();
  if (res.status !== 201) throw new Error(`POST ${uid}: ${res.status} ${body}`);
  for (;;) {
    const [, status, message] = await cartStatus(base, uid);
    if (status === "ready") return;
    if (status === "error") throw new Error(`cart ${uid} failed: ${message}`);
    await sleep(50);
  }
}

/** A cart document of `files` files whose JSON is about `bytes` long (long paths). */
function bigDocument(files: number, bytes: number): string {
  const per = Math.floor(bytes / files) - 40;
  const parts: string[] = [];
  for (let i = 0; i < files; i++) {
    const id = `nope-${String(i).padStart(6, "0")}`;
    const folders = Math.max(1, Math.floor((per - id.length - 10) / 96));
    const dirs = Array.from({ length: folders }, (_, k) => `${k}${"p".repeat(94)}`).join("/");
    parts.push(`{"id":"${id}","path":"d${i % 100}/${dirs}/${id}.dat"}`);
  }
  return `{"fileids":[${parts.join(",")}]}`;
}

/** Entry point: prints the table; returns the exit code. */
export async function main(args: string[] = Deno.args.slice(1)): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      rounds: { type: "string", default: "3" },
      // "downloads" or "documents" runs that part alone
      only: { type: "string", default: "" },
    },
  });
  const only = values.only;
  const rounds = Math.max(1, Number(values.rounds) || 3);
  const env: Record<string, string> = Object.fromEntries(
    ["CARTD_LOG_LEVEL", "CARTD_FILES_IN_FLIGHT", "CARTD_CARTS_IN_FLIGHT"].map((name) => [
      name,
      SETTINGS.find(([n]) => n === name)![2],
    ]),
  );
  env.CARTD_LOG_LEVEL = "warn";
  if (Deno.env.get("CARTD_HTTP_THREADS")) {
    env.CARTD_HTTP_THREADS = Deno.env.get("CARTD_HTTP_THREADS")!;
  }
  if (Deno.env.get("CARTD_GC_SLACK")) env.CARTD_GC_SLACK = Deno.env.get("CARTD_GC_SLACK")!;
  const load = () => Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  console.log(
    `cartd concurrent benchmark — ${new Date().toISOString()}, ${navigator.hardwareConcurrency} ` +
      `cores, load ${load()}, rounds ${rounds}, env ${JSON.stringify(env)}`,
  );
  const archive = await startArchiveProcess();
  const volume = await Deno.makeTempDir({ prefix: "cartd-bench-concurrent-" });
  const rows: Row[] = [];
  const cartd = await startCartd({ env: { ...env, ARCHIVE_INTERFACE_URL: archive.url }, volume });
  const pid = cartd.process.pid;
  try {
    await sleep(1000);
    const idle = rssNow(pid);
    if (only !== "documents") {
      progress("staging 16 × 64 MiB and 4 × 4 MiB");
      await archive.put({ prefix: "big16-", count: 16, size: 64 * MiB, kind: "pattern" });
      await archive.put({ prefix: "mid4-", count: 4, size: 4 * MiB, kind: "pattern" });
      await ready(cartd.url, "big", cartDoc(benchIds("big16-", 16), "big"));
      await ready(cartd.url, "mid", cartDoc(benchIds("mid4-", 4), "mid"));
      const ids: string[] = [];
      for await (const e of Deno.readDir(`${volume}/carts`)) ids.push(e.name);
      let bigDir = "";
      for (const id of ids) {
        const n = [...Deno.readDirSync(`${volume}/carts/${id}/files`)].length;
        if (n === 16) bigDir = `${volume}/carts/${id}/files`;
      }
      const fileNames = Array.from({ length: 16 }, (_, i) => String(i));
      const tar = `tar cf - -C ${bigDir} ${fileNames.join(" ")} | cat >/dev/null`;
      const zeroCopy = await startSendfileServer(bigDir, fileNames);
      const big = `${cartd.url}big`;
      const mid = `${cartd.url}mid`;
      await curl(big).done; // warm-up
      await curl(zeroCopy.url).done;
      const idleAfter = rssNow(pid);

      // ---- 1 GiB: one, ten, ten tars
      const one: number[] = [];
      const tar1: number[] = [];
      const ten: number[] = [];
      const tar10: number[] = [];
      const spread: number[] = [];
      const zero1: number[] = [];
      const zero10: number[] = [];
      const cpuOne: Record<string, Cpu & { bytes: number }> = {};
      const cpuTen: Record<string, Cpu & { bytes: number }> = {};
      let rssOne = 0;
      let rssTen = 0;
      for (let r = 1; r <= rounds; r++) {
        progress(
          `1 GiB round ${r}/${rounds}: tar, one GET, ten tars, ten GETs, one and ten zero-copy`,
        );
        tar1.push(GiB / await timeShell(tar));
        let peak = new PeakRss(pid);
        let cpu0 = threadCpu(pid);
        const single = await together(big, 1);
        addCpu(cpuOne, cpuSince(cpu0, threadCpu(pid)), single.bytes);
        rssOne = Math.max(rssOne, peak.stop());
        one.push(single.aggregate);
        const t0 = performance.now();
        await Promise.all(Array.from({ length: 10 }, () => timeShell(tar)));
        tar10.push(10 * GiB / ((performance.now() - t0) / 1000));
        peak = new PeakRss(pid);
        cpu0 = threadCpu(pid);
        const many = await together(big, 10);
        addCpu(cpuTen, cpuSince(cpu0, threadCpu(pid)), many.bytes);
        rssTen = Math.max(rssTen, peak.stop());
        if (many.failed) throw new Error(`${many.failed} of 10 GETs failed`);
        ten.push(many.aggregate);
        spread.push(Math.min(...many.rates) / Math.max(...many.rates));
        zero1.push((await together(zeroCopy.url, 1)).aggregate);
        zero10.push((await together(zeroCopy.url, 10)).aggregate);
      }
      await zeroCopy.stop();
      const byThread = (sums: Record<string, Cpu & { bytes: number }>) =>
        Object.entries(sums).filter(([, c]) => c.user + c.sys >= 0.02 * c.bytes / GiB).map((
          [kind, c],
        ) => `${kind} ${f2(c.user / (c.bytes / GiB))}u+${f2(c.sys / (c.bytes / GiB))}s`).join(
          ", ",
        );
      rows.push(
        { figure: "CPU s/GiB by thread, one GET", cartd: byThread(cpuOne) },
        { figure: "CPU s/GiB by thread, ten GETs", cartd: byThread(cpuTen) },
      );
      const ratioOne = ten.map((t, i) => t / one[i]);
      const ratioTar = ten.map((t, i) => t / tar10[i]);
      const single = one.map((o, i) => o / tar1[i]);
      const zeroRatio = zero10.map((z, i) => z / zero1[i]);
      const tenZero = ten.map((t, i) => t / zero10[i]);
      const oneZero = one.map((o, i) => o / zero1[i]);
      rows.push(
        {
          figure: "10 GETs of 1 GiB at once, aggregate (median)",
          cartd: rate(median(ten)),
          baseline: `one GET ${rate(median(one))}`,
          ratio: `${f2(median(ratioOne))}× (rounds ${ratioOne.map(f2).join(", ")})`,
          target: "≥ 1.5×",
          ok: median(ratioOne) >= 1.5,
        },
        {
          figure: "10 GETs of 1 GiB vs 10 GNU tars at once",
          cartd: rate(median(ten)),
          baseline: `10 tars ${rate(median(tar10))}`,
          ratio: `${f2(median(ratioTar))}× (rounds ${ratioTar.map(f2).join(", ")})`,
          target: "≥ 0.5×",
          ok: median(ratioTar) >= 0.5,
        },
        {
          figure: "10 GETs: slowest ÷ fastest stream (worst round)",
          cartd: `${f2(Math.min(...spread))}×`,
          target: "≥ 0.5×",
          ok: Math.min(...spread) >= 0.5,
        },
        {
          figure: "one GET of 1 GiB vs one GNU tar (median of rounds)",
          cartd: rate(median(one)),
          baseline: `tar ${rate(median(tar1))}`,
          ratio: `${f2(median(single))}× (rounds ${single.map(f2).join(", ")})`,
          target: "≥ 0.8×",
          ok: median(single) >= 0.8,
        },
        {
          figure: "zero-copy server: 10 GETs ÷ one GET (what the cores allow; no target)",
          cartd: "–",
          baseline: `one ${rate(median(zero1))}, ten ${rate(median(zero10))}`,
          ratio: `${f2(median(zeroRatio))}× (rounds ${zeroRatio.map(f2).join(", ")})`,
        },
        {
          figure: "10 GETs of 1 GiB vs 10 GETs of the zero-copy server",
          cartd: rate(median(ten)),
          baseline: `zero-copy ${rate(median(zero10))}`,
          ratio: `${f2(median(tenZero))}× (rounds ${tenZero.map(f2).join(", ")})`,
        },
        {
          figure: "one GET of 1 GiB vs one GET of the zero-copy server",
          cartd: rate(median(one)),
          baseline: `zero-copy ${rate(median(zero1))}`,
          ratio: `${f2(median(oneZero))}× (rounds ${oneZero.map(f2).join(", ")})`,
        },
      );

      // ---- 100 × 16 MiB
      progress("100 GETs of 16 MiB at once");
      let peak = new PeakRss(pid);
      const hundred = await together(mid, 100);
      const rssHundred = peak.stop();
      rows.push({
        figure: "100 GETs of a 16 MiB cart at once: failures, aggregate",
        cartd: `${hundred.failed} failed, ${rate(hundred.aggregate)}`,
        target: "0 failed",
        ok: hundred.failed === 0,
      });

      // ---- 4 full speed alone, then beside 20 slow readers
      progress("4 full-speed GETs alone");
      const four = await together(big, 4);
      progress("4 full-speed GETs beside 20 slow readers (1 KiB/s)");
      peak = new PeakRss(pid);
      const slow20 = Array.from({ length: 20 }, () => curl(big, "1k"));
      await sleep(2000);
      const fourSlow = await together(big, 4);
      await sleep(1000);
      const rssSlow20 = peak.stop();
      for (const s of slow20) s.kill();
      await Promise.all(slow20.map((s) => s.done));
      const slowRatio = fourSlow.aggregate / four.aggregate;
      rows.push({
        figure: "4 full-speed GETs beside 20 slow readers, aggregate",
        cartd: rate(fourSlow.aggregate),
        baseline: `4 alone ${rate(four.aggregate)}`,
        ratio: `${f2(slowRatio)}×`,
        target: "≥ 0.8×, 0 failed",
        ok: slowRatio >= 0.8 && fourSlow.failed === 0 && four.failed === 0,
      });

      // ---- 100 slow readers, then closed
      await sleep(3000);
      const before = rssNow(pid);
      progress("100 slow readers (1 KiB/s) for 15 s, then closed");
      peak = new PeakRss(pid);
      const slow100 = Array.from({ length: 100 }, () => curl(big, "1k"));
      await sleep(15_000);
      const during = rssNow(pid);
      const rssSlow100 = peak.stop();
      for (const s of slow100) s.kill();
      await Promise.all(slow100.map((s) => s.done));
      await sleep(5000);
      const after = rssNow(pid);
      rows.push({
        figure: "100 slow readers: RSS before / during (peak) / 5 s after closing",
        cartd: `${mib(before)} / ${mib(during)} (${mib(rssSlow100)}) / ${mib(after)}`,
        ratio: `after − before ${mib(after - before)}`,
        target: "≤ 20 MiB",
        ok: after - before <= 20 * MiB,
      });

      // ---- memory table
      const per10 = (rssTen - idleAfter) / 10;
      const per100 = (rssHundred - idleAfter) / 100;
      rows.push(
        {
          figure: "peak RSS idle (1 s after start) / after warm-up",
          cartd: `${mib(idle)} / ${mib(idleAfter)}`,
        },
        {
          figure: "peak RSS one download of 1 GiB",
          cartd: mib(rssOne),
          target: "≤ 150 MiB",
          ok: rssOne <= 150 * MiB,
        },
        {
          figure: "peak RSS 10 downloads of 1 GiB",
          cartd: mib(rssTen),
          ratio: `${mib(per10)} per download over idle`,
          target: "≤ 150 MiB + 4 MiB each",
          ok: rssTen <= 190 * MiB,
        },
        {
          figure: "peak RSS 100 downloads of 16 MiB",
          cartd: mib(rssHundred),
          ratio: `${(per100 / MiB).toFixed(1)} MiB per download over idle`,
          target: "≤ 150 MiB + 4 MiB each",
          ok: rssHundred <= 550 * MiB,
        },
        {
          figure: "peak RSS 20 slow readers + 4 full-speed",
          cartd: mib(rssSlow20),
          target: "≤ 150 MiB + 4 MiB each",
          ok: rssSlow20 <= (150 + 24 * 4) * MiB,
        },
      );
    }

    if (only !== "downloads") {
      // ---- four 64 MiB documents
      progress("four 64 MiB documents of 100,000 files at once");
      const doc = new TextEncoder().encode(bigDocument(100_000, 64 * 1000 * 1000));
      const docBefore = rssNow(pid);
      const peak = new PeakRss(pid);
      // Each GET /: when it was asked (ms after the POSTs began) and how long it took.
      const pings: { at: number; ms: number }[] = [];
      let posting = true;
      const t0 = performance.now();
      const pinger = (async () => {
        while (posting) {
          // curl's own time (its process apart from this one, which is busy sending the four
          // documents), from the start of its connection to the last byte of the answer
          const at = performance.now() - t0;
          const got = await curl(cartd.url).done;
          if (got.status !== 200) throw new Error(`GET / answered ${got.status}`);
          pings.push({ at, ms: got.seconds * 1000 });
          await sleep(50);
        }
      })();
      const posts = await Promise.all([0, 1, 2, 3].map(async (i) => {
        const res = await fetch(`${cartd.url}doc-${i}`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: doc,
        });
        await res.body?.cancel();
        return res.status;
      }));
      const postSeconds = (performance.now() - t0) / 1000;
      posting = false;
      await pinger;
      const docPeak = peak.stop();
      const slowestPing = pings.reduce((a, b) => (b.ms > a.ms ? b : a), { at: 0, ms: 0 });
      const sorted = pings.map((p) => p.ms).sort((a, b) => a - b);
      const quantile = (q: number) =>
        sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
      // What is left 10 s after the answers, and 10 s later: the carts go on (to `error`: their
      // files are not in the archive), and memory comes back when a collection happens to run.
      await sleep(10_000);
      const docAfter = rssNow(pid);
      await sleep(10_000);
      const docLater = rssNow(pid);
      rows.push(
        {
          figure: `four ${mib(doc.length)} documents at once: answers, seconds`,
          cartd: `${posts.join(" ")}, ${f2(postSeconds)} s`,
        },
        {
          figure: "  peak RSS (before → peak → 10 s after → 20 s after)",
          cartd: `${mib(docBefore)} → ${mib(docPeak)} → ${mib(docAfter)} → ${mib(docLater)}`,
          ratio: `${f2((docPeak - docBefore) / (4 * doc.length))}× the 4 documents`,
          target: "≤ 2×",
          ok: docPeak - docBefore <= 2 * 4 * doc.length,
        },
        {
          figure: "  slowest GET / meanwhile",
          cartd: `${slowestPing.ms.toFixed(0)} ms (${pings.length} asked)`,
          baseline: `asked ${f2(slowestPing.at / 1000)} s after the POSTs began`,
          target: "≤ 100 ms",
          ok: slowestPing.ms <= 100,
        },
        {
          figure: "  GET / meanwhile: median / 95th percentile / over 100 ms",
          cartd: `${quantile(0.5).toFixed(0)} / ${quantile(0.95).toFixed(0)} ms / ${
            pings.filter((p) => p.ms > 100).length
          }`,
          baseline: pings.filter((p) => p.ms > 100).slice(0, 8).map((p) =>
            `${f2(p.at / 1000)} s: ${p.ms.toFixed(0)} ms`
          ).join(", "),
        },
      );
    }
  } catch (e) {
    console.error(cartd.output().split("\n").slice(-20).join("\n"));
    throw e;
  } finally {
    await cartd.stop();
    await archive.stop();
    await Deno.remove(volume, { recursive: true }).catch(() => {});
  }
  const widths = [0, 1, 2, 3, 4].map((i) =>
    Math.max(
      ...rows.map((r) =>
        [r.figure, r.cartd, r.baseline ?? "", r.ratio ?? "", r.target ?? ""][i].length
      ),
    )
  );
  for (const r of rows) {
    const cells = [r.figure, r.cartd, r.baseline ?? "", r.ratio ?? "", r.target ?? ""];
    console.log(
      cells.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join("  ") +
        (r.ok === undefined ? "" : r.ok ? "  ok" : "  MISS"),
    );
  }
  console.log(`load at the end: ${load()} (the machine is shared: figures are noisy)`);
  return 0;
}
