/**
 * `cartd admin ...` (issue 4, point 5): every command run as the real command line against
 * the database and volume of a running cartd (SQLite shared between the two processes).
 */
import assert from "node:assert/strict";
import { startFakeArchive } from "../support/fake_archive.ts";
import {
  cartStatus,
  ENTRY,
  FAST_ENV,
  permissions,
  postCart,
  startCartd,
  waitFor,
} from "../support/harness.ts";
import { eventually } from "../support/eventually.ts";
import { run } from "../support/run.ts";
import type { Dump } from "../../app/admin.ts";

const KiB = 1024;

/** Runs `cartd admin ...args` on `volume`; returns exit code, stdout and stderr. */
async function admin(
  volume: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return await run(Deno.execPath(), ["run", ...permissions(volume), ENTRY, "admin", ...args], {
    env: { ...FAST_ENV, VOLUME_PATH: volume, NO_COLOR: "1", ...env },
    clearEnv: true,
  });
}

/** Names inside a tar, via GNU tar. */
async function tarNames(bytes: Uint8Array): Promise<string[]> {
  const r = await run("tar", ["-tf", "-"], { stdin: bytes });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.trim().split("\n").sort();
}

Deno.test("admin: dump shows live carts and their files; fixit redoes only the failed file, then bundles", async () => {
  await using fake = startFakeArchive();
  fake.put("g0", { size: 10 * KiB });
  fake.put("g1", { size: 20 * KiB });
  fake.put("flaky", { size: 30 * KiB }, { failGets: Infinity });
  fake.put("r0", "ready file");
  // One file at a time, in document order: g0 and g1 are staged before "flaky" fails.
  // A claim period of 10 s: the sweep looks every 5 s, and a cart untouched for 5 periods
  // (what the sweep waited for before fixit marked its cart) would take 50 s.
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: fake.url, CARTD_FILES_PER_CART: "1", CARTD_CLAIM_TTL: "10" },
  });
  const { url, volume } = cartd;
  const doc = {
    fileids: [
      { id: "g0", path: "a/g0" },
      { id: "g1", path: "a/g1" },
      { id: "flaky", path: "b/flaky" },
    ],
    bundle: true,
  };
  assert.equal((await postCart(url, "bad", doc)).status, 201);
  const [code, status, message] = await waitFor(url, "bad", "error");
  assert.equal(code, 500);
  assert.equal(status, "error");
  assert.match(message, /fileids\[2\] \(id flaky\)/);
  assert.equal((await postCart(url, "fine", { fileids: [{ id: "r0", path: "r" }] })).status, 201);
  assert.deepEqual(await waitFor(url, "fine", "ready"), [204, "ready", ""]);

  // dump --json: both carts, with every file's status.
  const json = await admin(volume, ["dump", "--json"]);
  assert.equal(json.code, 0, json.stderr);
  const dumped: Dump = JSON.parse(json.stdout);
  const bad = dumped.carts.find((c) => c.uid === "bad")!;
  assert.equal(bad.status, "error");
  assert.equal(bad.message, message);
  assert.deepEqual(bad.files.map((f) => [f.id, f.path, f.status]), [
    ["g0", "a/g0", "staged"],
    ["g1", "a/g1", "staged"],
    ["flaky", "b/flaky", "error"],
  ]);
  assert.match(bad.files[2].message ?? "", /flaky/);
  const fine = dumped.carts.find((c) => c.uid === "fine")!;
  assert.equal(fine.status, "ready");
  assert.equal(fine.reservedBytes, "ready file".length, "a ready cart holds what is on disk");
  assert.equal(dumped.carts.length, 2);
  assert.equal(typeof dumped.space.free, "number");
  assert.equal(dumped.space.volumeSize, null);
  // dump (text): the same, for a person.
  const text = await admin(volume, ["dump"]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /2 live carts/);
  assert.match(text.stdout, /cart "bad": error \(.*flaky.*\)/);
  assert.match(text.stdout, /\[2\] error .* "flaky" -> b\/flaky: /);
  assert.match(text.stdout, /cart "fine": ready/);

  // fixit: the archive has recovered; only "flaky" is fetched again.
  const gets = { g0: fake.counts("g0").get, g1: fake.counts("g1").get };
  const flakyGets = fake.counts("flaky").get;
  fake.put("flaky", { size: 30 * KiB });
  const fixing = Date.now();
  const fixed = await admin(volume, ["fixit", "bad", "fine"], { CARTD_CLAIM_TTL: "10" });
  assert.equal(fixed.code, 0, fixed.stderr);
  assert.match(fixed.stdout, /"bad": .*2 staged files kept, 1 to fetch again/);
  assert.match(fixed.stdout, /"fine" is ready, not failed: nothing to fix/);
  assert.match(fixed.stdout, /next sweep queues the cart, within 5 s \(half of CARTD_CLAIM_TTL\)/);
  // What fixit says holds: the next sweep (at most 5 s away) takes it; 3 s to stage and bundle.
  assert.deepEqual(await waitFor(url, "bad", "ready", 8_000), [204, "ready", ""]);
  console.log(`fixit → ready: ${Date.now() - fixing} ms (the sweep looks every 5 s)`);
  assert.deepEqual({ g0: fake.counts("g0").get, g1: fake.counts("g1").get }, gets);
  assert.equal(fake.counts("flaky").get, flakyGets + 1);
  const res = await fetch(url + "bad?filename=bad.tar");
  assert.equal(res.status, 200);
  assert.deepEqual(await tarNames(new Uint8Array(await res.arrayBuffer())), [
    "bad/",
    "bad/a/",
    "bad/a/g0",
    "bad/a/g1",
    "bad/b/",
    "bad/b/flaky",
  ]);
  // The old cart's rows and folder are gone: exactly two carts, two folders.
  const after: Dump = JSON.parse((await admin(volume, ["dump", "--json"])).stdout);
  assert.deepEqual(after.carts.map((c) => [c.uid, c.status]).sort(), [
    ["bad", "ready"],
    ["fine", "ready"],
  ]);
  await eventually("two cart folders remain", async () => {
    let n = 0;
    for await (const _ of Deno.readDir(`${volume}/carts`)) n++;
    return n === 2;
  });
});

Deno.test("admin: fixit fails clearly for unknown carts and a missing uid", async () => {
  await using fake = startFakeArchive();
  await using cartd = await startCartd({ env: { ARCHIVE_INTERFACE_URL: fake.url } });
  const unknown = await admin(cartd.volume, ["fixit", "nope"]);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /cartd admin fixit: no cart with uid "nope" found/);
  const none = await admin(cartd.volume, ["fixit"]);
  assert.equal(none.code, 2);
  assert.match(none.stderr, /fixit needs the uid of at least one failed cart/);
});

Deno.test("admin: purge --older-than removes carts unused for that long, and nothing else", async () => {
  await using fake = startFakeArchive();
  fake.put("x", "x".repeat(100));
  fake.put("t", "on tape", { tapeMs: Infinity });
  await using cartd = await startCartd({ env: { ARCHIVE_INTERFACE_URL: fake.url } });
  const { url, volume } = cartd;
  assert.equal((await postCart(url, "old", { fileids: [{ id: "x", path: "x" }] })).status, 201);
  assert.deepEqual(await waitFor(url, "old", "ready"), [204, "ready", ""]);
  assert.equal((await postCart(url, "busy", { fileids: [{ id: "t", path: "t" }] })).status, 201);
  // "old" was last used GAP ms before "new"; the limit falls between the two with 2.5 s to
  // spare, so an admin process that is slow to start (a loaded machine) still sees "new" as
  // recently used.
  const GAP = 5000;
  await new Promise((r) => setTimeout(r, GAP));
  assert.equal((await postCart(url, "new", { fileids: [{ id: "x", path: "y" }] })).status, 201);
  assert.deepEqual(await waitFor(url, "new", "ready"), [204, "ready", ""]);
  const newReady = Date.now();

  const limit = `${Date.now() - newReady + GAP / 2}ms`;
  const purged = await admin(volume, ["purge", "--older-than", limit]);
  assert.equal(purged.code, 0, purged.stderr);
  // "old" and "new" hold the one file x (a hard link each): removing "old" frees nothing.
  assert.match(
    purged.stdout,
    /removed "old" \(ready, last used .*, 0 B; 100 B shared with carts that stay, kept\)/,
  );
  assert.match(purged.stdout, new RegExp(`Purged 1 cart not used for ${limit}, 0 B freed\\.`));
  assert.deepEqual(await cartStatus(url, "old"), [404, "error", "No cart with uid old found"]);
  assert.equal(await fetch(url + "old").then(async (r) => (await r.body?.cancel(), r.status)), 404);
  assert.equal((await cartStatus(url, "new"))[1], "ready");
  assert.equal((await cartStatus(url, "busy"))[1], "staging", "a cart in progress is never purged");

  const bad = await admin(volume, ["purge", "--older-than", "soon"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--older-than "soon" is not a duration/);
  const missing = await admin(volume, ["purge"]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /purge needs --older-than/);
});

Deno.test("admin: dbsync and dbchk; on a fresh SQLite volume a command creates the schema", async () => {
  const volume = await Deno.makeTempDir({ prefix: "cartd-admin-" });
  const other = await Deno.makeTempDir({ prefix: "cartd-admin-" });
  try {
    const chk = await admin(volume, ["dbchk"]);
    assert.equal(chk.code, 1);
    assert.match(chk.stdout, /schema is at version 0; this cartd needs \d+: run 'cartd dbsync'/);
    const sync = await admin(volume, ["dbsync"]);
    assert.equal(sync.code, 0, sync.stderr);
    assert.match(sync.stdout, /Created the cartd schema\./);
    const again = await admin(volume, ["dbchk"]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /The cartd schema is current \(version \d+\)\./);
    const empty = await admin(volume, ["dump"]);
    assert.equal(empty.code, 0, empty.stderr);
    assert.match(empty.stdout, /0 live carts/);

    // No dbsync: the embedded database gets its schema from the first command, as the service
    // gets it at start.
    const fresh = await admin(other, ["dump"]);
    assert.equal(fresh.code, 0, fresh.stderr);
    assert.match(fresh.stdout, /^0 live carts$/m);
    const created = await admin(other, ["dbchk"]);
    assert.equal(created.code, 0, created.stdout + created.stderr);

    const unknown = await admin(volume, ["frobnicate"]);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown command "frobnicate"/);
    const help = await admin(volume, ["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /cartd admin purge --older-than DUR/);
    const one = await admin(volume, ["fixit", "--help"]);
    assert.equal(one.code, 0);
    assert.match(one.stdout, /cartd admin fixit UID\.\.\./);
    assert.doesNotMatch(one.stdout, /cartd admin purge/);
  } finally {
    await Deno.remove(volume, { recursive: true });
    await Deno.remove(other, { recursive: true });
  }
});
