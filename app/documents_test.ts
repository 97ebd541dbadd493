/**
 * Big cart documents in app/documents.ts, with the real document thread and a real SQLite
 * database: the thread hands each part back once parsed, later bodies are read into those
 * parts, and an earlier body's bytes left in a part are never read as a later one's.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../lib/config/config.ts";
import { openDb } from "../lib/db/open.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { CartStore } from "../lib/store/store.ts";
import { claimWanted, Documents } from "./documents.ts";

/** A cart document of `count` files whose paths are `pad` long, as bytes. */
function doc(prefix: string, count: number, pad: number): Uint8Array<ArrayBuffer> {
  const fileids = Array.from({ length: count }, (_, i) => ({
    id: `${prefix}${i}`,
    path: `${prefix}/${"p".repeat(pad)}/${i}`,
  }));
  return new TextEncoder().encode(JSON.stringify({ fileids }));
}

const post = (body: Uint8Array<ArrayBuffer>, length = true) =>
  new Request("http://cartd/", {
    method: "POST",
    headers: length ? { "content-length": String(body.length) } : {},
    body: length ? body : ReadableStream.from([body]),
  });

Deno.test("the parts of big documents are read into again, and nothing of an earlier one is read", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cartd-documents-" });
  const config = loadConfig({ VOLUME_PATH: dir, CARTD_MAX_BODY: "8M", CARTD_LOG_LEVEL: "warn" });
  const db = await openDb(config.database);
  await syncSchema(db);
  const store = new CartStore(db);
  const documents = new Documents(config, store);
  try {
    // 7.5 MiB: two parts of 4 MiB, the second 3.5 MiB full.
    const long = doc("a", 30_000, 240);
    assert.ok(long.length > 7 << 20 && long.length < 8 << 20, String(long.length));
    const first = await documents.accept(post(long), "long");
    assert.ok(!(first instanceof Response), "stored");
    assert.equal(first.files, 30_000);
    assert.equal(documents.spareParts, 2, "both parts handed back");

    // 5 MiB, of unknown length: read into the two parts the first left, the second of them
    // holding the first document's bytes after its own 1 MiB.
    const short = doc("b", 25_000, 190);
    assert.ok(short.length > 5 << 20 && short.length < 6 << 20, String(short.length));
    const second = await documents.accept(post(short, false), "short");
    assert.ok(!(second instanceof Response), "stored, nothing of the first read with it");
    assert.equal(second.files, 25_000);
    // Taken, and handed back again: still two (new parts would have made four).
    assert.equal(documents.spareParts, 2, "read into the spare parts");
    const paths = (await store.files(second.created.cart.id)).map((f) => f.path);
    const expected = JSON.parse(new TextDecoder().decode(short)).fileids.map((
      f: { path: string },
    ) => f.path);
    assert.deepEqual(paths, expected);
  } finally {
    documents.close();
    assert.equal(documents.spareParts, 0, "let go with the thread");
    // The thread ends once its database is closed.
    await new Promise((r) => setTimeout(r, 300));
    await db.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("claimWanted: each part asked for is claimed once, by one thread or the other", async () => {
  const wanted = new Int32Array(new SharedArrayBuffer(4));
  const asked = 200_000;
  Atomics.store(wanted, 0, asked);
  const code = `import { claimWanted } from ${
    JSON.stringify(import.meta.resolve("./documents.ts"))
  };
    self.onmessage = (e) => {
      let n = 0;
      while (claimWanted(e.data)) n++;
      self.postMessage(n);
    };`;
  const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
  const worker = new Worker(url, { type: "module" });
  try {
    const theirs = new Promise<number>((resolve) => worker.onmessage = (e) => resolve(e.data));
    worker.postMessage(wanted);
    let mine = 0;
    while (claimWanted(wanted)) {
      mine++;
      if (mine % 1000 === 0) await new Promise((r) => setTimeout(r, 0)); // let it start
    }
    assert.equal(mine + await theirs, asked); // split about 90,000 / 110,000 here
    assert.equal(Atomics.load(wanted, 0), 0);
    assert.equal(claimWanted(wanted), false, "none left");
  } finally {
    worker.terminate();
    URL.revokeObjectURL(url);
  }
});
