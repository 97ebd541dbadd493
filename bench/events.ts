/**
 * `deno task bench events` (or `deno run -A bench/events.ts`): issue 16's event-stream figures,
 * against `cartd serve` on a SQLite volume whose carts the bench writes (no worker: nothing
 * moves, so the streams are idle but for the poll and the keep-alives).
 *
 * - 1,000 open streams on one process, of one cart and of 1,000 carts (one each): RSS added,
 *   and CPU (user + system, all threads) per second while idle, measured over
 *   {@linkcode IDLE_MS}, beside the same process with no stream.
 * - 10,000 dropped streams (100 at a time; each reads its first event, then the connection is
 *   cut), against a process whose keep-alive is 1 s: open descriptors and RSS every 2,000, and
 *   once the keep-alive let them go,
 *   beside 10,000 plain `GET /{uid}/status` answers in the same process first.
 *
 * It measures and prints; it asserts nothing. Figures taken while other work runs on the
 * machine are noisy: compare the rows of one run.
 *
 * @module
 */
import { join } from "node:path";
import { parseCartDocument } from "../lib/cart/document.ts";
import { openSqlite } from "../lib/db/sqlite.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { CartStore } from "../lib/store/store.ts";
import { startCartd } from "../tests/support/harness.ts";

/** Streams held open at once. */
const STREAMS = 1000;
/** Streams dropped in the leak case, and how many at once. */
const DROPPED = 10_000;
const AT_ONCE = 100;
/** How long CPU is measured while idle (ms). */
const IDLE_MS = 20_000;
/** Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux). */
const TICKS = 100;

/** Writes STREAMS staging carts `c0` … of one file each. */
async function fill(volume: string): Promise<void> {
  const db = openSqlite(join(volume, "cartd.sqlite3"));
  try {
    await syncSchema(db);
    const store = new CartStore(db);
    for (let i = 0; i < STREAMS; i++) {
      const doc = parseCartDocument(JSON.stringify({ fileids: [{ id: `f${i}`, path: "a" }] }));
      const { cart } = await store.createCart(`c${i}`, doc, `hash-${i}`);
      await store.startStaging(cart.id, null);
    }
  } finally {
    await db.close();
  }
}

/** RSS (KiB), open descriptors and CPU ticks (user + system) of process `pid`. */
async function usage(pid: number): Promise<{ rssKiB: number; fds: number; ticks: number }> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const stat = (await Deno.readTextFile(`/proc/${pid}/stat`)).split(") ")[1].split(" ");
  let fds = 0;
  for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) fds++;
  return {
    rssKiB: Number(/VmRSS:\s+(\d+)/.exec(status)![1]),
    fds,
    ticks: Number(stat[11]) + Number(stat[12]), // utime, stime (fields 14 and 15)
  };
}

/** CPU of `pid` per second of wall time over IDLE_MS, in ms. */
async function idleCpu(pid: number): Promise<number> {
  const before = await usage(pid);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, IDLE_MS));
  const after = await usage(pid);
  const seconds = (performance.now() - t0) / 1000;
  return ((after.ticks - before.ticks) * 1000 / TICKS) / seconds;
}

/** An open stream of `uid`, its first event read; `close` cuts it. */
async function openStream(url: string, uid: string): Promise<{ close(): Promise<void> }> {
  const ac = new AbortController();
  const res = await fetch(`${url}${uid}/events`, { signal: ac.signal });
  if (res.status !== 200) throw new Error(`${uid}/events answered ${res.status}`);
  const reader = res.body!.getReader();
  let text = "";
  while (!text.includes("event:")) {
    const { done, value } = await reader.read();
    if (done) throw new Error(`${uid}/events ended before its first event`);
    text += new TextDecoder().decode(value);
  }
  return {
    async close() {
      ac.abort();
      await reader.cancel().catch(() => {});
    },
  };
}

/** The `cartd_event_streams_open` of the process at `url`. */
async function streamsOpen(url: string): Promise<number> {
  const text = await (await fetch(`${url}_cartd/metrics`)).text();
  return Number(/^cartd_event_streams_open (\d+)/m.exec(text)?.[1] ?? NaN);
}

/** Waits until the process at `url` has no stream open (at most 40 s). */
async function drained(url: string): Promise<void> {
  const deadline = Date.now() + 40_000;
  while (await streamsOpen(url) !== 0) {
    if (Date.now() > deadline) throw new Error("streams still open after 40 s");
    await new Promise((r) => setTimeout(r, 200));
  }
}

const mib = (kib: number) => (kib / 1024).toFixed(1);

/** Runs the cases; returns the process exit code. */
export async function main(): Promise<number> {
  const volume = await Deno.makeTempDir({ prefix: "cartd-bench-events-" });
  try {
    await fill(volume);
    await using cartd = await startCartd({
      role: "serve",
      volume,
      env: {
        ARCHIVE_INTERFACE_URL: "http://127.0.0.1:9/",
        CARTD_MAX_CONNECTIONS: "4000",
        // The default: a keep-alive every 15 s, so the idle CPU is the poll's and a dropped
        // stream is let go within 15 s.
        CARTD_EVENTS_KEEPALIVE: "15",
      },
    });
    const pid = cartd.process.pid;
    const { url } = cartd;
    // Warm up: code loaded, pools grown.
    for (let i = 0; i < 3; i++) await (await openStream(url, "c0")).close();
    await drained(url);
    await new Promise((r) => setTimeout(r, 2000));
    const idle = await usage(pid);
    const idleMs = await idleCpu(pid);
    console.log(
      `no stream: RSS ${mib(idle.rssKiB)} MiB, ${idle.fds} fds, ` +
        `CPU ${idleMs.toFixed(2)} ms/s idle (over ${IDLE_MS / 1000} s)`,
    );
    for (const [name, uid] of [["one cart", () => "c0"], ["1,000 carts", (i: number) => `c${i}`]]) {
      const pick = uid as (i: number) => string;
      const streams = [];
      for (let i = 0; i < STREAMS; i += AT_ONCE) {
        streams.push(
          ...await Promise.all(
            Array.from({ length: AT_ONCE }, (_, k) => openStream(url, pick(i + k))),
          ),
        );
      }
      await new Promise((r) => setTimeout(r, 2000));
      const open = await usage(pid);
      const cpu = await idleCpu(pid);
      console.log(
        `${STREAMS} streams of ${name}: RSS +${mib(open.rssKiB - idle.rssKiB)} MiB ` +
          `(${((open.rssKiB - idle.rssKiB) / STREAMS).toFixed(1)} KiB each), ` +
          `${open.fds - idle.fds} more fds, CPU ${cpu.toFixed(2)} ms/s idle ` +
          `(${(cpu - idleMs).toFixed(2)} more: a poll a second, a keep-alive each 15 s)`,
      );
      await Promise.all(streams.map((s) => s.close()));
      await drained(url);
    }

    await cartd.stop();
    await dropped(volume);
    return 0;
  } finally {
    await Deno.remove(volume, { recursive: true }).catch(() => {});
  }
}

/**
 * The dropped streams, against a process of their own whose keep-alive is 1 s: a dropped
 * stream holds its connection (and some 40 KiB) until the next keep-alive, so 10,000 dropped
 * within 15 s would hold thousands at once, up to the connection cap.
 */
async function dropped(volume: string): Promise<void> {
  {
    await using cartd = await startCartd({
      role: "serve",
      volume,
      env: {
        ARCHIVE_INTERFACE_URL: "http://127.0.0.1:9/",
        CARTD_MAX_CONNECTIONS: "4000",
        CARTD_EVENTS_KEEPALIVE: "1",
      },
    });
    const pid = cartd.process.pid;
    const { url } = cartd;
    // Dropped: plain answers first, as the yardstick of the allocator's drift.
    const sample = async (label: string) => {
      const u = await usage(pid);
      console.log(`  ${label}: RSS ${mib(u.rssKiB)} MiB, ${u.fds} fds`);
      return u;
    };
    console.log(`${DROPPED} GET /{uid}/status, ${AT_ONCE} at a time (the yardstick):`);
    for (let done = 0; done < DROPPED; done += AT_ONCE) {
      await Promise.all(
        Array.from({ length: AT_ONCE }, () => fetch(`${url}c0/status`).then((r) => r.text())),
      );
      if ((done + AT_ONCE) % 2000 === 0) await sample(`after ${done + AT_ONCE}`);
    }
    await new Promise((r) => setTimeout(r, 2000));
    const before = await sample("2 s later");
    console.log(`${DROPPED} dropped event streams, ${AT_ONCE} at a time:`);
    for (let done = 0; done < DROPPED; done += AT_ONCE) {
      const batch = await Promise.all(
        Array.from({ length: AT_ONCE }, () => openStream(url, "c0")),
      );
      await Promise.all(batch.map((s) => s.close()));
      if ((done + AT_ONCE) % 2000 === 0) await sample(`after ${done + AT_ONCE}`);
    }
    await drained(url);
    await new Promise((r) => setTimeout(r, 2000));
    const after = await sample("all let go, 2 s later");
    console.log(
      `dropped streams: fds ${before.fds} → ${after.fds}, ` +
        `RSS ${mib(before.rssKiB)} → ${mib(after.rssKiB)} MiB`,
    );
  }
}

if (import.meta.main) Deno.exit(await main());
