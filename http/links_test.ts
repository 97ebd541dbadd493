/**
 * Tests of signed download links (issue 17 item 3): each signed field tampered, the expiry's
 * edges, a rotated key, a deleted and a replaced cart, and that `timingSafeEqual` decides. The
 * routes run in process on a real SQLite store, as in ./access_test.ts.
 */
import assert from "node:assert/strict";
import nodeCrypto from "node:crypto";
import { join } from "node:path";
import { loadConfig } from "../lib/config/config.ts";
import { openSqlite } from "../lib/db/sqlite.ts";
import { MemoryQueue } from "../lib/queue/memory.ts";
import { Cancellations } from "../lib/space/cancellations.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { CartStore } from "../lib/store/store.ts";
import { Volume } from "../lib/volume/volume.ts";
import { planCartBundle } from "../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import { tokenDigest } from "./access.ts";
import { type LinkFields, LinkSigner, parseLinkKeys } from "./links.ts";
import { cartRoutes } from "./routes.ts";

const KEY_A = "key-a-0123456789abcdef";
const KEY_B = "key-b-fedcba9876543210";
const ALICE = "tok-alice-links-1234";

/** A store with alice's ready cart `u`; `app(keys)` makes an app with those link keys. */
async function world() {
  const dir = await Deno.makeTempDir({ prefix: "links_test_" });
  const tokens = join(dir, "tokens");
  await Deno.writeTextFile(tokens, `${tokenDigest(ALICE)} alice\n`);
  const db = openSqlite(join(dir, "cartd.sqlite3"));
  await syncSchema(db);
  const store = new CartStore(db);
  const volume = new Volume(join(dir, "volume"));
  const queue = new MemoryQueue();
  const ready = async (uid: string, fill: number) => {
    const doc = { files: [{ id: "1", path: "a.txt" }], bundle: false, manifest: false };
    const { cart } = await store.createCart(uid, doc, String(fill).padStart(64, "0"), "alice");
    await volume.prepare(cart.id);
    const data = new Uint8Array(4096).fill(fill);
    await Deno.writeFile(volume.filePath(cart.id, 0), data);
    await store.fileStaged(cart.id, 0, {
      size: data.length,
      mtime: 0,
      sha256: "0".repeat(64),
      crc32: 0,
    });
    await store.startStaging(cart.id, null);
    await store.startBundling(cart.id, null);
    const at = { ...cart, readyAt: store.now() };
    const plan = planCartBundle(at, await StagedFiles.load(store, cart, volume));
    await store.markReady(cart.id, null, { readyAt: at.readyAt, size: plan.size, etag: plan.etag });
    return cart;
  };
  const app = (keys: string) =>
    cartRoutes({
      store,
      queue,
      volume,
      cancellations: new Cancellations(),
      config: loadConfig({
        VOLUME_PATH: join(dir, "volume"),
        CARTD_ACCESS_TOKENS: tokens,
        CARTD_LINK_KEYS: keys,
      }),
    });
  const get = (a: ReturnType<typeof app>, path: string, headers: Record<string, string> = {}) =>
    a.fetch(new Request(`http://cartd${path}`, { headers: { host: "cartd", ...headers } }));
  /** A link of `u` made by alice through the route. */
  const link = async (a: ReturnType<typeof app>, query = "") => {
    const r = await get(a, `/u/link${query}`, { authorization: `Bearer ${ALICE}` });
    assert.equal(r.status, 200);
    return (await r.json()) as { url: string; path: string; status_path: string; expires: string };
  };
  return {
    store,
    ready,
    app,
    get,
    link,
    async [Symbol.asyncDispose]() {
      await queue.close();
      await db.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("a signed link downloads without credentials; each field tampered answers 403 saying so", async () => {
  await using w = await world();
  const cart = await w.ready("u", 97);
  const app = w.app(KEY_A);
  const made = await w.link(app, "?format=zip&filename=mine.zip&manifest=1&expires=600");
  const owner = await w.get(app, "/u?format=zip&filename=mine.zip&manifest=1", {
    authorization: `Bearer ${ALICE}`,
  });
  const expected = new Uint8Array(await owner.arrayBuffer());
  const r = await w.get(app, made.path);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-disposition") ?? "", /mine\.zip/);
  assert.deepEqual(new Uint8Array(await r.arrayBuffer()), expected, "the owner's very download");
  assert.equal((await w.get(app, made.path.replace("/u?", "/u?x=1&"))).status, 200);
  // HEAD through the link is the cart's status.
  const head = await app.fetch(
    new Request(`http://cartd${made.path}`, { method: "HEAD", headers: { host: "cartd" } }),
  );
  assert.equal(head.status, 204);

  const query = new URL(made.url).searchParams;
  const altered: [string, string][] = [
    ["cart", crypto.randomUUID()],
    ["cart", cart.id.toUpperCase()],
    ["owner", "bob"],
    ["owner", ""],
    ["format", "tar"],
    ["filename", "other.zip"],
    ["filename", ""],
    ["manifest", "0"],
    ["expires", String(Number(query.get("expires")) + 1)],
    ["sig", query.get("sig")!.replace(/^./, (c) => c === "A" ? "B" : "A")],
    ["sig", ""],
  ];
  for (const [field, value] of altered) {
    const q = new URLSearchParams(query);
    q.set(field, value);
    const bad = await w.get(app, `/u?${q}`);
    assert.equal(bad.status, 403, `${field}=${value}`);
    assert.match((await bad.json()).message, /altered/, `${field}=${value}`);
  }
  for (const field of ["cart", "owner", "format", "filename", "manifest", "expires"]) {
    const q = new URLSearchParams(query);
    q.delete(field);
    assert.equal((await w.get(app, `/u?${q}`)).status, 403, `without ${field}`);
  }
  // Without sig it is no link: an ordinary request, which needs credentials.
  const q = new URLSearchParams(query);
  q.delete("sig");
  assert.equal((await w.get(app, `/u?${q}`)).status, 401);
  // The uid is signed too: the same query on another of alice's carts does not open it.
  await w.ready("v", 98);
  const other = await w.get(app, `/v?${query}`);
  assert.equal(other.status, 403);
  assert.match((await other.json()).message, /altered/);
});

Deno.test("a link works until, not at, its expiry second; then 403 saying it expired", async () => {
  const link: LinkFields = {
    cartId: crypto.randomUUID(),
    uid: "u",
    owner: "alice",
    filename: "",
    format: "tar",
    manifest: false,
    expires: 2_000_000_000,
  };
  let now = link.expires * 1000 - 1;
  const signer = new LinkSigner([KEY_A], () => now);
  const query = signer.query(link);
  assert.deepEqual(signer.verify("u", query), { ok: true, link });
  now = link.expires * 1000;
  const expired = signer.verify("u", query);
  assert.equal(expired.ok, false);
  assert.match((expired as { message: string }).message, /expired at 2033-05-18T03:33:20\.000Z/);
  // Through the routes: a link of 1 s answers 403 "expired" once that second is past.
  await using w = await world();
  await w.ready("u", 97);
  const app = w.app(KEY_A);
  const made = await w.link(app, "?expires=1");
  await new Promise((r) => setTimeout(r, Date.parse(made.expires) - Date.now() + 10));
  const late = await w.get(app, made.path);
  assert.equal(late.status, 403);
  assert.match((await late.json()).message, /expired/);
  // expires out of range is the request's fault, naming the field.
  for (const bad of ["0", "604801", "-1", "1.5", "soon"]) {
    const r = await w.get(app, `/u/link?expires=${bad}`, { authorization: `Bearer ${ALICE}` });
    assert.equal(r.status, 400, bad);
    assert.match((await r.json()).message, /^expires must be/);
  }
});

Deno.test("key rotation: the new key signs, the old one verifies until removed", async () => {
  await using w = await world();
  await w.ready("u", 97);
  const old = await w.link(w.app(KEY_A));
  const rotated = w.app(`${KEY_B},${KEY_A}`);
  const r = await w.get(rotated, old.path);
  assert.equal(r.status, 200, "an old link still opens after rotation");
  await r.body?.cancel();
  const fresh = await w.link(rotated);
  const onlyNew = w.app(KEY_B);
  const f = await w.get(onlyNew, fresh.path);
  assert.equal(f.status, 200, "the new key signed the new link");
  await f.body?.cancel();
  const gone = await w.get(onlyNew, old.path);
  assert.equal(gone.status, 403, "the old key removed, its links stop");
  assert.match((await gone.json()).message, /altered|no longer in use/);
  assert.throws(() => parseLinkKeys("short"), /key 1 is shorter than 16/);
  assert.throws(() => parseLinkKeys(`${KEY_A},tiny`), (e: Error) => !e.message.includes("tiny"));
});

Deno.test("a link to a deleted or replaced cart answers 404, as a missing cart", async () => {
  await using w = await world();
  await w.ready("u", 97);
  const app = w.app(KEY_A);
  const made = await w.link(app);
  const auth = { authorization: `Bearer ${ALICE}` };
  // Replaced: a new POST under the uid; the old link names the old cart id.
  const post = await app.fetch(
    new Request("http://cartd/u", {
      method: "POST",
      headers: { host: "cartd", ...auth },
      body: JSON.stringify({ fileids: [{ id: "9", path: "new.txt" }] }),
    }),
  );
  assert.equal(post.status, 201);
  const replaced = await w.get(app, made.path);
  assert.equal(replaced.status, 404);
  assert.deepEqual(await replaced.json(), {
    message: "The cart does not exist or has already been deleted",
  });
  const second = await w.link(app);
  const del = await app.fetch(
    new Request("http://cartd/u", { method: "DELETE", headers: { host: "cartd", ...auth } }),
  );
  assert.equal(del.status, 200);
  assert.equal((await w.get(app, second.path)).status, 404);
});

Deno.test("signatures are compared by node:crypto's timingSafeEqual: it is called, and its answer decides", async () => {
  await using w = await world();
  await w.ready("u", 97);
  const app = w.app(`${KEY_B},${KEY_A}`);
  const made = await w.link(app);
  const original = nodeCrypto.timingSafeEqual;
  const calls: number[] = [];
  try {
    nodeCrypto.timingSafeEqual = (a, b) => {
      calls.push(a.byteLength, b.byteLength);
      return original(a, b);
    };
    const ok = await w.get(app, made.path);
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
    assert.deepEqual(calls, [32, 32, 32, 32], "both keys tried, each a 32-byte HMAC");
    nodeCrypto.timingSafeEqual = () => false;
    assert.equal((await w.get(app, made.path)).status, 403);
  } finally {
    nodeCrypto.timingSafeEqual = original;
  }
});

Deno.test("a signed link opens the cart's status page, events and files (read-only): tampered or expired 403, deleted 404", async () => {
  await using w = await world();
  await w.ready("u", 97);
  const app = w.app(KEY_A);
  const made = await w.link(app, "?expires=600");
  assert.equal(made.status_path, made.path.replace("/u?", "/u/status?"));
  const query = made.path.slice(made.path.indexOf("?") + 1);
  const html = { accept: "text/html" };
  // Without credentials and without the link: 401, as before.
  assert.equal((await w.get(app, "/u/status", html)).status, 401);
  // The status page through the link: its event stream, files and download carry the link.
  const page = await w.get(app, made.status_path, html);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type") ?? "", /text\/html/);
  const text = await page.text();
  assert.ok(text.includes(`"${query}"`), "the page holds the link's query for its script");
  assert.ok(text.includes(`href="../u?${query.replaceAll("&", "&#38;")}"`), "the download");
  const json = await w.get(app, made.status_path);
  assert.equal(json.status, 200);
  assert.equal((await json.json()).state, "ready");
  const files = await w.get(app, `/u/files?state=staged&${query}`);
  assert.equal(files.status, 200);
  assert.equal((await files.json()).files.length, 1);
  // The event stream (what EventSource asks) opens: the cart is ready, so it says so and ends.
  const events = await w.get(app, `/u/events?${query}`, { accept: "text/event-stream" });
  assert.equal(events.status, 200);
  assert.match(await events.text(), /event: state/);
  // Read-only: the link does not delete, replace or make links.
  for (const [method, path] of [["DELETE", `/u?${query}`], ["POST", `/u?${query}`]]) {
    const r = await app.fetch(
      new Request(`http://cartd${path}`, { method, headers: { host: "cartd" }, body: null }),
    );
    assert.equal(r.status, 401, method);
    await r.body?.cancel();
  }
  assert.equal((await w.get(app, `/u/link?${query}`)).status, 401);
  // Tampered: 403 saying so, on each read.
  const tampered = query.replace("owner=alice", "owner=bob");
  for (const path of ["/u/status", "/u/events", "/u/files"]) {
    const r = await w.get(app, `${path}?${tampered}`);
    assert.equal(r.status, 403, path);
    assert.match((await r.json()).message, /altered/);
  }
  // Expired: a signer whose clock is past the expiry, same key.
  const expires = Number(new URLSearchParams(query).get("expires"));
  const late = new LinkSigner([KEY_A], () => expires * 1000);
  const check = late.verify("u", new URLSearchParams(query));
  assert.equal(check.ok, false);
  assert.match((check as { message: string }).message, /expired/);
  const short = await w.link(app, "?expires=1");
  await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 1010));
  const expired = await w.get(app, short.status_path);
  assert.equal(expired.status, 403);
  assert.match((await expired.json()).message, /expired/);
  // Deleted: 404, as a missing cart, on each read.
  const del = await app.fetch(
    new Request("http://cartd/u", {
      method: "DELETE",
      headers: { host: "cartd", authorization: `Bearer ${ALICE}` },
    }),
  );
  assert.equal(del.status, 200);
  for (const path of ["/u/status", "/u/events", "/u/files"]) {
    const r = await w.get(app, `${path}?${query}`);
    assert.equal(r.status, 404, path);
    await r.body?.cancel();
  }
});
