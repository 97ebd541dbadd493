/**
 * `Range` request header parsing (RFC 9110, section 14.2) for byte ranges.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseRange } from "./range.ts";
 * assert.deepEqual(parseRange("bytes=0-99", 1000), [{ start: 0, end: 99 }]);
 * assert.deepEqual(parseRange("bytes=-100", 1000), [{ start: 900, end: 999 }]);
 * assert.equal(parseRange("bytes=2000-", 1000), "unsatisfiable"); // answer 416
 * assert.equal(parseRange("items=0-1", 1000), null); // ignore the header, answer 200
 * ```
 * @module
 */

/** An inclusive byte range: bytes `start` to `end`, both included. */
export type ByteRange = { start: number; end: number };

/** Above this many range specs the header is ignored (RFC 9110 lets a server do so). */
export const MAX_RANGES = 100;

const SPEC = /^([0-9]*)-([0-9]*)$/;
const OWS = /^[ \t]+|[ \t]+$/g;

/**
 * Parses a `Range` header against a representation of `size` bytes.
 *
 * Returns `null` when the header is absent, names another unit than `bytes`, is syntactically
 * invalid (including `last-pos < first-pos`), or lists more than {@linkcode MAX_RANGES}
 * ranges: the caller ignores it and answers `200` with everything. Returns `"unsatisfiable"`
 * when no listed range overlaps the representation (answer `416`). Otherwise returns the
 * satisfiable ranges in the order given, clipped to the representation (not coalesced).
 *
 * Accepted forms: `bytes=a-b`, `bytes=a-`, `bytes=-n`, and comma-separated lists of them with
 * optional spaces around the commas; the unit is case-insensitive.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseRange } from "./range.ts";
 * assert.deepEqual(parseRange("bytes=0-0, -1", 10), [{ start: 0, end: 0 }, { start: 9, end: 9 }]);
 * assert.equal(parseRange("bytes=5-1", 10), null); // invalid, so ignored
 * ```
 */
export function parseRange(
  header: string | null | undefined,
  size: number,
): ByteRange[] | "unsatisfiable" | null {
  if (header === null || header === undefined) return null;
  const value = header.replace(OWS, "");
  const eq = value.indexOf("=");
  if (eq <= 0 || value.slice(0, eq).toLowerCase() !== "bytes") return null;
  const ranges: ByteRange[] = [];
  let specs = 0;
  let emptyButSatisfiable = false;
  for (const element of value.slice(eq + 1).split(",")) {
    const spec = element.replace(OWS, "");
    if (spec === "") continue; // empty list elements are allowed and ignored
    const match = SPEC.exec(spec);
    if (match === null || (match[1] === "" && match[2] === "")) return null;
    if (++specs > MAX_RANGES) return null;
    if (match[1] === "") {
      const suffix = Number(match[2]);
      if (suffix === 0) continue;
      if (size === 0) emptyButSatisfiable = true;
      else ranges.push({ start: Math.max(0, size - suffix), end: size - 1 });
      continue;
    }
    const first = Number(match[1]);
    const last = match[2] === "" ? Infinity : Number(match[2]);
    if (last < first) return null;
    if (first >= size) continue;
    ranges.push({ start: first, end: Math.min(last, size - 1) });
  }
  if (specs === 0) return null;
  if (ranges.length > 0) return ranges;
  // A zero-length representation has no byte to send for `bytes=-n`: serve it whole.
  return emptyButSatisfiable ? null : "unsatisfiable";
}
