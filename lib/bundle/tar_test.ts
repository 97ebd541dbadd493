import assert from "node:assert/strict";
import {
  encodePaxRecords,
  encodeTarHeader,
  TAR_BLOCK,
  TAR_END,
  type TarEntry,
  tarHeaderLength,
  tarPadding,
  USTAR_MAX_SIZE,
} from "./tar.ts";

const decoder = new TextDecoder();

/** A NUL-terminated header field as a string. */
function field(block: Uint8Array, offset: number, length: number): string {
  const bytes = block.subarray(offset, offset + length);
  const nul = bytes.indexOf(0);
  return decoder.decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

function octal(block: Uint8Array, offset: number, length: number): number {
  return parseInt(field(block, offset, length).trim(), 8);
}

function checksumOk(block: Uint8Array): boolean {
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i];
  return octal(block, 148, 8) === sum && block[154] === 0 && block[155] === 0x20;
}

/** Parses pax records, checking each declared length against the actual one. */
function parsePax(data: Uint8Array): Map<string, string> {
  const out = new Map<string, string>();
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    const length = Number(decoder.decode(data.subarray(at, space)));
    const record = data.subarray(at, at + length);
    assert.equal(record[record.length - 1], 0x0a, "pax record ends with a newline");
    const text = decoder.decode(record.subarray(space - at + 1, record.length - 1));
    const eq = text.indexOf("=");
    out.set(text.slice(0, eq), text.slice(eq + 1));
    at += length;
  }
  assert.equal(at, data.length, "pax records fill the data exactly");
  return out;
}

const file = (name: string, size = 10, mtime = 1700000000.9): TarEntry => ({
  name,
  type: "file",
  size,
  mtime,
});

Deno.test("tar: plain file header fields and checksum", () => {
  const h = encodeTarHeader(file("top/a/hello.txt", 1234));
  assert.equal(h.length, 512);
  assert.equal(field(h, 0, 100), "top/a/hello.txt");
  assert.equal(field(h, 100, 8), "0000644");
  assert.equal(field(h, 108, 8), "0000000");
  assert.equal(field(h, 116, 8), "0000000");
  assert.equal(field(h, 124, 12), "00000002322"); // 1234 in octal, 11 digits
  assert.equal(octal(h, 136, 12), 1700000000); // floor of the fractional mtime
  assert.equal(String.fromCharCode(h[156]), "0");
  assert.deepEqual([...h.subarray(257, 265)], [..."ustar\x0000"].map((c) => c.charCodeAt(0)));
  assert.equal(field(h, 265, 32), "");
  assert.equal(field(h, 345, 155), "");
  assert.ok(checksumOk(h), "checksum matches the header bytes");
});

Deno.test("tar: directory header has typeflag 5, mode 0755, a trailing slash and size 0", () => {
  const h = encodeTarHeader({ name: "top/a", type: "dir", size: 99, mtime: 1700000000 });
  assert.equal(field(h, 0, 100), "top/a/");
  assert.equal(String.fromCharCode(h[156]), "5");
  assert.equal(field(h, 100, 8), "0000755");
  assert.equal(octal(h, 124, 12), 0);
  assert.ok(checksumOk(h));
});

Deno.test("tar: a 200-byte ASCII path is split into prefix and name, without pax", () => {
  const name = "top/" + "abcdefghi/".repeat(15) + "x".repeat(46); // 200 bytes
  assert.equal(name.length, 200);
  const h = encodeTarHeader(file(name));
  assert.equal(h.length, 512);
  assert.equal(`${field(h, 345, 155)}/${field(h, 0, 100)}`, name);
  assert.ok(checksumOk(h));
});

Deno.test("tar: a 300-byte path gets a pax path record", () => {
  const name = "top/" + "d/".repeat(140) + "file-name-.txt";
  assert.equal(name.length, 298);
  const h = encodeTarHeader(file(name, 5));
  assert.equal(h.length, tarHeaderLength(file(name, 5)));
  assert.equal(h.length, 3 * 512);
  const x = h.subarray(0, 512);
  assert.equal(String.fromCharCode(x[156]), "x");
  assert.ok(checksumOk(x));
  const paxLength = octal(x, 124, 12);
  const records = parsePax(h.subarray(512, 512 + paxLength));
  assert.equal(records.get("path"), name);
  assert.ok(h.subarray(512 + paxLength, 1024).every((b) => b === 0), "pax data zero-padded");
  const main = h.subarray(1024);
  assert.equal(String.fromCharCode(main[156]), "0");
  assert.equal(octal(main, 124, 12), 5);
  assert.ok(checksumOk(main));
  assert.ok(field(main, 0, 100).length <= 100);
});

Deno.test("tar: a name whose last segment is over 100 bytes cannot split and uses pax", () => {
  const name = "top/" + "n".repeat(120);
  const h = encodeTarHeader(file(name));
  assert.equal(String.fromCharCode(h[156]), "x");
  assert.equal(parsePax(h.subarray(512, 512 + octal(h, 124, 12))).get("path"), name);
});

Deno.test("tar: a non-ASCII path is carried in UTF-8 by pax, with an ASCII stand-in", () => {
  const name = "top/é/ü 日本.txt";
  const h = encodeTarHeader(file(name));
  assert.equal(String.fromCharCode(h[156]), "x");
  const records = parsePax(h.subarray(512, 512 + octal(h, 124, 12)));
  assert.equal(records.get("path"), name);
  const main = h.subarray(h.length - 512);
  assert.ok(main.subarray(0, 100).every((b) => b < 0x80), "ustar name is ASCII");
  assert.ok(checksumOk(main));
  assert.ok(h.subarray(0, 100).every((b) => b < 0x80), "x header name is ASCII");
});

Deno.test("tar: a size of 8 GiB or more goes into pax size, ustar size is 0", () => {
  const big = USTAR_MAX_SIZE + 12345;
  const h = encodeTarHeader(file("top/big.bin", big));
  assert.equal(h.length, tarHeaderLength(file("top/big.bin", big)));
  assert.equal(String.fromCharCode(h[156]), "x");
  const records = parsePax(h.subarray(512, 512 + octal(h, 124, 12)));
  assert.equal(records.get("size"), String(big));
  assert.equal(records.has("path"), false);
  const main = h.subarray(h.length - 512);
  assert.equal(field(main, 124, 12), "00000000000");
  assert.ok(checksumOk(main));
  // Just under the limit: plain ustar with 11 sevens.
  const under = encodeTarHeader(file("top/big.bin", USTAR_MAX_SIZE - 1));
  assert.equal(under.length, 512);
  assert.equal(field(under, 124, 12), "77777777777");
});

Deno.test("tar: mtimes outside the octal range go into pax mtime", () => {
  const h = encodeTarHeader(file("top/old", 1, -5));
  assert.equal(parsePax(h.subarray(512, 512 + octal(h, 124, 12))).get("mtime"), "-5");
  assert.equal(octal(h.subarray(h.length - 512), 136, 12), 0);
});

Deno.test("tar: pax record lengths are right across digit-count boundaries", () => {
  for (let n = 1; n <= 1100; n++) {
    const value = "v".repeat(n);
    const data = encodePaxRecords([["path", value]]);
    assert.equal(parsePax(data).get("path"), value, `value of ${n} bytes`);
  }
  assert.equal(decoder.decode(encodePaxRecords([["path", "é.txt"]])), "15 path=é.txt\n");
  assert.throws(() => encodePaxRecords([["a=b", "c"]]), /Invalid pax record key "a=b"/);
});

Deno.test("tar: tarHeaderLength agrees with encodeTarHeader", () => {
  const names = ["a", "top/" + "x".repeat(95), "top/" + "y/".repeat(80), "ü", "é/".repeat(60)];
  for (const name of names) {
    for (const size of [0, 1, USTAR_MAX_SIZE]) {
      for (const type of ["file", "dir"] as const) {
        const e: TarEntry = { name, type, size, mtime: 1700000000 };
        assert.equal(tarHeaderLength(e), encodeTarHeader(e).length, `${type} ${name} ${size}`);
      }
    }
  }
});

Deno.test("tar: padding and end marker", () => {
  assert.equal(tarPadding(0), 0);
  assert.equal(tarPadding(1), 511);
  assert.equal(tarPadding(512), 0);
  assert.equal(tarPadding(513), 511);
  assert.equal(TAR_END.length, 1024);
  assert.ok(TAR_END.every((b) => b === 0));
});

Deno.test("tar: invalid entries are refused with a message naming them", () => {
  assert.throws(() => encodeTarHeader(file("")), /name is empty/);
  assert.throws(() => encodeTarHeader(file("a\0b")), /contains a NUL/);
  assert.throws(() => encodeTarHeader(file("a", -1)), /has size -1/);
  assert.throws(() => encodeTarHeader(file("a", 1.5)), /has size 1.5/);
});
