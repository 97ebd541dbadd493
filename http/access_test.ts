/**
 * Tests of access control (issue 17) on the routes, in process on a real SQLite store: every
 * route × every kind of caller (no credentials, a malformed header, a wrong token, an expired
 * or wrong-audience JWT, the proxy header from an address that is not a proxy, another
 * principal, the owner, an admin); two principals with the same uid; quotas at their edges;
 * the tokens file re-read; JWTs against a JWKS served on 127.0.0.1; that `timingSafeEqual` is
 * what decides. Signed links: ./links_test.ts.
 */
import assert from "node:assert/strict";
import nodeCrypto from "node:crypto";
import { join } from "node:path";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { planCartBundle } from "../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import { type Config, loadConfig } from "../lib/config/config.ts";
import { openSqlite } from "../lib/db/sqlite.ts";
import { MemoryQueue } from "../lib/queue/memory.ts";
import { Cancellations } from "../lib/space/cancellations.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { CartStore } from "../lib/store/store.ts";
import { Volume } from "../lib/volume/volume.ts";
import {
  Access,
  DIGEST_MEMO_CHARS,
  DIGESTS_MAX,
  JWT_CACHE_MAX,
  type Principal,
  type Refusal,
  tokenDigest,
} from "./access.ts";
import { type CartApp, cartRoutes } from "./routes.ts";

const SECRET = "jwt-shared-secret-for-tests-0123456789";
const LINK_KEY = "link-key-for-tests-0123456789abcdef";
/** The tokens of the tokens file, by principal. */
const TOKENS = {
  alice: "tok-alice-7f3e9c1d2b",
  bob: "tok-bob-0a9b8c7d6e",
  root: "tok-root-5e4d3c2b1a",
};
/** The tokens file's text for {@linkcode TOKENS} (root has the admin role). */
function tokensFile(): string {
  return [
    "# test tokens",
    `${tokenDigest(TOKENS.alice)} alice reader,writer`,
    `${tokenDigest(TOKENS.bob)} bob`,
    `${tokenDigest(TOKENS.root)} root admin`,
    "",
  ].join("\n");
}

/** A JWT signed with {@linkcode SECRET}; `claims` override the defaults. */
async function jwt(
  claims: Record<string, unknown> = {},
  options: { exp?: number; aud?: string; secret?: string } = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return await new SignJWT({ roles: [], ...claims })
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(String(claims.sub ?? "carol"))
    .setIssuer("https://issuer.test")
    .setAudience(options.aud ?? "cartd")
    .setIssuedAt(now - 10)
    .setExpirationTime(options.exp ?? now + 600)
    .sign(new TextEncoder().encode(options.secret ?? SECRET));
}

const DOC = (n = 1) => ({
  fileids: Array.from({ length: n }, (_, i) => ({ id: String(i + 1), path: `f${i}.txt` })),
});

/** A store, a volume and an app with access on (tokens, JWT, proxy 127.0.0.1, links). */
async function world(env: Record<string, string> = {}) {
  const dir = await Deno.makeTempDir({ prefix: "access_test_" });
  const tokens = join(dir, "tokens");
  await Deno.writeTextFile(tokens, tokensFile());
  const db = openSqlite(join(dir, "cartd.sqlite3"));
  await syncSchema(db);
  const store = new CartStore(db);
  const volume = new Volume(join(dir, "volume"));
  const config: Config = loadConfig({
    VOLUME_PATH: join(dir, "volume"),
    CARTD_ACCESS_TOKENS: tokens,
    CARTD_ACCESS_JWT_SECRET: SECRET,
    CARTD_ACCESS_JWT_ISSUER: "https://issuer.test",
    CARTD_ACCESS_JWT_AUDIENCE: "cartd",
    CARTD_ACCESS_PROXY_ADDRESSES: "127.0.0.1/32,::1",
    CARTD_LINK_KEYS: LINK_KEY,
    CARTD_QUOTA_RATE: "100000",
    ...env,
  });
  const queue = new MemoryQueue();
  const cancellations = new Cancellations();
  const access = new Access(config.access);
  await access.start();
  const app: CartApp = cartRoutes({ store, queue, volume, config, cancellations, access });
  /** Makes the ready cart `uid` of `owner` (one file of `bytes` bytes of `fill`). */
  const ready = async (owner: string, uid: string, fill = 97, bytes = 1024) => {
    const doc = { files: [{ id: "1", path: "a.txt" }], bundle: false, manifest: false };
    const { cart } = await store.createCart(uid, doc, String(fill).padStart(64, "0"), owner);
    await volume.prepare(cart.id);
    const data = new Uint8Array(bytes).fill(fill);
    await Deno.writeFile(volume.filePath(cart.id, 0), data);
    await store.fileStaged(cart.id, 0, {
      size: data.length,
      mtime: 0,
      sha256: "0".repeat(64),
      crc32: 0,
    });
    assert.ok(await store.startStaging(cart.id, null));
    assert.ok(await store.startBundling(cart.id, null));
    const at = { ...cart, readyAt: store.now() };
    const plan = planCartBundle(at, await StagedFiles.load(store, cart, volume));
    assert.ok(
      await store.markReady(cart.id, null, {
        readyAt: at.readyAt,
        size: plan.size,
        etag: plan.etag,
      }),
    );
    return cart;
  };
  /** One request; `remote` is the peer's address the server would tell. */
  const request = (
    method: string,
    path: string,
    headers: Record<string, string> = {},
    options: { remote?: string; body?: string } = {},
  ) =>
    app.fetch(
      new Request(`http://cartd${path}`, {
        method,
        headers: { host: "cartd", ...headers },
        body: options.body,
      }),
      { remoteAddr: { transport: "tcp", hostname: options.remote ?? "127.0.0.9", port: 40000 } },
    );
  return {
    dir,
    tokens,
    store,
    volume,
    config,
    app,
    ready,
    request,
    async [Symbol.asyncDispose]() {
      await queue.close();
      await db.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

/** Every route of a cart, as (method, path, body) for the cart `uid`. */
const ROUTES = (uid: string) =>
  [
    ["HEAD", `/${uid}`],
    ["GET", `/${uid}`],
    ["GET", `/${uid}/status`],
    ["GET", `/${uid}/files`],
    ["GET", `/${uid}/link`],
    ["DELETE", `/${uid}`],
    ["POST", `/${uid}`, JSON.stringify(DOC(2))],
  ] as const;

/** An answer's status, headers and body, to compare two answers whole. */
async function whole(response: Response) {
  const headers = [...response.headers.entries()].filter(([k]) => k !== "date");
  return { status: response.status, headers, body: await response.text() };
}

Deno.test("every route refuses a request without valid credentials with 401 and WWW-Authenticate, storing nothing", async (t) => {
  await using w = await world();
  const cart = await w.ready("alice", "u1");
  const expired = await jwt({ sub: "alice" }, { exp: Math.floor(Date.now() / 1000) - 3600 });
  const wrongAudience = await jwt({ sub: "alice" }, { aud: "another-service" });
  const wrongSecret = await jwt({ sub: "alice" }, { secret: "not-the-secret-at-all-000000000" });
  const callers: [string, Record<string, string>, string | null, RegExp][] = [
    ["no credentials", {}, null, /needs credentials/],
    [
      "a malformed header (Basic)",
      { authorization: "Basic YWxpY2U6c2VjcmV0" },
      "invalid_request",
      /not `Bearer/,
    ],
    [
      "a malformed header (Bearer alone)",
      { authorization: "Bearer" },
      "invalid_request",
      /not `Bearer/,
    ],
    ["a wrong token", bearer("tok-alice-wrong"), "invalid_token", /token is not valid/],
    ["an expired JWT", bearer(expired), "invalid_token", /JWT has expired/],
    ["a JWT for another audience", bearer(wrongAudience), "invalid_token", /aud claim/],
    ["a JWT with a wrong signature", bearer(wrongSecret), "invalid_token", /signature/],
    [
      "the proxy header from a non-proxy address",
      { "x-remote-user": "alice" },
      null,
      /needs credentials/,
    ],
  ];
  for (const [who, headers, error, message] of callers) {
    await t.step(who, async () => {
      const estimate = ["POST", "/_cartd/estimate", JSON.stringify(DOC(1))] as const;
      for (const [method, path, body] of [...ROUTES("u1"), estimate]) {
        const r = await w.request(method, path, headers, { body, remote: "127.0.0.2" });
        assert.equal(r.status, 401, `${method} ${path}`);
        const challenge = r.headers.get("www-authenticate") ?? "";
        assert.match(challenge, /^Bearer realm="cartd"/, `${method} ${path}`);
        if (error) assert.match(challenge, new RegExp(`error="${error}"`));
        else assert.doesNotMatch(challenge, /error=/);
        if (method !== "HEAD") assert.match((await r.json()).message, message);
        else await r.body?.cancel();
      }
      // Nothing stored or removed: alice's cart is as it was, and nobody else has a cart.
      const carts = await w.store.liveCarts();
      assert.deepEqual(carts.map((c) => [c.id, c.owner, c.uid, c.status]), [
        [cart.id, "alice", "u1", "ready"],
      ]);
    });
  }
  await t.step("the open paths ask nothing: GET /, the metrics", async () => {
    assert.equal((await w.request("GET", "/")).status, 200);
    const metrics = await w.request("GET", "/_cartd/metrics");
    assert.equal(metrics.status, 200);
    assert.match(await metrics.text(), /cartd_/);
    const alias = await w.request("GET", "/metrics");
    assert.equal(alias.status, 200);
    await alias.body?.cancel();
    assert.equal((await w.request("HEAD", "/metrics")).status, 401, "HEAD /metrics is a cart's");
  });
});

Deno.test("another principal gets for every route exactly what a missing cart gets; owner and admin are served", async (t) => {
  await using w = await world();
  await w.ready("alice", "u1");
  const alice = bearer(TOKENS.alice);
  const bob = bearer(TOKENS.bob);
  const root = bearer(TOKENS.root);
  const routes = ROUTES("u1").filter(([m]) => m !== "POST");
  const asBob: Awaited<ReturnType<typeof whole>>[] = [];
  await t.step("bob, on alice's cart", async () => {
    for (const [method, path] of routes) {
      const r = await w.request(method, path, bob);
      assert.equal(r.status, 404, `${method} ${path}`);
      asBob.push(await whole(r));
      assert.equal((await w.request("HEAD", "/u1", alice)).status, 204, "alice's cart is there");
    }
  });
  await t.step("the owner", async () => {
    const head = await w.request("HEAD", "/u1", alice);
    assert.equal(head.status, 204);
    assert.equal(head.headers.get("x-cartd-state"), "ready");
    const get = await w.request("GET", "/u1", alice);
    assert.equal(get.status, 200);
    assert.equal((await get.arrayBuffer()).byteLength > 1024, true);
    const status = await w.request("GET", "/u1/status", alice);
    assert.equal(status.status, 200);
    assert.equal((await status.json()).uid, "u1");
    const files = await w.request("GET", "/u1/files", alice);
    assert.equal(files.status, 200);
    assert.equal((await files.json()).files.length, 1);
    const link = await w.request("GET", "/u1/link", alice);
    assert.equal(link.status, 200);
    assert.match((await link.json()).path, /sig=/);
  });
  await t.step("an admin sees and manages alice's cart", async () => {
    assert.equal((await w.request("HEAD", "/u1", root)).status, 204);
    const get = await w.request("GET", "/u1", root);
    assert.equal(get.status, 200);
    await get.body?.cancel();
    assert.equal((await w.request("GET", "/u1/status", root)).status, 200);
    assert.equal((await w.request("GET", "/u1/files", root)).status, 200);
    assert.equal((await w.request("GET", "/u1/link", root)).status, 200);
    // A JWT with the admin role is an admin too.
    const adminJwt = bearer(await jwt({ sub: "ops", roles: ["admin"] }));
    assert.equal((await w.request("HEAD", "/u1", adminJwt)).status, 204);
  });
  await t.step("bob's answers equal those for a cart that does not exist at all", async () => {
    const del = await w.request("DELETE", "/u1", root);
    assert.equal(del.status, 200, "the admin deletes alice's cart");
    assert.equal((await w.request("HEAD", "/u1", alice)).status, 404);
    for (const [i, [method, path]] of routes.entries()) {
      const missing = await whole(await w.request(method, path, bob));
      assert.deepEqual(asBob[i], missing, `${method} ${path}`);
    }
  });
  await t.step("the owner's DELETE", async () => {
    await w.ready("alice", "u2");
    assert.equal((await w.request("DELETE", "/u2", bob)).status, 404);
    assert.equal((await w.request("DELETE", "/u2", alice)).status, 200);
    assert.equal((await w.request("HEAD", "/u2", alice)).status, 404);
  });
});

Deno.test("each identity owns what it creates: a token, a JWT, the proxy header from a proxy address", async () => {
  await using w = await world();
  const callers: [string, Record<string, string>, string][] = [
    ["alice", bearer(TOKENS.alice), "127.0.0.9"],
    ["carol", bearer(await jwt({ sub: "carol" })), "127.0.0.9"],
    ["dave", { "x-remote-user": "dave" }, "127.0.0.1"],
    ["erin", { "x-remote-user": "erin" }, "::1"],
  ];
  for (const [name, headers, remote] of callers) {
    const post = await w.request("POST", "/mine", headers, { remote, body: JSON.stringify(DOC()) });
    assert.equal(post.status, 201, name);
    assert.equal((await w.store.liveCart("mine", name))?.owner, name);
    assert.equal((await w.request("HEAD", "/mine", headers, { remote })).status, 204, name);
  }
  assert.equal((await w.store.liveCartsOfUid("mine")).length, 4, "four carts named mine");
  // The proxy header from an address that is not a proxy is no identity.
  const ignored = await w.request("HEAD", "/mine", { "x-remote-user": "dave" }, {
    remote: "127.0.0.2",
  });
  assert.equal(ignored.status, 401);
});

Deno.test("the proxy's header, asked again and again: each request's peer is checked, a bad name stays refused", async () => {
  await using w = await world({ CARTD_ACCESS_ADMINS: "ops" });
  const access = new Access(w.config.access);
  await access.start();
  const ask = (name: string, hostname: string) =>
    access.authenticate(
      new Request("http://cartd/x", { headers: { "x-remote-user": name } }),
      { transport: "tcp", hostname, port: 40000 },
    );
  for (let i = 0; i < 3; i++) {
    assert.equal(((await ask("dave", "127.0.0.1")) as Principal).name, "dave", `request ${i + 1}`);
    assert.equal(((await ask("dave", "::ffff:127.0.0.1")) as Principal).name, "dave");
    assert.match(
      ((await ask("dave", "127.0.0.2")) as Refusal).message,
      /needs credentials/,
      "the same name from an address that is not a proxy is no identity",
    );
    assert.match(((await ask("da\u0007ve", "::1")) as Refusal).message, /control characters/);
    const ops = (await ask(" ops ", "::1")) as Principal;
    assert.equal(ops.name, "ops");
    assert.equal(ops.admin, true, "CARTD_ACCESS_ADMINS names it");
    assert.equal(((await ask("dave", "10.0.0.1")) as Refusal).message.includes("needs"), true);
  }
});

Deno.test("two principals may each have a cart mycart; each sees its own; an admin names the owner", async () => {
  await using w = await world();
  const alice = bearer(TOKENS.alice);
  const bob = bearer(TOKENS.bob);
  const root = bearer(TOKENS.root);
  assert.equal(
    (await w.request("POST", "/mycart", alice, { body: JSON.stringify(DOC(1)) })).status,
    201,
  );
  assert.equal(
    (await w.request("POST", "/mycart", bob, { body: JSON.stringify(DOC(3)) })).status,
    201,
  );
  const files = async (headers: Record<string, string>, query = "") =>
    (await (await w.request("GET", `/mycart/status${query}`, headers)).json()).files.total;
  assert.equal(await files(alice), 1);
  assert.equal(await files(bob), 3);
  // Bob's DELETE removes bob's cart only.
  assert.equal((await w.request("DELETE", "/mycart", bob)).status, 200);
  assert.equal(await files(alice), 1);
  assert.equal(
    (await w.request("POST", "/mycart", bob, { body: JSON.stringify(DOC(3)) })).status,
    201,
  );
  // The admin: two owners, no ?owner= → 409 naming them; with it, that owner's cart.
  const ambiguous = await w.request("GET", "/mycart/status", root);
  assert.equal(ambiguous.status, 409);
  assert.match((await ambiguous.json()).message, /"alice", "bob"/);
  assert.equal(await files(root, "?owner=bob"), 3);
  assert.equal(await files(root, "?owner=alice"), 1);
  assert.equal((await w.request("DELETE", "/mycart?owner=bob", root)).status, 200);
  assert.equal(await files(root), 1, "one owner left: the admin finds it without ?owner=");
});

Deno.test("quotas: exactly at the limit passes, the next is refused with 429 and Retry-After, nothing stored", async (t) => {
  const alice = bearer(TOKENS.alice);
  const post = (w: Awaited<ReturnType<typeof world>>, uid: string, n = 1, h = alice) =>
    w.request("POST", `/${uid}`, h, { body: JSON.stringify(DOC(n)) });
  const refused = async (r: Response, what: RegExp) => {
    assert.equal(r.status, 429);
    assert.ok(Number(r.headers.get("retry-after")) >= 1);
    assert.match((await r.json()).message, what);
  };
  await t.step("live carts", async () => {
    await using w = await world({ CARTD_QUOTA_CARTS: "2" });
    assert.equal((await post(w, "a")).status, 201);
    assert.equal((await post(w, "b")).status, 201, "the second: exactly at the limit");
    await refused(await post(w, "c"), /live carts \(CARTD_QUOTA_CARTS=2\)/);
    assert.equal(await w.store.liveCart("c", "alice"), null, "nothing stored");
    assert.equal((await w.store.allCarts()).length, 2);
    assert.equal((await post(w, "b", 2)).status, 201, "replacing one adds none");
    assert.equal((await post(w, "x", 1, bearer(TOKENS.root))).status, 201, "admins: no quota");
    assert.equal((await post(w, "c", 1, bearer(TOKENS.bob))).status, 201, "bob has his own");
  });
  await t.step("files per cart", async () => {
    await using w = await world({ CARTD_QUOTA_FILES: "3" });
    assert.equal((await post(w, "three", 3)).status, 201);
    await refused(await post(w, "four", 4), /files per cart \(CARTD_QUOTA_FILES=3\)/);
    assert.equal(await w.store.liveCart("four", "alice"), null);
  });
  await t.step("files still to stage (recalls)", async () => {
    await using w = await world({ CARTD_QUOTA_RECALLS: "5" });
    assert.equal((await post(w, "a", 3)).status, 201);
    assert.equal((await post(w, "b", 2)).status, 201, "5 pending: exactly at the limit");
    await refused(await post(w, "c", 1), /still to stage \(CARTD_QUOTA_RECALLS=5\)/);
    assert.equal(await w.store.liveCart("c", "alice"), null);
    const [use] = await w.store.usage("alice");
    assert.equal(use.pendingFiles, 5);
  });
  await t.step("bytes reserved", async () => {
    await using w = await world({ CARTD_QUOTA_BYTES: "1000" });
    assert.equal((await post(w, "a")).status, 201);
    const a = (await w.store.liveCart("a", "alice"))!;
    await w.store.setReserved(a.id, 999);
    assert.equal((await post(w, "b")).status, 201, "999 of 1000 held: admitted");
    await w.store.setReserved(a.id, 1000);
    await refused(await post(w, "c"), /bytes reserved \(CARTD_QUOTA_BYTES=1000\)/);
    assert.equal(await w.store.liveCart("c", "alice"), null);
  });
  await t.step("requests per second", async () => {
    await using w = await world({ CARTD_QUOTA_RATE: "3" });
    for (let i = 0; i < 3; i++) {
      assert.equal((await w.request("HEAD", "/none", alice)).status, 404, `request ${i + 1}`);
    }
    const over = await w.request("POST", "/r", alice, { body: JSON.stringify(DOC()) });
    await refused(over, /requests per second \(CARTD_QUOTA_RATE=3\)/);
    assert.equal(await w.store.liveCart("r", "alice"), null, "nothing stored");
    assert.equal((await w.request("HEAD", "/none", bearer(TOKENS.bob))).status, 404, "bob's own");
    await new Promise((r) => setTimeout(r, 1100));
    assert.equal((await w.request("HEAD", "/none", alice)).status, 404, "a second later");
  });
});

Deno.test("the tokens file is re-read when it changes, without a restart", async () => {
  await using w = await world();
  let now = Date.now();
  const access = new Access(w.config.access, () => now);
  await access.start();
  const ask = (token: string) =>
    access.authenticate(new Request("http://cartd/x", { headers: bearer(token) }), undefined);
  assert.equal(((await ask(TOKENS.alice)) as { name: string }).name, "alice");
  await Deno.writeTextFile(
    w.tokens,
    `${tokenDigest("tok-frank-new-one-123")} frank\n# alice's token revoked\n`,
  );
  assert.equal(((await ask(TOKENS.alice)) as { name: string }).name, "alice", "within a second");
  now += 1001;
  assert.match(((await ask(TOKENS.alice)) as { message: string }).message, /not valid/);
  assert.equal(((await ask("tok-frank-new-one-123")) as { name: string }).name, "frank");
});

Deno.test("an accepted header's digest is remembered, not its verdict: the tokens file as it is now decides", async () => {
  await using w = await world();
  let now = Date.now();
  const access = new Access(w.config.access, () => now);
  await access.start();
  const ask = (authorization: string) =>
    access.authenticate(new Request("http://cartd/x", { headers: { authorization } }), undefined);
  const name = async (authorization: string) => ((await ask(authorization)) as Principal).name;
  const alice = `Bearer ${TOKENS.alice}`;
  assert.equal(await name(alice), "alice");
  assert.equal(await name(alice), "alice", "again, from the memo");
  assert.equal(access.headersRemembered, 1);
  // The same token in another spelling of the header is another header, hashed anew.
  assert.equal(await name(`bearer  ${TOKENS.alice} `), "alice");
  assert.equal(access.headersRemembered, 2);
  assert.match(((await ask("Bearer tok-nobody-has")) as Refusal).message, /not valid/);
  assert.equal(access.headersRemembered, 2, "a header refused is not remembered");

  // The same token now names another principal: the file's entry is what answers.
  await Deno.writeTextFile(w.tokens, `${tokenDigest(TOKENS.alice)} alicia\n`);
  now += 1001;
  assert.equal(await name(alice), "alicia");
  // Taken out of the file: refused, though its digest was remembered, and then forgotten.
  await Deno.writeTextFile(w.tokens, `${tokenDigest(TOKENS.bob)} bob\n`);
  now += 1001;
  const revoked = (await ask(alice)) as Refusal;
  assert.equal("name" in revoked, false, "a token removed from the file is refused");
  assert.match(revoked.message, /not valid/);
  assert.equal(access.headersRemembered, 1, "the revoked header is forgotten");
  assert.equal("name" in await ask(alice), false, "and stays refused");
  // Put back: accepted again.
  await Deno.writeTextFile(w.tokens, tokensFile());
  now += 1001;
  assert.equal(await name(alice), "alice");
});

Deno.test("a remembered JWT header past its exp is refused, and stays refused", async () => {
  await using w = await world();
  let now = Date.now();
  const access = new Access(w.config.access, () => now);
  await access.start();
  const token = await jwt({ sub: "carol" }, { exp: Math.floor(now / 1000) + 5 });
  const ask = () =>
    access.authenticate(new Request("http://cartd/x", { headers: bearer(token) }), undefined);
  for (let i = 0; i < 3; i++) assert.equal(((await ask()) as Principal).name, "carol");
  assert.equal(access.headersRemembered, 1);
  now += 36_000; // past exp and the 30 s of clock skew allowed
  for (let i = 0; i < 2; i++) {
    const late = (await ask()) as Refusal;
    assert.equal("name" in late, false, `request ${i + 1} past its exp`);
    assert.match(late.message, /expired/);
  }
  assert.equal(access.headersRemembered, 0, "the expired JWT's header is forgotten");
});

Deno.test("the remembered digests are bounded: DIGESTS_MAX headers, none longer than DIGEST_MEMO_CHARS", async () => {
  await using w = await world();
  const tokens = Array.from({ length: DIGESTS_MAX + 1 }, (_, i) => `tok-many-${i}`);
  await Deno.writeTextFile(
    w.tokens,
    tokens.map((t, i) => `${tokenDigest(t)} user${i}`).join("\n") + "\n",
  );
  const access = new Access(w.config.access);
  await access.start();
  const ask = (token: string) =>
    access.authenticate(new Request("http://cartd/x", { headers: bearer(token) }), undefined);
  for (const token of tokens) assert.ok("name" in await ask(token));
  assert.equal(access.headersRemembered, DIGESTS_MAX, "the oldest forgotten to keep the bound");
  assert.equal(((await ask(tokens[0])) as Principal).name, "user0", "and hashed again");
  assert.equal(access.headersRemembered, DIGESTS_MAX);
  // A JWT whose header is over DIGEST_MEMO_CHARS is accepted, and hashed at each request.
  const long = await jwt({ sub: "dave", pad: "x".repeat(DIGEST_MEMO_CHARS) });
  assert.equal(((await ask(long)) as Principal).name, "dave");
  assert.equal(((await ask(long)) as Principal).name, "dave");
  assert.equal(access.headersRemembered, DIGESTS_MAX);
});

Deno.test("JWTs verify against a JWKS served on 127.0.0.1", async () => {
  const { publicKey, privateKey } = await generateKeyPair("RS256");
  const other = await generateKeyPair("RS256");
  const jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "RS256", use: "sig" };
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => Response.json({ keys: [jwk] }),
  );
  await using w = await world({
    CARTD_ACCESS_JWT_SECRET: "",
    CARTD_ACCESS_JWKS_URL: `http://127.0.0.1:${server.addr.port}/jwks.json`,
  });
  const sign = (key: Parameters<SignJWT["sign"]>[0], kid = "k1", aud = "cartd") =>
    new SignJWT({ roles: "reader admin" }).setProtectedHeader({ alg: "RS256", kid })
      .setSubject("grace").setIssuer("https://issuer.test").setAudience(aud)
      .setExpirationTime("10m").sign(key);
  const good = await w.request("POST", "/j", bearer(await sign(privateKey)), {
    body: JSON.stringify(DOC()),
  });
  assert.equal(good.status, 201);
  assert.equal((await w.store.liveCart("j", "grace"))?.owner, "grace");
  const forged = await w.request("HEAD", "/j", bearer(await sign(other.privateKey)));
  assert.equal(forged.status, 401);
  const audience = await w.request("GET", "/j/status", bearer(await sign(privateKey, "k1", "x")));
  assert.equal(audience.status, 401);
  assert.match((await audience.json()).message, /aud claim/);
  // An HS256 JWT is refused when only a JWKS is configured (no algorithm confusion).
  const hs = await w.request("GET", "/j/status", bearer(await jwt({ sub: "grace" })));
  assert.equal(hs.status, 401);
  await hs.body?.cancel();
});

Deno.test("tokens are compared by node:crypto's timingSafeEqual: it is called, and its answer decides", async () => {
  await using w = await world();
  const original = nodeCrypto.timingSafeEqual;
  const calls: [number, number][] = [];
  try {
    nodeCrypto.timingSafeEqual = (a, b) => {
      calls.push([a.byteLength, b.byteLength]);
      return original(a, b);
    };
    assert.equal((await w.request("HEAD", "/none", bearer(TOKENS.alice))).status, 404);
    assert.deepEqual(
      calls,
      [[64, 64]],
      "one comparison of SHA-256 digests (in hex), whatever the file holds",
    );
    calls.length = 0;
    assert.equal((await w.request("HEAD", "/none", bearer("tok-nobody-has-this"))).status, 401);
    assert.deepEqual(calls, [[64, 64]], "a token not in the file costs one comparison too");
    nodeCrypto.timingSafeEqual = () => false;
    assert.equal((await w.request("HEAD", "/none", bearer(TOKENS.alice))).status, 401);
  } finally {
    nodeCrypto.timingSafeEqual = original;
  }
});

Deno.test("a verified JWT is remembered until it expires: one verification, not one a request", async () => {
  await using w = await world();
  let now = Date.now();
  const access = new Access(w.config.access, () => now);
  await access.start();
  const ask = (token: string) =>
    access.authenticate(new Request("http://cartd/x", { headers: bearer(token) }), undefined);
  const subtle = crypto.subtle;
  const original = subtle.verify;
  let verified = 0;
  const token = await jwt({ sub: "carol" }, { exp: Math.floor(now / 1000) + 5 });
  try {
    subtle.verify = function (...args: Parameters<SubtleCrypto["verify"]>) {
      verified++;
      return original.apply(subtle, args);
    };
    for (let i = 0; i < 5; i++) {
      assert.equal(((await ask(token)) as { name: string }).name, "carol", `request ${i + 1}`);
    }
    assert.equal(verified, 1, "five requests with one JWT: one signature verification");
    const other = await jwt({ sub: "carol" }, { secret: "another-secret-0123456789abcdef" });
    assert.match(((await ask(other)) as { message: string }).message, /signature/);
    assert.match(((await ask(other)) as { message: string }).message, /signature/);
    assert.equal(verified, 3, "a JWT that fails is not remembered");
  } finally {
    subtle.verify = original;
  }
  // Past its exp and the 30 s of clock skew allowed (CARTD_ACCESS_JWT_CLOCK_SKEW), and well
  // before the cache's own bound (JWT_CACHE_MS): the JWT's expiry is what ends its entry.
  now += 36_000;
  const late = await ask(token);
  assert.equal("name" in late, false, "past its exp, the remembered JWT is refused");
  assert.match((late as { message: string }).message, /expired/);
});

Deno.test("a JWKS that cannot be read answers 503 with Retry-After naming the cause, never 401", async (t) => {
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (closed.addr as Deno.NetAddr).port;
  closed.close();
  await using failing = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Response("upstream broke", { status: 500 }),
  );
  await using notJson = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Response("<html>login</html>", { status: 200 }),
  );
  const { privateKey } = await generateKeyPair("RS256");
  const token = await new SignJWT({}).setProtectedHeader({ alg: "RS256", kid: "k1" })
    .setSubject("grace").setIssuer("https://issuer.test").setAudience("cartd")
    .setExpirationTime("10m").sign(privateKey);
  for (
    const [name, url] of [
      ["a closed port", `http://127.0.0.1:${port}/jwks.json`],
      ["an answer 500", `http://127.0.0.1:${failing.addr.port}/jwks.json`],
      ["an answer that is no key set", `http://127.0.0.1:${notJson.addr.port}/jwks.json`],
    ]
  ) {
    await t.step(name, async () => {
      await using w = await world({ CARTD_ACCESS_JWT_SECRET: "", CARTD_ACCESS_JWKS_URL: url });
      for (const [method, path] of [["HEAD", "/j"], ["GET", "/j/status"], ["POST", "/j"]]) {
        const r = await w.request(method, path, bearer(token), {
          body: method === "POST" ? JSON.stringify(DOC()) : undefined,
        });
        assert.equal(r.status, 503, `${method} ${path}`);
        assert.ok(Number(r.headers.get("retry-after")) >= 1);
        assert.equal(r.headers.get("www-authenticate"), null, "not a challenge: nothing to fix");
        if (method !== "HEAD") {
          assert.match((await r.json()).message, /identity provider's key set \(JWKS\)/);
        }
      }
      assert.equal((await w.store.allCarts()).length, 0, "nothing stored");
      // A token of the tokens file is not affected.
      assert.equal((await w.request("HEAD", "/j", bearer(TOKENS.alice))).status, 404);
    });
  }
});

Deno.test("quotas hold under concurrent POSTs: of those at once for the last place, one passes, the others 429, nothing of them stored", async (t) => {
  const alice = bearer(TOKENS.alice);
  const burst = (w: Awaited<ReturnType<typeof world>>, uids: string[], n = 1) =>
    Promise.all(
      uids.map((uid) => w.request("POST", `/${uid}`, alice, { body: JSON.stringify(DOC(n)) })),
    );
  const tally = async (answers: Response[]) => {
    const codes = answers.map((r) => r.status).sort();
    for (const r of answers) {
      if (r.status === 429) assert.ok(Number(r.headers.get("retry-after")) >= 1);
      await r.body?.cancel();
    }
    return codes;
  };
  await t.step("live carts", async () => {
    await using w = await world({ CARTD_QUOTA_CARTS: "3" });
    assert.equal(
      (await w.request("POST", "/a", alice, { body: JSON.stringify(DOC()) })).status,
      201,
    );
    assert.equal(
      (await w.request("POST", "/b", alice, { body: JSON.stringify(DOC()) })).status,
      201,
    );
    const codes = await tally(await burst(w, ["c1", "c2", "c3", "c4", "c5", "c6"]));
    assert.deepEqual(codes, [201, 429, 429, 429, 429, 429], "exactly one takes the third place");
    const [use] = await w.store.usage("alice");
    assert.equal(use.carts, 3);
    assert.equal((await w.store.allCarts()).length, 3, "nothing of the refused ones stored");
  });
  await t.step("files still to stage", async () => {
    await using w = await world({ CARTD_QUOTA_RECALLS: "4" });
    const codes = await tally(await burst(w, ["r1", "r2", "r3", "r4"], 2));
    assert.deepEqual(codes, [201, 201, 429, 429], "two carts of 2 reach 4 exactly; no more");
    assert.equal((await w.store.usage("alice"))[0].pendingFiles, 4);
    assert.equal((await w.store.allCarts()).length, 2);
  });
});

Deno.test("the remembered JWTs are bounded: past JWT_CACHE_MAX, the oldest is verified again", async () => {
  await using w = await world();
  const access = new Access(w.config.access);
  await access.start();
  const ask = (token: string) =>
    access.authenticate(new Request("http://cartd/x", { headers: bearer(token) }), undefined);
  const tokens = await Promise.all(
    Array.from({ length: JWT_CACHE_MAX + 1 }, (_, i) => jwt({ sub: `user${i}` })),
  );
  for (const token of tokens) assert.ok("name" in await ask(token));
  const subtle = crypto.subtle;
  const original = subtle.verify;
  let verified = 0;
  try {
    subtle.verify = function (...args: Parameters<SubtleCrypto["verify"]>) {
      verified++;
      return original.apply(subtle, args);
    };
    assert.ok("name" in await ask(tokens.at(-1)!));
    assert.equal(verified, 0, "the newest is remembered");
    assert.equal(((await ask(tokens[0])) as { name: string }).name, "user0");
    assert.equal(verified, 1, "the oldest was forgotten to keep the bound, and verified again");
  } finally {
    subtle.verify = original;
  }
});
