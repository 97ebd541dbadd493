/**
 * The JSON answers of the cart API: every one has `Content-Type: application/json`.
 *
 * @module
 */

/** The media type of every JSON answer. */
export const JSON_TYPE = "application/json";

/**
 * A JSON answer with `status` and, besides its content type, `headers`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { json } from "./json.ts";
 * const answer = json({ message: "Not Found" }, 404);
 * assert.equal(answer.status, 404);
 * assert.equal(answer.headers.get("content-type"), "application/json");
 * assert.deepEqual(await answer.json(), { message: "Not Found" });
 * ```
 */
export function json(
  body: unknown,
  status: number,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": JSON_TYPE, ...headers },
  });
}
