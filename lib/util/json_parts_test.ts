import assert from "node:assert/strict";
import { parseJsonParts } from "./json_parts.ts";
import { isUtf8Parts } from "./utf8_parts.ts";

const utf8 = new TextEncoder();

/** A small seeded generator, so that a failure can be run again. */
function random(seed: number): () => number {
  return () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x80000000;
  };
}

/** `bytes` cut into parts at random places (some empty). */
function cut(bytes: Uint8Array, next: () => number): Uint8Array[] {
  const parts: Uint8Array[] = [];
  for (let at = 0; at < bytes.length;) {
    const n = Math.floor(next() * 12);
    parts.push(bytes.slice(at, at + n));
    at += n;
  }
  return parts;
}

/** What JSON.parse makes of `text` sent as UTF-8 (its byte order mark dropped), or "SyntaxError". */
function whole(text: string): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(utf8.encode(text)));
  } catch (e) {
    assert.ok(e instanceof SyntaxError);
    return "SyntaxError";
  }
}

/** What parseJsonParts makes of `text` cut at random, batches of `batch` bytes. */
function inParts(text: string, next: () => number, batch: number): unknown {
  const bytes = utf8.encode(text);
  const parts = cut(bytes, next);
  try {
    const got = parseJsonParts(parts, batch);
    if (got === null) return JSON.parse(new TextDecoder().decode(bytes)); // left whole
    assert.equal(parts.length, 0, "every part is taken");
    return got;
  } catch (e) {
    assert.ok(e instanceof SyntaxError, String(e));
    return "SyntaxError";
  }
}

const GOOD = [
  '{"fileids": [{"id": 1, "path": "a/b"}, {"id": "x,]}", "path": "c\\"]d"}], "bundle": true}',
  '{"fileids":[]}',
  '{ "fileids" : [ ] }',
  "{}",
  ' \n{"a": [[1, [2, {"b": [3]}]], "x"], "a": [4], "c": {"d": [5, "]"]}}\t',
  '{"__proto__": [1], "fileid\\u0073": ["\\\\", "\\u00e9€😀"]}',
  '\ufeff{"a": [1,2,3,4,5,6,7,8,9,10], "b": null, "c": -1.5e3, "d": "}"}',
  '{"a": [{"x": [1, 2]}, {"y": {"z": []}}, [], {}, "", 0]}',
];
const BAD = [
  '{"fileids": [1, ]}',
  '{"fileids": [, 1]}',
  '{"fileids": [1 2]}',
  '{"fileids": [1,, 2]}',
  '{"fileids": [1]',
  '{"fileids": [1]} x',
  '{"fileids": [1]}}',
  '{"fileids" [1]}',
  '{"fileids": }',
  '{"fileids": [}]}',
  '{"fileids": [{"id": 1]}]}',
  "{fileids: [1]}",
  '{"a": 1,}',
  '{"a": 1 "b": 2}',
  '{"a": "unfinished}',
  '{"a": [1]]}',
  '{"a": tru}',
  '{"a": [1], }',
  "{",
  '{"a\n": 1}',
  '\ufeff \ufeff{"a": 1}',
];

Deno.test("parts read as JSON.parse reads the whole text, cut anywhere, in any batches", () => {
  const next = random(15);
  for (const text of [...GOOD, ...BAD]) {
    const expected = whole(text);
    for (let round = 0; round < 40; round++) {
      const batch = 1 + Math.floor(next() * 20);
      const got = inParts(text, next, batch);
      assert.deepEqual(got, expected, `${JSON.stringify(text)} in batches of ${batch}`);
      if (expected !== "SyntaxError" && typeof got === "object" && got !== null) {
        // "__proto__" is an own property, as JSON.parse makes it, not the prototype
        assert.equal(Object.getPrototypeOf(got), Object.prototype);
        assert.deepEqual(Object.keys(got), Object.keys(expected as object));
      }
    }
  }
});

Deno.test("each part is handed back once, in order, and never read after", () => {
  const next = random(23);
  for (const text of [...GOOD, ...BAD]) {
    const expected = whole(text);
    for (let round = 0; round < 40; round++) {
      const batch = 1 + Math.floor(next() * 20);
      const parts = cut(utf8.encode(text), next);
      const all = [...parts];
      const back: Uint8Array[] = [];
      let got: unknown;
      try {
        got = parseJsonParts(parts, batch, (part) => {
          back.push(part);
          // The caller's again: overwritten (a part read again would now read "x") and then
          // taken away (a part read again would now be empty).
          part.fill(0x78);
          (part.buffer as ArrayBuffer).transfer();
        });
        if (got === null) continue; // left whole, nothing taken
      } catch (e) {
        assert.ok(e instanceof SyntaxError, String(e));
        got = "SyntaxError";
      }
      const where = `${JSON.stringify(text)} in batches of ${batch}`;
      assert.deepEqual(got, expected, where);
      // The same objects, in order (by identity: handed back, they are all empty alike).
      assert.ok(back.every((part, k) => part === all[k]), `${where}: in order, once each`);
      if (got !== "SyntaxError") assert.equal(back.length, all.length, `${where}: every part`);
    }
  }
});

Deno.test("a big array is read in batches to the same elements", () => {
  const files = Array.from({ length: 5000 }, (_, i) => ({ id: i, path: `d${i % 7}/f-${i},]"x` }));
  const text = JSON.stringify({ fileids: files, bundle: false });
  const bytes = utf8.encode(text);
  const parts: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; at += 4096) parts.push(bytes.slice(at, at + 4096));
  assert.deepEqual(parseJsonParts(parts, 1000), { fileids: files, bundle: false });
});

Deno.test("what is not an object is left whole, nothing taken", () => {
  for (const text of ['[{"id": 1}]', '"x"', "  ", "", "1", "null"]) {
    const parts = [utf8.encode(text.slice(0, 1)), utf8.encode(text.slice(1))];
    assert.equal(parseJsonParts(parts), null, text);
    assert.equal(parts.length, 2);
  }
});

Deno.test("UTF-8 is checked across parts as TextDecoder checks it", () => {
  const next = random(7);
  const samples = [
    utf8.encode("plain ascii"),
    utf8.encode("é€😀 mixed ä"),
    new Uint8Array([0x61, 0xe2, 0x82]), // cut short
    new Uint8Array([0xed, 0xa0, 0x80]), // a surrogate
    new Uint8Array([0xc0, 0xaf]), // overlong
    new Uint8Array([0x80, 0x61]), // a lone continuation
    new Uint8Array([0xf4, 0x90, 0x80, 0x80]), // past U+10FFFF
    new Uint8Array([0xe2, 0x82, 0xac, 0x80]), // one continuation too many
    new Uint8Array([0xf0, 0x9f, 0x98, 0x80, 0xf0, 0x9f]),
  ];
  for (const bytes of samples) {
    let expected = true;
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      expected = false;
    }
    for (let round = 0; round < 30; round++) {
      const parts = cut(bytes, next);
      assert.equal(isUtf8Parts(parts), expected, `${bytes} as ${parts.map((p) => `[${p}]`)}`);
    }
  }
});
