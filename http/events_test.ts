/**
 * Tests of the {@linkcode EventHub} on a SQLite store (no server, no worker): one query per
 * poll for every open stream, events as the cart's row moves, and nothing kept of a stream
 * that its reader cancelled (the server cancels a body whose client went away).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import v8 from "node:v8";
import vm from "node:vm";
import { loadConfig } from "../lib/config/config.ts";
import type { Db } from "../lib/db/db.ts";
import { openSqlite } from "../lib/db/sqlite.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { CartStore } from "../lib/store/store.ts";
import { eventually } from "../tests/support/eventually.ts";
import { EventHub } from "./events.ts";

/** A store with `carts` carts of one file each (uids `c0`, `c1`, …), counting its reads. */
async function storeWith(carts: number) {
  const dir = await Deno.makeTempDir({ prefix: "events_test_" });
  const db = openSqlite(join(dir, "cartd.sqlite3"));
  await syncSchema(db);
  let reads = 0;
  const counting: Db = {
    dialect: db.dialect,
    all: (sql, params) => (reads++, db.all(sql, params)),
    run: (sql, params) => db.run(sql, params),
    transaction: (work) => db.transaction(work),
    checkpoint: (waitMs) => db.checkpoint(waitMs),
    close: () => db.close(),
  };
  const store = new CartStore(counting);
  const ids: string[] = [];
  for (let i = 0; i < carts; i++) {
    const doc = { files: [{ id: "1", path: "a.txt" }], bundle: false, manifest: false };
    ids.push((await store.createCart(`c${i}`, doc, String(i).padStart(64, "0"))).cart.id);
  }
  const config = loadConfig({ VOLUME_PATH: join(dir, "volume") });
  return {
    store,
    config,
    ids,
    reads: () => reads,
    async [Symbol.asyncDispose]() {
      await db.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** A reader of a stream whose read left waiting at a time-out is kept for the next call. */
class Reader {
  #pending: Promise<ReadableStreamReadResult<Uint8Array>> | null = null;
  constructor(readonly reader: ReadableStreamDefaultReader<Uint8Array>) {}

  /** What the stream writes within `ms`, as text (`<end>` where it ended). */
  async for(ms: number): Promise<string> {
    let text = "";
    const decoder = new TextDecoder();
    const stop = new Promise<null>((resolve) => setTimeout(() => resolve(null), ms));
    for (;;) {
      this.#pending ??= this.reader.read();
      const next = await Promise.race([this.#pending, stop]);
      if (next === null) return text;
      this.#pending = null;
      if (next.done) return text + "<end>";
      text += decoder.decode(next.value);
    }
  }
}

/** V8's collector, exposed for this test process. */
function collector(): () => void {
  v8.setFlagsFromString("--expose-gc");
  return vm.runInNewContext("gc");
}

const request = (uid: string) => new Request(`http://cartd/${uid}/events`);

Deno.test("the hub reads every open stream's cart in one query per poll, and sends what moved", async () => {
  await using s = await storeWith(5);
  const hub = new EventHub({ store: s.store, config: s.config, keepAliveMs: 60_000, pollMs: 50 });
  try {
    const readers = [];
    for (let i = 0; i < 50; i++) {
      const res = await hub.open(request(`c${i % 5}`), `c${i % 5}`);
      assert.equal(res.headers.get("content-type"), "text/event-stream");
      readers.push(new Reader(res.body!.getReader()));
    }
    assert.equal(hub.size, 50);
    const first = await readers[0].for(30);
    assert.match(await readers[1].for(30), /"uid":"c1","state":"waiting"/);
    assert.match(first, /^retry: 2000\n\nid: [0-9a-f]{12}\.waiting\.0\.0\.0\.\nevent: state\n/);
    // Idle: one query per poll for the 50 streams (at 50 ms, some 10 polls in 0.5 s).
    const before = s.reads();
    await new Promise((r) => setTimeout(r, 500));
    const polls = s.reads() - before;
    assert.ok(polls >= 3 && polls <= 12, `${polls} queries in 500 ms of 50 ms polls`);
    // A state change reaches every stream of that cart, and only those.
    await s.store.startStaging(s.ids[0], null);
    const moved = await readers[0].for(200);
    assert.match(moved, /event: state\ndata: \{"uid":"c0","state":"staging"/);
    assert.equal(await readers[1].for(200), "", "c1 did not move");
    // Progress: a staged file; then ready would end the stream (here: failed, which is final).
    const facts = { size: 10, mtime: 0, sha256: "0".repeat(64), crc32: 0 };
    await s.store.fileStaged(s.ids[0], 0, facts);
    assert.match(await readers[5].for(200), /staging[\s\S]*event: progress\n.*"staged":1/);
    await s.store.fail(s.ids[0], "the archive lost it");
    assert.match(await readers[10].for(200), /event: state\n.*"state":"error"[\s\S]*<end>$/);
    await eventually("c0's ten streams are over", () => hub.size === 40, 2000);
    // A deleted cart: `deleted`, then the end.
    await s.store.unlive(s.ids[1]);
    assert.match(await readers[1].for(300), /event: deleted\ndata: \{"uid":"c1"[\s\S]*<end>$/);
  } finally {
    hub.close();
  }
  assert.equal(hub.size, 0);
});

Deno.test("a stream cancelled by its reader leaves nothing behind: 10,000 of them", async () => {
  await using s = await storeWith(1);
  const hub = new EventHub({ store: s.store, config: s.config, keepAliveMs: 100, pollMs: 50 });
  const gc = collector();
  const round = async (n: number) => {
    for (let i = 0; i < n; i++) {
      const reader = (await hub.open(request("c0"), "c0")).body!.getReader();
      await reader.read();
      await reader.cancel();
    }
    await new Promise((r) => setTimeout(r, 120));
    gc();
    return Deno.memoryUsage().heapUsed;
  };
  try {
    await round(1000); // warm up
    const before = await round(1000);
    const after = await round(10_000);
    assert.equal(hub.size, 0);
    // A stream kept would be a KiB or more each: 10 MiB here.
    const perStream = (after - before) / 10_000;
    assert.ok(perStream < 100, `${perStream.toFixed(1)} bytes per stream`);
  } finally {
    hub.close();
  }
});

Deno.test("a closed hub ends its streams and answers 503; an unknown cart is 404", async () => {
  await using s = await storeWith(1);
  const hub = new EventHub({ store: s.store, config: s.config, keepAliveMs: 60_000 });
  const reader = new Reader((await hub.open(request("c0"), "c0")).body!.getReader());
  const unknown = await hub.open(request("nobody"), "nobody");
  assert.equal(unknown.status, 404);
  assert.match((await unknown.json()).message, /does not exist/);
  hub.close();
  assert.match(await reader.for(100), /event: state[\s\S]*<end>$/);
  const late = await hub.open(request("c0"), "c0");
  assert.equal(late.status, 503);
  await late.body?.cancel();
});
