/**
 * POSIX tar (ustar) header encoding, with pax extended headers (typeflag `x`) for the
 * entries that ustar alone cannot describe: a name that does not fit the `name`(100) /
 * `prefix`(155) split, a name with a non-ASCII character, a size of 8 GiB or more, or a
 * modification time outside the 11-digit octal range.
 *
 * Everything here is a pure function: no I/O, no state. {@linkcode tarHeaderLength} tells the
 * length of an entry's header bytes without building them, so a caller can lay out a whole
 * archive up front and build each header only when it is about to be sent.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeTarHeader, TAR_BLOCK, TAR_END, tarPadding } from "./tar.ts";
 * const data = new TextEncoder().encode("hello\n");
 * const header = encodeTarHeader({ name: "top/hello.txt", type: "file", size: data.length, mtime: 1700000000 });
 * assert.equal(header.length, TAR_BLOCK); // one ustar block: the name fits
 * assert.equal(new TextDecoder().decode(header.subarray(0, 13)), "top/hello.txt");
 * assert.equal(new TextDecoder().decode(header.subarray(257, 263)), "ustar\0");
 * // Then `data`, then tarPadding(data.length) zero bytes up to the next block,
 * assert.equal(data.length + tarPadding(data.length), TAR_BLOCK);
 * // and after the last entry two zero blocks.
 * assert.deepEqual(TAR_END, new Uint8Array(2 * TAR_BLOCK));
 * ```
 * @module
 */

/** The size of a tar block: every header and every data area is a multiple of it. */
export const TAR_BLOCK = 512;

/** The end-of-archive marker: two zero blocks. */
export const TAR_END: Uint8Array = new Uint8Array(2 * TAR_BLOCK);

/** The smallest size a ustar `size` field (11 octal digits) cannot hold: 8 GiB. */
export const USTAR_MAX_SIZE = 8 ** 11; // 8589934592

/** One entry of a tar archive, as far as its header is concerned. */
export interface TarEntry {
  /** Full path inside the archive. A directory's name may end in `/`; one is added if not. */
  name: string;
  /** `file` gives typeflag `0`, `dir` gives typeflag `5`. */
  type: "file" | "dir";
  /** Data length in bytes (ignored for directories, which have none). */
  size: number;
  /** Modification time in seconds since the epoch; the fractional part is dropped. */
  mtime: number;
  /** Permission bits; default 0o644 for files and 0o755 for directories. */
  mode?: number;
}

const encoder = new TextEncoder();

/** Number of zero bytes that follow `size` bytes of data to reach a block boundary. */
export function tarPadding(size: number): number {
  const rest = size % TAR_BLOCK;
  return rest === 0 ? 0 : TAR_BLOCK - rest;
}

// deno-lint-ignore no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;
const UNPRINTABLE = /[^\x20-\x7e]/g;

function entryName(entry: TarEntry): string {
  if (entry.type === "dir" && !entry.name.endsWith("/")) return entry.name + "/";
  return entry.name;
}

function checkEntry(entry: TarEntry): void {
  if (entry.name.length === 0) throw new TypeError("Tar entry name is empty");
  if (entry.name.includes("\0")) {
    throw new TypeError(`Tar entry name "${entry.name}" contains a NUL character`);
  }
  if (!Number.isSafeInteger(entry.size) || entry.size < 0) {
    throw new RangeError(
      `Tar entry "${entry.name}" has size ${entry.size}: expected a non-negative safe integer`,
    );
  }
  if (!Number.isFinite(entry.mtime)) {
    throw new RangeError(`Tar entry "${entry.name}" has mtime ${entry.mtime}: expected a number`);
  }
}

/**
 * Splits an ASCII name into ustar `prefix` and `name` fields, or returns null when it does not
 * fit (name ≤ 100 bytes; else prefix ≤ 155 bytes + `/` + a non-empty name ≤ 100 bytes).
 */
function splitUstarName(name: string): [prefix: string, name: string] | null {
  if (name.length <= 100) return ["", name];
  // The slash at index i separates prefix (i bytes) from name (len - i - 1 bytes).
  const last = Math.min(155, name.length - 2);
  for (let i = last; i >= name.length - 101 && i > 0; i--) {
    if (name.charCodeAt(i) === 0x2f) return [name.slice(0, i), name.slice(i + 1)];
  }
  return null;
}

interface Layout {
  /** ustar prefix and name fields (ASCII), possibly a lossy stand-in when pax carries it. */
  prefix: string;
  name: string;
  /** ustar size and mtime field values. */
  size: number;
  mtime: number;
  /** pax records, in order; empty when none is needed. */
  pax: [string, string][];
}

function layout(entry: TarEntry): Layout {
  checkEntry(entry);
  const full = entryName(entry);
  const size = entry.type === "dir" ? 0 : entry.size;
  const mtime = Math.floor(entry.mtime);
  const pax: [string, string][] = [];
  let split = NON_ASCII.test(full) ? null : splitUstarName(full);
  if (split === null) {
    pax.push(["path", full]);
    split = splitUstarName(full.replace(UNPRINTABLE, "_")) ?? ["", fallbackName(full)];
  }
  let ustarSize = size;
  if (size >= USTAR_MAX_SIZE) {
    pax.push(["size", String(size)]);
    ustarSize = 0; // as Python's tarfile writes it; readers take the pax value
  }
  let ustarMtime = mtime;
  if (mtime < 0 || mtime >= USTAR_MAX_SIZE) {
    pax.push(["mtime", String(mtime)]);
    ustarMtime = mtime < 0 ? 0 : USTAR_MAX_SIZE - 1;
  }
  return { prefix: split[0], name: split[1], size: ustarSize, mtime: ustarMtime, pax };
}

/** An ASCII stand-in of at most 100 bytes for a name that only a pax record can carry. */
function fallbackName(name: string): string {
  const ascii = name.replace(UNPRINTABLE, "_");
  if (ascii.length <= 100) return ascii;
  const slash = ascii.endsWith("/") ? "/" : "";
  return ascii.slice(0, 100 - slash.length) + slash;
}

/** The name of the `x` header that precedes an entry: `dir/PaxHeaders/base`, ASCII, ≤ 100. */
function paxHeaderName(name: string): string {
  const trimmed = name.endsWith("/") ? name.slice(0, -1) : name;
  const cut = trimmed.lastIndexOf("/");
  const dir = cut < 0 ? "" : trimmed.slice(0, cut + 1);
  const base = trimmed.slice(cut + 1);
  return fallbackName(`${dir}PaxHeaders/${base}`);
}

function decimalDigits(n: number): number {
  return String(n).length;
}

/** Byte length of one pax record `"<len> <key>=<value>\n"`, `<len>` included. */
function paxRecordLength(key: string, value: string): number {
  const body = encoder.encode(` ${key}=${value}\n`).length;
  let digits = decimalDigits(body);
  while (decimalDigits(body + digits) !== digits) digits = decimalDigits(body + digits);
  return body + digits;
}

/**
 * Encodes pax extended header records (`"<len> <key>=<value>\n"`, values in UTF-8) as the data
 * of an `x` entry, without padding.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodePaxRecords } from "./tar.ts";
 * // The length counts itself and bytes, not characters: "é" is two bytes in UTF-8.
 * assert.equal(new TextDecoder().decode(encodePaxRecords([["path", "é.txt"]])), "15 path=é.txt\n");
 * ```
 */
export function encodePaxRecords(records: Iterable<readonly [string, string]>): Uint8Array {
  let text = "";
  for (const [key, value] of records) {
    if (key.length === 0 || key.includes("=")) {
      throw new TypeError(`Invalid pax record key "${key}": must be non-empty and without "="`);
    }
    text += `${paxRecordLength(key, value)} ${key}=${value}\n`;
  }
  return encoder.encode(text);
}

function paxDataLength(pax: [string, string][]): number {
  let total = 0;
  for (const [key, value] of pax) total += paxRecordLength(key, value);
  return total;
}

/**
 * The number of header bytes {@linkcode encodeTarHeader} produces for `entry` (512, or more
 * when a pax extended header is needed), computed without building them.
 */
export function tarHeaderLength(entry: TarEntry): number {
  const { pax } = layout(entry);
  if (pax.length === 0) return TAR_BLOCK;
  const data = paxDataLength(pax);
  return TAR_BLOCK + data + tarPadding(data) + TAR_BLOCK;
}

function writeString(block: Uint8Array, offset: number, length: number, value: string): void {
  const bytes = encoder.encode(value);
  if (bytes.length > length) {
    throw new RangeError(`Tar header field of ${length} bytes cannot hold "${value}"`);
  }
  block.set(bytes, offset);
}

/** Writes `value` as zero-padded octal of `length - 1` digits followed by a NUL. */
function writeOctal(block: Uint8Array, offset: number, length: number, value: number): void {
  const digits = value.toString(8).padStart(length - 1, "0");
  if (digits.length > length - 1) {
    throw new RangeError(`Tar header field of ${length} bytes cannot hold ${value}`);
  }
  writeString(block, offset, length, digits); // the byte after stays 0
}

function ustarBlock(
  prefix: string,
  name: string,
  typeflag: string,
  mode: number,
  size: number,
  mtime: number,
): Uint8Array {
  const block = new Uint8Array(TAR_BLOCK);
  writeString(block, 0, 100, name);
  writeOctal(block, 100, 8, mode);
  writeOctal(block, 108, 8, 0); // uid
  writeOctal(block, 116, 8, 0); // gid
  writeOctal(block, 124, 12, size);
  writeOctal(block, 136, 12, mtime);
  block.fill(0x20, 148, 156); // checksum is computed with its own field as spaces
  block[156] = typeflag.charCodeAt(0);
  writeString(block, 257, 6, "ustar"); // "ustar\0"
  writeString(block, 263, 2, "00");
  writeOctal(block, 329, 8, 0); // devmajor
  writeOctal(block, 337, 8, 0); // devminor
  writeString(block, 345, 155, prefix);
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK; i++) sum += block[i];
  writeOctal(block, 148, 7, sum); // six digits, then a NUL and a space (as GNU tar writes)
  block[154] = 0;
  return block;
}

/**
 * Builds the header bytes of one entry: a 512-byte ustar header, preceded by a pax extended
 * header (`x` header, its records, zero padding) when ustar cannot describe the entry. The
 * entry's data and {@linkcode tarPadding} zero bytes follow it in the archive.
 *
 * uid and gid are 0, uname and gname are empty, magic is `"ustar\0"`, version `"00"`.
 *
 * @throws {TypeError} when the name is empty or contains NUL.
 * @throws {RangeError} when the size is not a non-negative safe integer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeTarHeader, tarHeaderLength } from "./tar.ts";
 * const long = "top/" + "d/".repeat(150) + "file.txt"; // 312 bytes: needs pax
 * const entry = { name: long, type: "file" as const, size: 3, mtime: 1700000000 };
 * const bytes = encodeTarHeader(entry);
 * assert.equal(bytes.length, 1536); // x header, one block of records, ustar header
 * assert.equal(tarHeaderLength(entry), bytes.length);
 * assert.equal(String.fromCharCode(bytes[156]), "x"); // the pax header's typeflag
 * ```
 */
export function encodeTarHeader(entry: TarEntry): Uint8Array {
  const l = layout(entry);
  const mode = entry.mode ?? (entry.type === "dir" ? 0o755 : 0o644);
  const main = ustarBlock(
    l.prefix,
    l.name,
    entry.type === "dir" ? "5" : "0",
    mode,
    l.size,
    l.mtime,
  );
  if (l.pax.length === 0) return main;
  const records = encodePaxRecords(l.pax);
  const out = new Uint8Array(TAR_BLOCK + records.length + tarPadding(records.length) + TAR_BLOCK);
  out.set(ustarBlock("", paxHeaderName(entryName(entry)), "x", 0o644, records.length, l.mtime));
  out.set(records, TAR_BLOCK);
  out.set(main, out.length - TAR_BLOCK);
  return out;
}
