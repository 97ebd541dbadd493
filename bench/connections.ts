/**
 * `deno task bench connections` (also part of `memory`): issue 18's memory figures, beside the
 * issue's own. One embedded cartd (the shipped defaults, with `CARTD_MAX_CONNECTIONS` raised
 * above 1,000 so that none is refused), its RSS read from `/proc`:
 *
 * - one POST, then 4 at once, of a 20,000-byte cart document sent as 20,000 one-byte chunks,
 *   each chunk its own write on a raw TCP connection: the peak, and the RSS a few seconds
 *   after (whether the memory is given back);
 * - 1,000 idle TCP connections held open: the RSS added once they are all accepted, then
 *   once each has made one keep-alive `GET /` (and waits idle again).
 *
 * The descriptor limit of the cartd process (`ulimit -n`, read from `/proc/PID/limits`) is
 * printed with the rows. Then the issue's own case: a second cartd under `ulimit -n 1024`
 * with the default cap ((1024 − 64) / 2 = 480), where Deno.serve's accept loop used to end the
 * process at about 993 connections: 1,000 connections each send `GET /`, and the row says how
 * many were served, how many refused with 503, and whether cartd still answers.
 *
 * @module
 */
import { type Cartd, startCartd } from "../tests/support/harness.ts";
import { MiB, PeakRss, type Row, rssNow } from "./common.ts";

/** What the scenario needs from the driver (bench/run.ts). */
export interface ConnectionBenchOptions {
  /** cartd's settings (the shipped defaults, written out). */
  env: Record<string, string>;
  /** The fake archive's URL (nothing is fetched; cartd needs one to start). */
  archiveUrl: string;
  /** A temp folder removed at the end of the run. */
  tempDir(prefix: string): Promise<string>;
  /** Prints a progress line. */
  progress(text: string): void;
}

/** Idle connections held open at once. */
const IDLE = 1000;
const utf8 = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;
const plus = (bytes: number) => `+${(bytes / MiB).toFixed(0)} MiB`;

/** The soft descriptor limit of process `pid` (`Max open files` in /proc/PID/limits). */
function fdLimit(pid: number): string {
  const limits = Deno.readTextFileSync(`/proc/${pid}/limits`);
  return /^Max open files\s+(\S+)/m.exec(limits)?.[1] ?? "?";
}

/** Writes all of `bytes` to `conn`. */
async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

/**
 * POSTs a 20,000-byte cart document to `uid` as 20,000 one-byte chunks, each its own write;
 * resolves once cartd has answered (its status code).
 */
async function oneByteChunkPost(port: number, uid: string): Promise<number> {
  const doc = '{"fileids": [{"id": "x", "path": "x"}], "pad": "';
  const body = utf8.encode(doc + "x".repeat(20_000 - doc.length - 2) + '"}');
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await writeAll(
      conn,
      utf8.encode(
        `POST /${uid} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`,
      ),
    );
    for (const byte of body) await writeAll(conn, new Uint8Array([0x31, 13, 10, byte, 13, 10]));
    await writeAll(conn, utf8.encode("0\r\n\r\n"));
    const answer = new Uint8Array(4096);
    const n = await conn.read(answer).catch(() => null);
    return n ? Number(new TextDecoder().decode(answer.subarray(0, n)).split(" ")[1]) : 0;
  } finally {
    conn.close();
  }
}

/** Peak RSS of `cartd` while `posts` one-byte-chunk POSTs run at once, and its RSS 3 s after. */
async function chunkPosts(cartd: Cartd, posts: number, tag: string) {
  const port = Number(new URL(cartd.url).port);
  const pid = cartd.process.pid;
  const before = rssNow(pid);
  const peak = new PeakRss(pid);
  const codes = await Promise.all(
    Array.from({ length: posts }, (_, i) => oneByteChunkPost(port, `${tag}-${i}`)),
  );
  const top = peak.stop();
  await sleep(3000);
  const bad = codes.filter((c) => c !== 201);
  if (bad.length) throw new Error(`one-byte-chunk POSTs answered ${bad.join(", ")}`);
  return { before, peak: top, after: rssNow(pid) };
}

/** RSS added by IDLE idle connections, then by one keep-alive GET / on each. */
async function idleConnections(cartd: Cartd) {
  const port = Number(new URL(cartd.url).port);
  const pid = cartd.process.pid;
  const before = rssNow(pid);
  const conns: Deno.Conn[] = [];
  try {
    for (let i = 0; i < IDLE; i++) conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    await sleep(2000);
    const idle = rssNow(pid);
    const buffer = new Uint8Array(4096);
    let answered = 0;
    await Promise.all(conns.map(async (conn) => {
      await writeAll(conn, utf8.encode("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
      const n = await conn.read(buffer.slice()).catch(() => null);
      if (n) answered++;
    }));
    await sleep(2000);
    const used = rssNow(pid);
    const alive = cartd.process.pid === pid && (await fetch(cartd.url)).status === 200;
    return { before, idle, used, answered, alive };
  } finally {
    for (const conn of conns) {
      try {
        conn.close();
      } catch { /* closed */ }
    }
  }
}

/** Answers to `GET /` on IDLE connections to a cartd under `ulimit -n 1024`, the defaults. */
async function underLowLimit(opts: ConnectionBenchOptions): Promise<Row> {
  const volume = await opts.tempDir("cartd-bench-fds-");
  const cartd = await startCartd({
    env: { ...opts.env, ARCHIVE_INTERFACE_URL: opts.archiveUrl },
    volume,
    fdLimit: 1024,
  });
  const conns: Deno.Conn[] = [];
  try {
    const port = Number(new URL(cartd.url).port);
    const limit = fdLimit(cartd.process.pid);
    for (let i = 0; i < IDLE; i++) conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    await sleep(1000);
    // Beyond the cap cartd closes a connection that sends nothing within a second (or at once
    // when 64 such are waiting already): these sent theirs after a second of idling.
    const counts = { ok: 0, busy: 0, closed: 0, none: 0 };
    await Promise.all(conns.map(async (conn) => {
      const buffer = new Uint8Array(4096);
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        conn.close();
      }, 15_000);
      try {
        await writeAll(conn, utf8.encode("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
        const n = await conn.read(buffer);
        const status = n ? new TextDecoder().decode(buffer.subarray(0, n)).split(" ")[1] : "";
        if (status === "200") counts.ok++;
        else if (status === "503") counts.busy++;
        else counts.closed++;
      } catch {
        if (timedOut) counts.none++;
        else counts.closed++;
      } finally {
        clearTimeout(timer);
      }
    }));
    for (const conn of conns.splice(0)) {
      try {
        conn.close();
      } catch { /* closed */ }
    }
    await sleep(500);
    const alive = await fetch(`http://127.0.0.1:${port}/`).then(async (r) => {
      await r.body?.cancel();
      return r.status === 200;
    }, () => false);
    return {
      figure: `${IDLE.toLocaleString("en")} connections under ulimit -n ${limit}, default cap`,
      cartd: `${counts.ok} served, ${counts.busy} refused (503), ${counts.closed} closed, ` +
        `${counts.none} hung; ${alive ? "alive" : "NOT answering"}`,
      baseline: "before: the process exited at ~993",
      target: "alive, none hung",
      ok: alive && counts.none === 0,
    };
  } finally {
    for (const conn of conns) {
      try {
        conn.close();
      } catch { /* closed */ }
    }
    await cartd.stop();
  }
}

/** Runs the scenario; returns its rows. */
export async function connectionRows(opts: ConnectionBenchOptions): Promise<Row[]> {
  const volume = await opts.tempDir("cartd-bench-conns-");
  const cartd = await startCartd({
    env: {
      ...opts.env,
      ARCHIVE_INTERFACE_URL: opts.archiveUrl,
      // 1,000 idle connections must all be taken; they wait far less than the idle limit.
      CARTD_MAX_CONNECTIONS: String(IDLE + 100),
    },
    volume,
  });
  const rows: Row[] = [];
  try {
    await sleep(1000);
    rows.push({
      figure: "descriptor limit (ulimit -n): cartd / the driver",
      cartd: `${fdLimit(cartd.process.pid)} / ${fdLimit(Deno.pid)}`,
    });
    opts.progress("connections: one POST of 20,000 one-byte chunks");
    const one = await chunkPosts(cartd, 1, "one");
    rows.push({
      figure: "1 POST of 20,000 one-byte chunks: peak RSS",
      cartd: `${mib(one.peak)} (from ${mib(one.before)})`,
      baseline: "before: 981 MiB (from 75)",
      target: "≤ 150 MiB",
      ok: one.peak <= 150 * MiB,
    });
    rows.push({ figure: "  RSS 3 s after", cartd: mib(one.after) });
    opts.progress("connections: 4 POSTs of 20,000 one-byte chunks at once");
    const four = await chunkPosts(cartd, 4, "four");
    rows.push({
      figure: "4 POSTs of 20,000 one-byte chunks at once: peak RSS",
      cartd: `${mib(four.peak)} (from ${mib(four.before)})`,
      baseline: "before: 4,084 MiB, kept",
      target: "≤ 150 MiB",
      ok: four.peak <= 150 * MiB,
    });
    rows.push({
      figure: "  RSS 3 s after (given back?)",
      cartd: mib(four.after),
      baseline: "before: 4,084 MiB",
    });
    opts.progress(`connections: ${IDLE} idle connections`);
    const idle = await idleConnections(cartd);
    rows.push({
      figure: `${IDLE.toLocaleString("en")} idle connections: RSS added`,
      cartd: `${plus(idle.idle - idle.before)} (${mib(idle.idle)})`,
      baseline: `before: process exited at ~993 (ulimit -n 1024)`,
    });
    rows.push({
      figure: "  after one GET / each (kept open)",
      cartd: `${plus(idle.used - idle.before)} (${mib(idle.used)}), ${idle.answered} answered`,
      ok: idle.answered === IDLE && idle.alive,
      target: `all ${IDLE} answered, alive`,
    });
    await cartd.stop();
    opts.progress(`connections: ${IDLE} connections to a cartd under ulimit -n 1024`);
    rows.push(await underLowLimit(opts));
    return rows;
  } catch (e) {
    console.error(cartd.output().split("\n").slice(-15).join("\n"));
    throw e;
  } finally {
    await cartd.stop();
  }
}
