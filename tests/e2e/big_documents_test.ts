/**
 * Big cart documents (1 MiB or more: the document thread, app/documents.ts): parsed a piece at
 * a time, held two at a time, and refused exactly as small ones are.
 */
import assert from "node:assert/strict";
import { startFakeArchive } from "../support/fake_archive.ts";
import { cartStatus, postCart, startCartd } from "../support/harness.ts";

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
