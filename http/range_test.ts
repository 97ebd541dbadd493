import assert from "node:assert/strict";
import { MAX_RANGES, parseRange } from "./range.ts";

Deno.test("range: the three forms", () => {
  assert.deepEqual(parseRange("bytes=0-99", 1000), [{ start: 0, end: 99 }]);
  assert.deepEqual(parseRange("bytes=900-", 1000), [{ start: 900, end: 999 }]);
  assert.deepEqual(parseRange("bytes=-100", 1000), [{ start: 900, end: 999 }]);
  assert.deepEqual(parseRange("bytes=999-999", 1000), [{ start: 999, end: 999 }]);
});

Deno.test("range: clipping to the representation", () => {
  assert.deepEqual(parseRange("bytes=500-5000", 1000), [{ start: 500, end: 999 }]);
  assert.deepEqual(parseRange("bytes=-5000", 1000), [{ start: 0, end: 999 }]);
  assert.deepEqual(parseRange("bytes=0-99999999999999999999999", 10), [{ start: 0, end: 9 }]);
});

Deno.test("range: lists, whitespace, case and empty elements", () => {
  assert.deepEqual(parseRange("bytes=0-0, -1", 10), [{ start: 0, end: 0 }, { start: 9, end: 9 }]);
  assert.deepEqual(parseRange(" Bytes=1-2 ,\t3-4,,", 10), [
    { start: 1, end: 2 },
    { start: 3, end: 4 },
  ]);
  // Unsatisfiable members of a list are dropped.
  assert.deepEqual(parseRange("bytes=20-30,2-3", 10), [{ start: 2, end: 3 }]);
});

Deno.test("range: unsatisfiable", () => {
  assert.equal(parseRange("bytes=1000-", 1000), "unsatisfiable");
  assert.equal(parseRange("bytes=1000-2000", 1000), "unsatisfiable");
  assert.equal(parseRange("bytes=-0", 1000), "unsatisfiable");
  assert.equal(parseRange("bytes=5-,7-9", 3), "unsatisfiable");
  assert.equal(parseRange("bytes=0-0", 0), "unsatisfiable");
});

Deno.test("range: ignored (null) headers", () => {
  for (
    const header of [
      null,
      undefined,
      "",
      "bytes",
      "bytes=",
      "bytes=,",
      "bytes=-",
      "bytes=a-b",
      "bytes=5-1",
      "bytes=1-2-3",
      "bytes=+1-2",
      "bytes=0x1-2",
      "bytes = 0-1",
      "items=0-1",
      "=0-1",
      "bytes=1.5-2",
      "bytes=0-1;q=1",
    ]
  ) {
    assert.equal(parseRange(header, 1000), null, String(header));
  }
  // A zero-length representation has nothing to send for a suffix range: serve it whole.
  assert.equal(parseRange("bytes=-5", 0), null);
});

Deno.test("range: too many ranges are ignored", () => {
  const many = (n: number) => "bytes=" + Array.from({ length: n }, (_, i) => `${i}-${i}`).join(",");
  assert.equal((parseRange(many(MAX_RANGES), 1000) as unknown[]).length, MAX_RANGES);
  assert.equal(parseRange(many(MAX_RANGES + 1), 1000), null);
});
