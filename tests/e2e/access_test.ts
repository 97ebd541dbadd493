/**
 * Access control end to end (issue 17): the real `cartd` with tokens, JWTs, the proxy header
 * and signed links on, a real worker staging from the fake archive. Owners, a signed link
 * fetched without credentials, the proxy header believed from the real 127.0.0.1 connection
 * (the server tells the routes the peer's address) and ignored when 127.0.0.1 is no proxy,
 * `admin dump` showing each principal's use, and no token, JWT, key or signature anywhere in
 * the process's log or the metrics, while the principals are in the access log lines.
 */
import assert from "node:assert/strict";
import { SignJWT } from "jose";
import { tokenDigest } from "../../http/access.ts";
import type { Dump } from "../../app/admin.ts";
import { startFakeArchive } from "../support/fake_archive.ts";
import { ENTRY, FAST_ENV, permissions, startCartd, tempDir } from "../support/harness.ts";
import { eventually } from "../support/eventually.ts";
import { run } from "../support/run.ts";

const ALICE = "tok-e2e-alice-Zq81LmXv02";
const BOB = "tok-e2e-bob-Pp40RtYw77";
const SECRET = "e2e-jwt-secret-Hh29KdLs55-0123456789";
const LINK_KEY = "e2e-link-key-Ww63NbVc18-abcdef";

/** The settings of a cartd with every identity on. */
function accessEnv(volume: string, archive: string): Record<string, string> {
  return {
    ARCHIVE_INTERFACE_URL: archive,
    CARTD_ACCESS_TOKENS: `${volume}/tokens`,
    CARTD_ACCESS_JWT_SECRET: SECRET,
    CARTD_ACCESS_JWT_AUDIENCE: "cartd",
    CARTD_ACCESS_PROXY_ADDRESSES: "127.0.0.1/32",
    CARTD_LINK_KEYS: LINK_KEY,
    CARTD_ACCESS_ADMINS: "ops",
  };
}

Deno.test("access on: owners, a signed link, the proxy header from 127.0.0.1, admin dump, no secret in the log", async () => {
  await using fake = startFakeArchive();
  fake.put("f1", "the first file of alice");
  fake.put("f2", "bob's file, a little longer");
  await using dir = await tempDir();
  const volume = dir.path;
  await Deno.writeTextFile(
    `${volume}/tokens`,
    `${tokenDigest(ALICE)} alice\n${tokenDigest(BOB)} bob\n`,
  );
  const env = accessEnv(volume, fake.url);
  const secrets: string[] = [ALICE, BOB, SECRET, LINK_KEY];
  let output = "";
  {
    await using cartd = await startCartd({ env, volume });
    const { url } = cartd;
    const call = (path: string, init: RequestInit & { token?: string } = {}) => {
      const headers = new Headers(init.headers);
      if (init.token) headers.set("authorization", `Bearer ${init.token}`);
      return fetch(url + path, { ...init, headers });
    };
    const doc = (id: string) => JSON.stringify({ fileids: [{ id, path: `${id}.txt` }] });

    // Without credentials: 401, nothing stored.
    const anonymous = await call("same", { method: "POST", body: doc("f1") });
    assert.equal(anonymous.status, 401);
    assert.match(anonymous.headers.get("www-authenticate") ?? "", /^Bearer realm="cartd"/);
    await anonymous.body?.cancel();

    // alice and bob each have a cart "same"; carol's JWT makes a third.
    for (const [token, id] of [[ALICE, "f1"], [BOB, "f2"]]) {
      const r = await call("same", { method: "POST", body: doc(id), token });
      assert.equal(r.status, 201);
      await r.body?.cancel();
    }
    const carol = await new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("carol")
      .setAudience("cartd").setExpirationTime("5m").sign(new TextEncoder().encode(SECRET));
    secrets.push(carol);
    const c = await call("same", { method: "POST", body: doc("f1"), token: carol });
    assert.equal(c.status, 201);
    await c.body?.cancel();

    const ready = async (token: string) =>
      await eventually("the cart is ready", async () => {
        const r = await call("same", { method: "HEAD", token });
        return r.headers.get("x-cartd-state") === "ready";
      }, 30_000);
    await ready(ALICE);
    await ready(BOB);
    const download = async (token: string) => {
      const r = await call("same", { token });
      assert.equal(r.status, 200);
      return new TextDecoder().decode(await r.arrayBuffer());
    };
    assert.match(await download(ALICE), /the first file of alice/);
    assert.match(await download(BOB), /bob's file/);
    assert.doesNotMatch(await download(BOB), /the first file of alice/);
    // The event stream is the owner's too: each sees its own cart's end; without credentials, 401.
    for (const [token, file] of [[ALICE, "f1"], [BOB, "f2"]]) {
      const r = await call("same/events", { token });
      assert.equal(r.status, 200);
      const text = await r.text();
      assert.match(text, /"state":"ready"/);
      assert.match(text, new RegExp(`"bytes":\\{"total":${file === "f1" ? 23 : 27},`));
    }
    const noEvents = await call("same/events");
    assert.equal(noEvents.status, 401);
    await noEvents.body?.cancel();
    const daveEvents = await call("same/events", { headers: { "x-remote-user": "dave" } });
    assert.equal(daveEvents.status, 404, 'dave has no cart "same"');
    await daveEvents.body?.cancel();

    // The proxy header, from the real 127.0.0.1 connection, names dave.
    const dave = await call("davescart", {
      method: "POST",
      body: doc("f1"),
      headers: { "x-remote-user": "dave" },
    });
    assert.equal(dave.status, 201);
    await dave.body?.cancel();

    // A signed link, fetched without credentials; tampered; a wrong token; an expired JWT.
    const made = await call("same/link?expires=300", { token: ALICE });
    const { path } = await made.json();
    const sig = new URL(path, url).searchParams.get("sig")!;
    secrets.push(sig);
    const viaLink = await fetch(new URL(path.slice(1), url));
    assert.equal(viaLink.status, 200);
    assert.match(new TextDecoder().decode(await viaLink.arrayBuffer()), /the first file of alice/);
    const tampered = await fetch(new URL(path.slice(1).replace("owner=alice", "owner=bob"), url));
    assert.equal(tampered.status, 403);
    await tampered.body?.cancel();
    const wrong = await call("same", { token: "tok-e2e-not-a-token-Kk11" });
    secrets.push("tok-e2e-not-a-token-Kk11");
    assert.equal(wrong.status, 401);
    await wrong.body?.cancel();
    const expired = await new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("carol")
      .setAudience("cartd").setExpirationTime(Math.floor(Date.now() / 1000) - 600)
      .sign(new TextEncoder().encode(SECRET));
    secrets.push(expired);
    const late = await call("same", { method: "HEAD", token: expired });
    assert.equal(late.status, 401);

    const metrics = await (await fetch(url + "_cartd/metrics")).text();
    for (const secret of secrets) assert.ok(!metrics.includes(secret), "no secret in metrics");

    // admin dump: every cart with its owner, and each principal's use.
    const dump = await run(
      Deno.execPath(),
      ["run", ...permissions(volume), ENTRY, "admin", "dump", "--json"],
      { env: { ...FAST_ENV, ...env, VOLUME_PATH: volume, NO_COLOR: "1" }, clearEnv: true },
    );
    assert.equal(dump.code, 0, dump.stderr);
    const parsed: Dump = JSON.parse(dump.stdout);
    assert.deepEqual(
      parsed.carts.map((c) => `${c.owner}/${c.uid}`).sort(),
      ["alice/same", "bob/same", "carol/same", "dave/davescart"],
    );
    assert.deepEqual(parsed.principals.map((p) => [p.owner, p.carts]), [
      ["alice", 1],
      ["bob", 1],
      ["carol", 1],
      ["dave", 1],
    ]);
    const text = await run(
      Deno.execPath(),
      ["run", ...permissions(volume), ENTRY, "admin", "dump"],
      { env: { ...FAST_ENV, ...env, VOLUME_PATH: volume, NO_COLOR: "1" }, clearEnv: true },
    );
    assert.match(text.stdout, /principal "alice": 1 live cart, .* reserved, \d+ files? still/);
    output = cartd.output();
  }
  // The run's log: the principals are there (access lines), no secret is.
  assert.match(output, /INFO request method=POST path=\/same status=201 principal=alice via=token/);
  assert.match(output, /principal=carol via=jwt/);
  assert.match(output, /principal=dave via=proxy/);
  assert.match(output, /principal=alice via=link/);
  assert.match(output, /request refused: no valid credentials/);
  for (const secret of secrets) {
    assert.ok(!output.includes(secret), `the log shows a secret (${secret.slice(0, 6)}…)`);
  }
  assert.ok(!output.includes("sig="), "no signed query in the log");
});

Deno.test("access on: the proxy header from an address that is not a configured proxy is ignored", async () => {
  await using fake = startFakeArchive();
  await using cartd = await startCartd({
    env: {
      ARCHIVE_INTERFACE_URL: fake.url,
      // 127.0.0.1 is not among the proxies: its header names nobody.
      CARTD_ACCESS_PROXY_ADDRESSES: "127.0.0.2/32",
    },
  });
  const r = await fetch(cartd.url + "x", {
    method: "POST",
    body: JSON.stringify({ fileids: [] }),
    headers: { "x-remote-user": "mallory" },
  });
  assert.equal(r.status, 401);
  assert.match((await r.json()).message, /needs credentials/);
  assert.match(cartd.output(), /ignored a proxy header .* from=127\.0\.0\.1/);
});
