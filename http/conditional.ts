/**
 * The conditional request headers a download honours (RFC 9110, section 13): `If-None-Match`
 * (the client has this bundle already: answer 304) and `If-Range` (send the range only if the
 * bundle is still the one the client has a part of). Both compare entity tags such as the
 * bundle's `ETag`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { noneMatch, rangeApplies } from "./conditional.ts";
 * assert.equal(noneMatch('"a", "b"', '"b"'), false); // matched: answer 304
 * assert.equal(rangeApplies('"a"', '"a"'), true);
 * ```
 * @module
 */

/** The entity tags of a list header (`"a", W/"b"`), or `"*"`. */
function entityTags(header: string): string[] | "*" {
  if (header.trim() === "*") return "*";
  return [...header.matchAll(/(?:W\/)?"[^"]*"/g)].map((m) => m[0]);
}

/** An entity tag without its weakness mark: RFC 9110's weak comparison compares these. */
const opaque = (tag: string) => tag.startsWith("W/") ? tag.slice(2) : tag;

/**
 * Whether `If-None-Match` lets a GET of the representation tagged `etag` go on: true when the
 * header is absent or names no tag that matches `etag` by weak comparison; false (answer
 * `304 Not Modified`) when one matches or the header is `*`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { noneMatch } from "./conditional.ts";
 * assert.equal(noneMatch(null, '"v1"'), true);
 * assert.equal(noneMatch('"v0"', '"v1"'), true);
 * assert.equal(noneMatch('W/"v1"', '"v1"'), false);
 * assert.equal(noneMatch("*", '"v1"'), false);
 * ```
 */
export function noneMatch(header: string | null, etag: string): boolean {
  if (header === null) return true;
  const tags = entityTags(header);
  if (tags === "*") return false;
  return !tags.some((tag) => opaque(tag) === opaque(etag));
}

/**
 * Whether a `Range` header is to be honoured given `If-Range`: true when `If-Range` is absent
 * or is exactly `etag` (strong comparison: a weak tag or a date never matches, so the whole
 * bundle is sent).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { rangeApplies } from "./conditional.ts";
 * assert.equal(rangeApplies(null, '"v1"'), true);
 * assert.equal(rangeApplies('"v1"', '"v1"'), true);
 * assert.equal(rangeApplies('"stale"', '"v1"'), false);
 * ```
 */
export function rangeApplies(ifRange: string | null, etag: string): boolean {
  return ifRange === null || ifRange === etag;
}
