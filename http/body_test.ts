/**
 * Tests of the body reader: bodies of many small chunks, the limit at its edge, and bodies that
 * are not UTF-8.
 */
import assert from "node:assert/strict";
import { BodyEncodingError, BodyReadError, BodyTimeoutError, readBody } from "./body.ts";

/** A POST whose body comes as `chunks`, one read each. */
function chunked(chunks: Uint8Array[], headers: Record<string, string> = {}): Request {
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
  return new Request("http://cartd/x", { method: "POST", body, headers });
}

/** `text` as one-byte views, each into a 64 KiB buffer (as Deno's HTTP server reads them). */
function oneByteViews(text: string): Uint8Array[] {
  return [...new TextEncoder().encode(text)].map((byte) => {
    const view = new Uint8Array(new ArrayBuffer(64 * 1024), 100, 1);
    view[0] = byte;
    return view;
  });
}

Deno.test("a body of thousands of one-byte chunks is read whole", async () => {
  const text = JSON.stringify({
    fileids: [{ id: "é", path: "données.txt" }],
    pad: "x".repeat(5000),
  });
  assert.equal(await readBody(chunked(oneByteViews(text)), 10_000), text);
});

Deno.test("the limit: exactly at it is read, one byte more is refused", async () => {
  assert.equal(await readBody(chunked(oneByteViews("x".repeat(100))), 100), "x".repeat(100));
  assert.equal(await readBody(chunked(oneByteViews("x".repeat(101))), 100), null);
  // A declared length over the limit is refused before reading; one under it is only a hint.
  const declared = { "content-length": "101" };
  assert.equal(await readBody(chunked(oneByteViews("x"), declared), 100), null);
  assert.equal(
    await readBody(chunked([new Uint8Array(50).fill(120)], { "content-length": "2" }), 100),
    "x".repeat(50),
  );
  assert.equal(await readBody(chunked([new Uint8Array(0)]), 0), "");
});

Deno.test("a body that is not UTF-8 is refused, saying from which byte", async () => {
  const bad = (bytes: number[]) => readBody(chunked([new Uint8Array(bytes)]), 100);
  await assert.rejects(bad([0x7b, 0x22, 0xff, 0x22]), (e: unknown) => {
    assert.ok(e instanceof BodyEncodingError);
    assert.equal(
      e.message,
      "The request body is not valid UTF-8 (from byte 2): send the cart document as UTF-8 JSON",
    );
    return true;
  });
  await assert.rejects(bad([0x22, 0xed, 0xa0, 0x80, 0x22]), BodyEncodingError); // a surrogate
  await assert.rejects(bad([0x22, 0xc3]), BodyEncodingError); // cut in the middle of "é"
  assert.equal(await bad([0xef, 0xbb, 0xbf, 0x7b, 0x7d]), "{}"); // a BOM is dropped
});

Deno.test("the byte named is where the broken sequence starts", async () => {
  const at = async (bytes: number[]) => {
    const error = await readBody(chunked([new Uint8Array(bytes)]), 100).catch((e) => e);
    return Number(/from byte (\d+)/.exec(String(error))?.[1]);
  };
  assert.equal(await at([0x61, 0x62, 0xe9, 0x22]), 2); // a lead byte, then no continuation
  assert.equal(await at([0x61, 0xf0, 0x9f, 0x98, 0x22]), 1); // 3 of 4 bytes, then a quote
  assert.equal(await at([0x61, 0xc3, 0xa9, 0x80]), 3); // "é", then a stray continuation
  assert.equal(await at([0xff]), 0);
  assert.equal(await at([0x61, 0xe9]), 1); // cut at the end
});

Deno.test("a body that stops before its end (the client went away) is a BodyReadError", async () => {
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      controller.enqueue(new TextEncoder().encode('{"fileids"'));
      controller.error(new TypeError("connection closed"));
    },
  });
  const request = new Request("http://cartd/x", { method: "POST", body });
  await assert.rejects(readBody(request, 100), (e: unknown) => {
    assert.ok(e instanceof BodyReadError);
    assert.match(e.message, /could not be read to its end .*: connection closed$/);
    return true;
  });
});

Deno.test("a body that does not come within the time limit is cancelled with BodyTimeoutError", async () => {
  let cancelled: unknown = null;
  // 3 bytes, then nothing: a client that stopped mid-body.
  const stalled = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new TextEncoder().encode('{"a'));
    },
    cancel(reason) {
      cancelled = reason;
    },
  });
  const request = new Request("http://cartd/x", { method: "POST", body: stalled });
  const started = Date.now();
  await assert.rejects(readBody(request, 1000, 100), (e: unknown) => {
    assert.ok(e instanceof BodyTimeoutError);
    assert.equal(e.timeoutMs, 100);
    assert.match(e.message, /within 0\.1 s \(CARTD_BODY_TIMEOUT; 3 bytes came\)/);
    return true;
  });
  assert.ok(Date.now() - started >= 90, "not before the limit");
  assert.ok(cancelled instanceof Error, "the rest of the body is cancelled");
  // Without a limit, and within one, a whole body is read as before.
  assert.equal(await readBody(chunked(oneByteViews("{}")), 10, 0), "{}");
  assert.equal(await readBody(chunked(oneByteViews("{}")), 10, 5000), "{}");
});
