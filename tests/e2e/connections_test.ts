/**
 * Connection limits (issue 18 item 2), against the real cartd command over raw TCP: idle
 * connections up to the file-descriptor limit and beyond the connection cap neither crash cartd
 * nor stop it from accepting; a request head dribbled slower than the header limit is cut; a
 * download read slower than the minimum rate is cut and its cart's purge hold released.
 */
import assert from "node:assert/strict";
import { startFakeArchive } from "../support/fake_archive.ts";
import { eventually } from "../support/eventually.ts";
import { postCart, startCartd, waitFor } from "../support/harness.ts";

const utf8 = new TextEncoder();
const KiB = 1024;

/** Opens up to `count` TCP connections to `port` (fewer when the server stops taking them). */
async function openIdle(port: number, count: number): Promise<Deno.Conn[]> {
  const conns: Deno.Conn[] = [];
  for (let i = 0; i < count; i++) {
    try {
      conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    } catch {
      break; // refused: the listener is gone (or its backlog is full)
    }
  }
  return conns;
}

/** GET / on a fresh connection, within `ms`: its status, or the error's message. */
async function getRoot(port: number, ms = 3000): Promise<number | string> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(ms) });
    await res.body?.cancel();
    return res.status;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

/** True once the server has closed `conn` (a read gives end of file or an error). */
async function closedByServer(conn: Deno.Conn, withinMs: number): Promise<boolean> {
  const buffer = new Uint8Array(4096);
  const deadline = Date.now() + withinMs;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) return false;
    const n = await Promise.race([
      conn.read(buffer).catch(() => null),
      new Promise<"open">((r) => setTimeout(() => r("open"), left)),
    ]);
    if (n === "open") return false;
    if (n === null) return true;
  }
}

/** Closes every connection of `conns`, ignoring those already closed. */
function closeAll(conns: Deno.Conn[]): void {
  for (const conn of conns) {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

Deno.test("connections: idle connections up to the descriptor limit neither end cartd nor stop it accepting", async () => {
  // No cap below the limit: accept itself meets EMFILE (the case of issue 18).
  await using cartd = await startCartd({
    env: { CARTD_MAX_CONNECTIONS: "1000", CARTD_HEADER_TIMEOUT: "2", CARTD_IDLE_TIMEOUT: "2" },
    fdLimit: 256,
  });
  const port = Number(new URL(cartd.url).port);
  const conns = await openIdle(port, 400);
  try {
    await new Promise((r) => setTimeout(r, 500));
    const exited = await Promise.race([
      cartd.process.status.then((s) => s.code),
      new Promise((r) => setTimeout(r, 300)),
    ]);
    assert.equal(exited, undefined, `cartd exited at the descriptor limit:\n${cartd.output()}`);
    // The idle ones are closed by the header limit; then a fresh connection is served.
    await eventually("cartd answers GET / again", async () => (await getRoot(port)) === 200);
    assert.match(cartd.output(), /Too many open files|descriptor/i, "the EMFILE is logged");
  } finally {
    closeAll(conns);
  }
});

/** Sends one keep-alive `GET /` on `conn` and reads its answer's first bytes: the status. */
async function getOn(conn: Deno.Conn): Promise<number> {
  await conn.write(utf8.encode("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
  const buffer = new Uint8Array(4096);
  const n = await conn.read(buffer);
  assert.ok(n, "an answer");
  return Number(new TextDecoder().decode(buffer.subarray(0, n)).split(" ")[1]);
}

Deno.test("connections: beyond CARTD_MAX_CONNECTIONS a connection gets 503; idle ones are closed after CARTD_IDLE_TIMEOUT", async () => {
  await using cartd = await startCartd({
    env: { CARTD_MAX_CONNECTIONS: "20", CARTD_IDLE_TIMEOUT: "1", CARTD_HEADER_TIMEOUT: "30" },
  });
  const port = Number(new URL(cartd.url).port);
  const kept = await openIdle(port, 20);
  try {
    for (const conn of kept) assert.equal(await getOn(conn), 200); // then idle between requests
    const extra = await openIdle(port, 10);
    const answers = await Promise.all(extra.map(async (conn) => {
      await conn.write(utf8.encode("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
      const buffer = new Uint8Array(4096);
      const n = await conn.read(buffer).catch(() => null);
      return n ? new TextDecoder().decode(buffer.subarray(0, n)) : "";
    }));
    closeAll(extra);
    for (const text of answers) assert.match(text, /^HTTP\/1\.1 503 .*CARTD_MAX_CONNECTIONS/s);
    assert.equal(await getRoot(port), 503, "still at the cap");
    const closed = await Promise.all(kept.map((conn) => closedByServer(conn, 5000)));
    assert.deepEqual(closed.filter((c) => !c).length, 0, "every idle connection was closed");
    assert.equal(await getRoot(port), 200);
    assert.match(cartd.output(), /connection cap reached/);
  } finally {
    closeAll(kept);
  }
});

Deno.test("connections: a request head dribbled slower than CARTD_HEADER_TIMEOUT is cut", async () => {
  await using cartd = await startCartd({ env: { CARTD_HEADER_TIMEOUT: "1" } });
  const port = Number(new URL(cartd.url).port);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const started = Date.now();
  await conn.write(utf8.encode("GET / HTTP/1.1\r\n"));
  const dribble = setInterval(() => conn.write(utf8.encode("X-Slow: 1\r\n")).catch(() => 0), 200);
  try {
    assert.ok(await closedByServer(conn, 5000), "the connection was closed");
    const took = Date.now() - started;
    assert.ok(took >= 900 && took < 4000, `closed after ${took} ms`);
    assert.equal(await getRoot(port), 200, "others are served meanwhile");
  } finally {
    clearInterval(dribble);
    closeAll([conn]);
  }
});

Deno.test("connections: a download read slower than CARTD_MIN_DOWNLOAD_RATE is cut and its cart's purge hold ends", async () => {
  const BIG = 24 * 1024 * KiB; // more than loopback's socket buffers hold
  await using archive = startFakeArchive();
  archive.put("big0", { size: BIG });
  archive.put("big1", { size: BIG });
  await using cartd = await startCartd({
    env: {
      ARCHIVE_INTERFACE_URL: archive.url,
      CARTD_VOLUME_SIZE: String(BIG + 512 * KiB),
      CARTD_MIN_DOWNLOAD_RATE: "1M",
      CARTD_RATE_WINDOW: "1",
    },
  });
  const one = (id: string) => ({ fileids: [{ id, path: `data/${id}` }] });
  assert.equal((await postCart(cartd.url, "a", one("big0"))).status, 201);
  assert.deepEqual(await waitFor(cartd.url, "a", "ready"), [204, "ready", ""]);
  const download = await fetch(cartd.url + "a");
  assert.equal(download.status, 200);
  const reader = download.body!.getReader();
  try {
    await reader.read(); // under way, and then stalled by us
    await eventually("the slow download is cut", () => /cut an answer/.test(cartd.output()));
    // b needs a's room: a is purgeable again, since the cut ended its hold.
    assert.equal((await postCart(cartd.url, "b", one("big1"))).status, 201);
    assert.deepEqual(await waitFor(cartd.url, "b", "ready"), [204, "ready", ""]);
    const rest = async () => {
      for (let r = await reader.read(); !r.done; r = await reader.read());
    };
    await assert.rejects(rest, "the client sees the download cut, not a whole body");
  } finally {
    await reader.cancel().catch(() => {});
  }
});
