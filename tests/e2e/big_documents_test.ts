/**
 * Big cart documents (1 MiB or more: the document thread, app/documents.ts): parsed a piece at
 * a time, held two at a time, refused exactly as small ones are, and with access on owned by
 * their principal and held to its quotas.
 */
import assert from "node:assert/strict";
import { tokenDigest } from "../../http/access.ts";
import { startFakeArchive } from "../support/fake_archive.ts";
import { cartStatus, postCart, startCartd, tempDir } from "../support/harness.ts";

/** A document of `count` files, about 200 bytes each (6,000: 1.2 MiB). */
function files(count: number, prefix = "f") {
  const pad = "p".repeat(150);
  return Array.from({ length: count }, (_, i) => ({ id: `${prefix}${i}`, path: `d/${pad}/${i}` }));
}

Deno.test("five big documents at once, more than the room for two: each stored", async () => {
  await using archive = startFakeArchive();
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: archive.url, CARTD_MAX_BODY: "2M" }, // room: 4 MiB
  });
  const docs = [0, 1, 2, 3, 4].map((n) => JSON.stringify({ fileids: files(6000, `n${n}-`) }));
  assert.ok(docs.every((d) => d.length > 1 << 20 && d.length < 2 << 20));
  const answers = await Promise.all(docs.map(async (doc, n) => {
    const res = await postCart(cartd.url, `big${n}`, doc);
    await res.body?.cancel();
    return res.status;
  }));
  assert.deepEqual(answers, [201, 201, 201, 201, 201]);
  for (const n of [0, 1, 2, 3, 4]) {
    assert.notEqual((await cartStatus(cartd.url, `big${n}`))[0], 404, `big${n} stored`);
  }
  // Identical again: the same cart is kept (its fingerprint is the same, hashed in pieces).
  const again = await postCart(cartd.url, "big0", docs[0]);
  assert.equal(again.status, 201);
  await again.body?.cancel();
  assert.match(cartd.output(), /cart kept \(identical re-POST\) uid=big0/);
});

Deno.test("big documents are refused as small ones are, and nothing is stored", async () => {
  await using archive = startFakeArchive();
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: archive.url, CARTD_MAX_BODY: "2M" },
  });
  const good = JSON.stringify({ fileids: files(6000) });
  const refused = async (
    uid: string,
    body: string | Uint8Array<ArrayBuffer>,
    small: string | Uint8Array<ArrayBuffer>,
  ) => {
    const res = await fetch(cartd.url + uid, { method: "POST", body });
    const message = (await res.json()).message;
    assert.equal(res.status, 400, message);
    assert.equal((await cartStatus(cartd.url, uid))[0], 404, `${uid}: nothing stored`);
    // The same problem in a small document: the same kind of answer.
    const smallRes = await fetch(cartd.url + uid, { method: "POST", body: small });
    assert.equal(smallRes.status, 400);
    await smallRes.body?.cancel();
    return message as string;
  };
  const smallGood = JSON.stringify({ fileids: files(2) });
  // Not JSON: a comma before the end of the list, far into the document.
  const comma = good.replace(/\]\}$/, ",]}");
  assert.match(
    await refused("comma", comma, smallGood.replace(/\]\}$/, ",]}")),
    /not valid JSON/,
  );
  // JSON, not an object.
  assert.match(await refused("array", JSON.stringify(files(6000)), "[1]"), /must be a JSON object/);
  // Not UTF-8: the byte named is where the broken sequence starts.
  const bytes = new TextEncoder().encode(good);
  const at = bytes.length - 100;
  bytes[at] = 0xff;
  const message = await refused("latin", bytes, new Uint8Array([0x7b, 0xff, 0x7d]));
  assert.match(message, new RegExp(`not valid UTF-8 \\(from byte ${at}\\)`));
  // A rule broken by the last file: named as for a small document.
  const twice = JSON.stringify({ fileids: [...files(5999), files(1)[0]] });
  assert.match(
    await refused("twice", twice, JSON.stringify({ fileids: [...files(1), ...files(1)] })),
    /fileids\[5999\]\.path: .* is already the path of fileids\[0\]/,
  );
});

Deno.test("access on: a big document goes to the document thread, owned and within quotas", async () => {
  const alice = "tok-big-alice-Rt55Yu", bob = "tok-big-bob-Qw12Er";
  await using archive = startFakeArchive();
  await using dir = await tempDir();
  await Deno.writeTextFile(
    `${dir.path}/tokens`,
    `${tokenDigest(alice)} alice\n${tokenDigest(bob)} bob\n`,
  );
  await using cartd = await startCartd({
    volume: dir.path,
    env: {
      ARCHIVE_INTERFACE_URL: archive.url,
      CARTD_MAX_BODY: "2M",
      CARTD_ACCESS_TOKENS: `${dir.path}/tokens`,
      CARTD_QUOTA_FILES: "6000",
      CARTD_QUOTA_CARTS: "1",
    },
  });
  const post = async (uid: string, token: string, count: number) => {
    const body = JSON.stringify({ fileids: files(count, `${uid}-`) });
    assert.ok(body.length > 1 << 20, "a big document");
    const res = await fetch(cartd.url + uid, {
      method: "POST",
      headers: { authorization: `Bearer ${token}` },
      body,
    });
    return { status: res.status, retry: res.headers.get("retry-after"), body: await res.json() };
  };
  const head = async (uid: string, token: string) => {
    const res = await fetch(cartd.url + uid, {
      method: "HEAD",
      headers: { authorization: `Bearer ${token}` },
    });
    return res.status;
  };
  // Exactly at the files-per-cart quota: stored, for alice, by the document thread.
  assert.equal((await post("mine", alice, 6000)).status, 201);
  assert.match(cartd.output(), /starting the document thread/);
  assert.match(cartd.output(), /cart accepted uid=mine .*principal=alice/);
  assert.notEqual(await head("mine", alice), 404);
  assert.equal(await head("mine", bob), 404, "another principal does not see it");
  // One file over: 429 naming the limit, nothing stored.
  const over = await post("more", bob, 6001);
  assert.equal(over.status, 429, over.body.message);
  assert.match(over.body.message, /files per cart/);
  assert.ok(over.retry, "Retry-After");
  assert.equal(await head("more", bob), 404, "nothing stored");
  // A second live cart for alice: over CARTD_QUOTA_CARTS (checked as the cart is stored).
  const second = await post("second", alice, 6000);
  assert.equal(second.status, 429, second.body.message);
  assert.match(second.body.message, /live carts/);
  assert.equal(await head("second", alice), 404, "nothing stored");
  // bob's own cart "mine" beside alice's: uids are per principal.
  assert.equal((await post("mine", bob, 6000)).status, 201);
  assert.notEqual(await head("mine", bob), 404);
});
