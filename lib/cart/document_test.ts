import assert from "node:assert/strict";
import { CartDocumentError, parseCartDocument } from "./document.ts";

function rejects(body: unknown, message: string | RegExp): void {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  assert.throws(() => parseCartDocument(text, { maxFiles: 5 }), (e: unknown) => {
    assert.ok(e instanceof CartDocumentError, String(e));
    if (typeof message === "string") assert.equal(e.message, message);
    else assert.match(e.message, message);
    return true;
  });
}

Deno.test("a valid document: ids become strings, a leading / is dropped, sums lowercased", () => {
  const doc = parseCartDocument(JSON.stringify({
    fileids: [
      { id: "foo.txt", path: "1/2/3/foo.txt" },
      { id: 1234, path: "/2/3/4/baz.ini", hashtype: "sha1", hashsum: "A".repeat(40) },
    ],
    bundle: true,
  }));
  assert.deepEqual(doc, {
    files: [
      { id: "foo.txt", path: "1/2/3/foo.txt" },
      { id: "1234", path: "2/3/4/baz.ini", hashtype: "sha1", hashsum: "a".repeat(40) },
    ],
    bundle: true,
    manifest: false,
  });
});

Deno.test("path rules name the entry and the rule", () => {
  const doc = (path: unknown) => ({
    fileids: [{ id: 1, path: "ok" }, { id: 2, path: "ok2" }, { id: 3, path }],
  });
  rejects(doc("a/../b"), 'fileids[2].path: ".." is not allowed');
  rejects(doc(".."), 'fileids[2].path: ".." is not allowed');
  rejects(doc("a/./b"), 'fileids[2].path: "." is not allowed');
  rejects(doc("a//b"), /^fileids\[2\]\.path: empty segments/);
  rejects(doc("a/b/"), /^fileids\[2\]\.path: empty segments/);
  rejects(doc("/"), /^fileids\[2\]\.path: must name a file/);
  rejects(doc(""), /^fileids\[2\]\.path: must name a file/);
  rejects(doc("a\u0000b"), /^fileids\[2\]\.path: control characters/);
  rejects(doc("a\nb"), /^fileids\[2\]\.path: control characters/);
  rejects(doc("a\\b"), /^fileids\[2\]\.path: "\\" is not allowed/);
  rejects(doc("é".repeat(2049)), /^fileids\[2\]\.path: is longer than 4096 bytes/);
  rejects(doc(7), "fileids[2].path: must be a string");
  // 4096 bytes exactly is fine.
  assert.equal(parseCartDocument(JSON.stringify(doc("x".repeat(4096)))).files[2].path.length, 4096);
});

Deno.test("two entries on one path, or a file where a folder must be, are refused", () => {
  rejects(
    { fileids: [{ id: 1, path: "a/b" }, { id: 2, path: "/a/b" }] },
    'fileids[1].path: "a/b" is already the path of fileids[0]',
  );
  rejects(
    { fileids: [{ id: 1, path: "a/b/c" }, { id: 2, path: "a/b" }] },
    'fileids[0].path: "a/b" is a file (fileids[1]) and cannot also be a folder',
  );
});

Deno.test("hashes: both or neither, a known type, hex of the right length", () => {
  rejects(
    { fileids: [{ id: 1, path: "p", hashsum: "00" }] },
    "fileids[0].hashtype: hashtype and hashsum go together: give both or neither",
  );
  rejects(
    { fileids: [{ id: 1, path: "p", hashtype: "sha1" }] },
    "fileids[0].hashsum: hashtype and hashsum go together: give both or neither",
  );
  rejects(
    { fileids: [{ id: 1, path: "p", hashtype: "crc32", hashsum: "00" }] },
    /^fileids\[0\]\.hashtype: must be one of md5, sha1/,
  );
  rejects(
    { fileids: [{ id: 1, path: "p", hashtype: "md5", hashsum: "zz" }] },
    "fileids[0].hashsum: must be hexadecimal",
  );
  rejects(
    { fileids: [{ id: 1, path: "p", hashtype: "md5", hashsum: "00" }] },
    "fileids[0].hashsum: a md5 sum has 32 hex digits, not 2",
  );
});

Deno.test("the document's shape: JSON, an object, a non-empty bounded list", () => {
  rejects("{", /^The request body is not valid JSON/);
  rejects("", /^The request body is not valid JSON/);
  rejects([], "the cart document must be a JSON object");
  rejects({}, /^fileids: is required/);
  rejects({ fileids: {} }, /^fileids: must be a list/);
  rejects({ fileids: [] }, "fileids: must list at least one file");
  rejects(
    { fileids: Array.from({ length: 6 }, (_, i) => ({ id: i, path: `p${i}` })) },
    "fileids: must list at most 5 files",
  );
  rejects({ fileids: [7] }, "fileids[0]: must be an object with an id and a path");
  rejects({ fileids: [null] }, "fileids[0]: must be an object with an id and a path");
  // An id of the right type names the rule it breaks; any other type gets the general rule.
  rejects({ fileids: [{ id: -1, path: "p" }] }, "fileids[0].id: must not be negative");
  rejects({ fileids: [{ id: 1.5, path: "p" }] }, "fileids[0].id: must be an integer");
  rejects({ fileids: [{ id: "", path: "p" }] }, "fileids[0].id: must not be empty");
  rejects(
    { fileids: [{ id: "a\u0001", path: "p" }] },
    "fileids[0].id: control characters are not allowed",
  );
  rejects(
    { fileids: [{ id: null, path: "p" }] },
    "fileids[0].id: must be a string or a non-negative integer",
  );
  rejects({ fileids: [{ id: 1 }] }, "fileids[0].path: is required");
  rejects({ fileids: [{ id: 1, path: 2 }] }, "fileids[0].path: must be a string");
  rejects({ fileids: [{ id: 1, path: "p" }], bundle: 1 }, "bundle: must be true or false");
});
