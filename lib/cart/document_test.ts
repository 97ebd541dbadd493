import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  CartDocumentError,
  documentHash,
  parseCartDocument,
  parseCartDocumentParts,
} from "./document.ts";

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
  // 4096 bytes exactly is fine (in names of at most 255 bytes).
  const longest = ("x".repeat(127) + "/").repeat(31) + "x".repeat(128);
  assert.equal(parseCartDocument(JSON.stringify(doc(longest))).files[2].path.length, 4096);
});

Deno.test("a folder or file name of more than 255 bytes (UTF-8) is refused", () => {
  const doc = (path: string) => ({ fileids: [{ id: 1, path }] });
  assert.equal(parseCartDocument(JSON.stringify(doc(`a/${"é".repeat(127)}x/b`))).files.length, 1);
  rejects(
    doc(`a/${"é".repeat(128)}/b`),
    `fileids[0].path: the name "${"é".repeat(40)}…" is 256 bytes long; a folder or file name ` +
      "may have at most 255 bytes (UTF-8), more than file systems and tar tools can make",
  );
  rejects(doc("x".repeat(256)), /^fileids\[0\]\.path: the name "x{40}…" is 256 bytes long/);
});

Deno.test("lone surrogates in a path or an id are refused, not replaced", () => {
  const rule = 'lone UTF-16 surrogates (a "\\ud800" escape without its pair) are not allowed: ' +
    "they have no UTF-8 form";
  rejects('{"fileids": [{"id": 1, "path": "a\\ud800.txt"}]}', `fileids[0].path: ${rule}`);
  rejects('{"fileids": [{"id": "x\\udfff", "path": "a.txt"}]}', `fileids[0].id: ${rule}`);
  // A pair is one character (U+1F600), and fine.
  const pair = parseCartDocument(
    '{"fileids": [{"id": "\\ud83d\\ude00", "path": "\\ud83d\\ude00"}]}',
  );
  assert.equal(pair.files[0].id, "\u{1f600}");
  assert.equal(pair.files[0].path, "\u{1f600}");
});

Deno.test("names that one file system or tar tool would merge are refused, naming both", () => {
  const nfc = "caf\u00e9.txt";
  const nfd = "cafe\u0301.txt";
  rejects(
    { fileids: [{ id: 1, path: `d/${nfc}` }, { id: 2, path: `d/${nfd}` }] },
    `fileids[1].path: "d/${nfd}" is the path of fileids[0] ("d/${nfc}") written another way: ` +
      "the same name in another Unicode normalisation form (NFC, NFD), which tar tools and file " +
      "systems merge; one of the files would be lost: rename one",
  );
  rejects(
    { fileids: [{ id: 1, path: "Data/A.txt" }, { id: 2, path: "data/a.TXT" }] },
    'fileids[1].path: "data/a.TXT" is the path of fileids[0] ("Data/A.txt") written another ' +
      "way: the names differ only by case, which case-insensitive file systems merge; one of the " +
      "files would be lost: rename one",
  );
  rejects(
    { fileids: [{ id: 1, path: `\u00c9t\u00e9` }, { id: 2, path: `e\u0301t\u00c9` }] },
    /^fileids\[1\]\.path: .* written another way: the names differ only by case/,
  );
  rejects(
    { fileids: [{ id: 1, path: "A" }, { id: 2, path: "a/b" }] },
    'fileids[1].path: "a" is a file (fileids[0]) and cannot also be a folder (the file is "A": ' +
      "the names differ only by case, which case-insensitive file systems merge)",
  );
  rejects(
    { fileids: [{ id: 1, path: `x/${nfd}/y` }, { id: 2, path: `x/${nfc}` }] },
    /^fileids\[0\]\.path: "x\/cafe\u0301\.txt" is a file .* another Unicode normalisation/,
  );
  // Folders that differ by case only hold different files: nothing is lost, they are taken.
  const taken = parseCartDocument(JSON.stringify({
    fileids: [{ id: 1, path: "Dir/a" }, { id: 2, path: "dir/b" }, { id: 3, path: nfc }],
  }));
  assert.deepEqual(taken.files.map((f) => f.path), ["Dir/a", "dir/b", nfc]);
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

Deno.test("webhook: cartd's own field, an http(s) URL; absent, the document is as before", () => {
  const files = [{ id: 1, path: "a" }];
  const plain = parseCartDocument(JSON.stringify({ fileids: files }));
  assert.equal("webhook" in plain, false);
  const hooked = parseCartDocument(JSON.stringify({
    fileids: files,
    webhook: "https://Hooks.Example.org:8443/cartd?x=1#part",
  }));
  // The fragment is never sent; the host is written as URLs write it.
  assert.equal(hooked.webhook, "https://hooks.example.org:8443/cartd?x=1");
  assert.equal(
    parseCartDocument(JSON.stringify({ fileids: files, webhook: "http://127.0.0.1:9/" })).webhook,
    "http://127.0.0.1:9/",
  );
});

Deno.test("webhook: what is not an http(s) URL is refused, naming the field", () => {
  const doc = (webhook: unknown) => ({ fileids: [{ id: 1, path: "a" }], webhook });
  rejects(doc(42), /^webhook: must be a URL string/);
  rejects(doc(null), /^webhook: must be a URL string/);
  rejects(doc("not a url"), /^webhook: must be an absolute URL/);
  rejects(doc("/relative/path"), /^webhook: must be an absolute URL/);
  rejects(doc("ftp://example.org/x"), "webhook: must be an http: or https: URL, not ftp:");
  rejects(doc("file:///etc/passwd"), "webhook: must be an http: or https: URL, not file:");
  rejects(doc("javascript:alert(1)"), /^webhook: must be an http: or https: URL/);
  rejects(doc("https://user:secret@example.org/"), /^webhook: must not carry a user name/);
  rejects(doc("https://example.org/" + "a".repeat(2048)), /^webhook: is longer than 2048/);
});

Deno.test("documentHash is the sha256 of the document's JSON, however many files", () => {
  const sha256 = (text: string) => createHash("sha256").update(text).digest("hex");
  const many = Array.from({ length: 2500 }, (_, i) => ({ id: `f${i}`, path: `d/${i}.txt` }));
  for (
    const text of [
      { fileids: [{ id: 1, path: "a" }] },
      { fileids: many, bundle: true },
      {
        fileids: [{ id: "x", path: "/b/é", hashtype: "md5", hashsum: "A".repeat(32) }],
        manifest: true,
        webhook: "https://example.org/hook#frag",
      },
    ].map((d) => JSON.stringify(d))
  ) {
    const doc = parseCartDocument(text);
    assert.equal(documentHash(doc), sha256(JSON.stringify(doc)));
    // And parsed from parts, the same document.
    const bytes = new TextEncoder().encode(text);
    const parts = [bytes.slice(0, 7), bytes.slice(7, 20), bytes.slice(20)];
    assert.deepEqual(parseCartDocumentParts(parts), doc);
  }
});
