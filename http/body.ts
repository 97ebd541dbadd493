/**
 * Reading a request body within a size limit (the POST's cart document, `CARTD_MAX_BODY`):
 * a body larger than the limit is refused as soon as its declared length or its bytes so far
 * say so, without holding more than the limit in memory.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { readBody } from "./body.ts";
 * const post = (text: string) => new Request("http://cartd/x", { method: "POST", body: text });
 * assert.equal(await readBody(post("{}"), 10), "{}");
 * assert.equal(await readBody(post("x".repeat(11)), 10), null);
 * ```
 * @module
 */

/** The body of `request` as UTF-8 text, or null when it is longer than `limit` bytes. */
export async function readBody(request: Request, limit: number): Promise<string | null> {
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > limit) return null;
  if (!request.body) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of request.body) {
    size += chunk.length;
    if (size > limit) return null;
    chunks.push(chunk);
  }
  return new TextDecoder().decode(concat(chunks, size));
}

/** `chunks` (of `size` bytes in all) as one array. */
function concat(chunks: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
