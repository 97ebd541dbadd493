/**
 * Zip header encoding for archives of stored (uncompressed) entries whose CRC-32 and size are
 * known before the data is sent: local file headers, central directory headers and the end
 * of central directory, with zip64 extra fields and the zip64 end record and locator where a
 * size, an offset or the entry count needs them. Names are UTF-8 (general purpose flag bit
 * 11); times are MS-DOS date and time in UTC plus an extended timestamp (`UT`) extra field.
 *
 * Everything here is a pure function. The `…Length` functions give a header's length without
 * building it, so a caller can lay out a whole archive up front.
 *
 * An archive is: for each entry, {@linkcode encodeZipLocalHeader} then the data; then for each
 * entry {@linkcode encodeZipCentralHeader}; then {@linkcode encodeZipEnd}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeZipCentralHeader, encodeZipEnd, encodeZipLocalHeader } from "./zip.ts";
 * const entry = { name: "a.txt", type: "file" as const, size: 0, crc32: 0, mtime: 1700000000 };
 * const local = encodeZipLocalHeader(entry); // at offset 0, no data follows
 * const central = encodeZipCentralHeader(entry, 0);
 * const end = encodeZipEnd({ entries: 1, centralOffset: local.length, centralSize: central.length });
 * // local + central + end is a valid zip holding one empty file: each part starts with its
 * // signature, and the end record (22 bytes, no comment) points back at the central header.
 * const view = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset);
 * const signatures = [local, central, end].map((b) => view(b).getUint32(0, true));
 * assert.deepEqual(signatures, [0x04034b50, 0x02014b50, 0x06054b50]);
 * assert.equal(end.length, 22);
 * const [entries, size, offset] = [view(end).getUint16(10, true), view(end).getUint32(12, true), view(end).getUint32(16, true)];
 * assert.deepEqual([entries, size, offset], [1, central.length, local.length]);
 * ```
 * @module
 */

/** One entry of a zip archive, as far as its headers are concerned. */
export interface ZipEntry {
  /** Full path inside the archive; a directory's name gets a trailing `/` if it has none. */
  name: string;
  /** `file` or `dir` (a directory has no data). */
  type: "file" | "dir";
  /** Data length in bytes (stored, so compressed and uncompressed sizes are equal). */
  size: number;
  /** Unsigned CRC-32 of the data (0 for a directory). */
  crc32: number;
  /** Modification time in seconds since the epoch. */
  mtime: number;
  /** Unix permission bits; default 0o644 for files and 0o755 for directories. */
  mode?: number;
}

/** Where the end of the central directory needs to know about. */
export interface ZipEnd {
  /** Number of entries in the central directory. */
  entries: number;
  /** Offset of the first central directory header. */
  centralOffset: number;
  /** Total length of the central directory headers. */
  centralSize: number;
}

const LOCAL_SIGNATURE = 0x04034b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const END_SIGNATURE = 0x06054b50;
const ZIP64_END_SIGNATURE = 0x06064b50;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const FLAG_UTF8 = 0x0800;
const MAX32 = 0xffffffff;
const MAX16 = 0xffff;
const UNIX_VERSION_MADE_BY = (3 << 8) | 45;

const encoder = new TextEncoder();

function entryName(entry: ZipEntry): Uint8Array {
  if (entry.name.length === 0) throw new TypeError("Zip entry name is empty");
  const name = entry.type === "dir" && !entry.name.endsWith("/") ? entry.name + "/" : entry.name;
  const bytes = encoder.encode(name);
  if (bytes.length > MAX16) {
    throw new RangeError(`Zip entry name "${name.slice(0, 60)}…" is longer than 65535 bytes`);
  }
  return bytes;
}

function entrySize(entry: ZipEntry): number {
  if (entry.type === "dir") return 0;
  if (!Number.isSafeInteger(entry.size) || entry.size < 0) {
    throw new RangeError(
      `Zip entry "${entry.name}" has size ${entry.size}: expected a non-negative safe integer`,
    );
  }
  return entry.size;
}

function checkOffset(offset: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new RangeError(`Zip offset ${offset} is not a non-negative safe integer`);
  }
}

/** True when the extended timestamp field can carry `mtime` (a signed 32-bit time). */
function hasUnixTime(mtime: number): boolean {
  return mtime >= 0 && mtime <= 0x7fffffff;
}

/**
 * MS-DOS `[time, date]` of a Unix time, in UTC, clamped to 1980-01-01 … 2107-12-31.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { dosDateTime } from "./zip.ts";
 * // 03:04:06 is 3 << 11 | 4 << 5 | 6 / 2; 2024-01-02 is (2024 - 1980) << 9 | 1 << 5 | 2.
 * assert.deepEqual(dosDateTime(Date.UTC(2024, 0, 2, 3, 4, 6) / 1000), [0x1883, 0x5822]);
 * assert.deepEqual(dosDateTime(0), [0, 0x21]); // before 1980: 1980-01-01 00:00:00
 * ```
 */
export function dosDateTime(mtime: number): [time: number, date: number] {
  const d = new Date(Math.floor(Number.isFinite(mtime) ? mtime : 0) * 1000);
  const year = d.getUTCFullYear();
  if (!(year >= 1980)) return [0, (1 << 5) | 1];
  if (year > 2107) return [(23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31];
  const time = (d.getUTCHours() << 11) | (d.getUTCMinutes() << 5) | (d.getUTCSeconds() >> 1);
  const date = ((year - 1980) << 9) | ((d.getUTCMonth() + 1) << 5) | d.getUTCDate();
  return [time, date];
}

function writeCommon(
  view: DataView,
  at: number,
  entry: ZipEntry,
  zip64: boolean,
  size: number,
  nameLength: number,
  extraLength: number,
): void {
  // version needed to extract: 4.5 with zip64, 2.0 for a directory, 1.0 for a stored file
  view.setUint16(at, zip64 ? 45 : entry.type === "dir" ? 20 : 10, true);
  view.setUint16(at + 2, FLAG_UTF8, true);
  view.setUint16(at + 4, 0, true); // stored
  const [time, date] = dosDateTime(entry.mtime);
  view.setUint16(at + 6, time, true);
  view.setUint16(at + 8, date, true);
  view.setUint32(at + 10, entry.type === "dir" ? 0 : entry.crc32 >>> 0, true);
  const size32 = size >= MAX32 ? MAX32 : size;
  view.setUint32(at + 14, size32, true);
  view.setUint32(at + 18, size32, true);
  view.setUint16(at + 22, nameLength, true);
  view.setUint16(at + 24, extraLength, true);
}

function setUint64(view: DataView, at: number, value: number): void {
  view.setBigUint64(at, BigInt(value), true);
}

/** Local header length: 30 + name + zip64 extra (20, when size ≥ 4 GiB − 1) + `UT` (9). */
export function zipLocalHeaderLength(entry: ZipEntry): number {
  const size = entrySize(entry);
  return 30 + entryName(entry).length + (size >= MAX32 ? 20 : 0) +
    (hasUnixTime(entry.mtime) ? 9 : 0);
}

/**
 * Builds the local file header of an entry (the entry's data follows it directly; no data
 * descriptor). A file of 0xFFFFFFFF bytes or more gets a zip64 extra field with both sizes.
 *
 * @throws {RangeError} when the size is not a non-negative safe integer, or the name is longer
 * than 65535 bytes.
 */
export function encodeZipLocalHeader(entry: ZipEntry): Uint8Array {
  const name = entryName(entry);
  const size = entrySize(entry);
  const zip64 = size >= MAX32;
  const unixTime = hasUnixTime(entry.mtime);
  const extra = (zip64 ? 20 : 0) + (unixTime ? 9 : 0);
  const out = new Uint8Array(30 + name.length + extra);
  const view = new DataView(out.buffer);
  view.setUint32(0, LOCAL_SIGNATURE, true);
  writeCommon(view, 4, entry, zip64, size, name.length, extra);
  out.set(name, 30);
  let at = 30 + name.length;
  if (zip64) {
    view.setUint16(at, 0x0001, true);
    view.setUint16(at + 2, 16, true);
    setUint64(view, at + 4, size);
    setUint64(view, at + 12, size);
    at += 20;
  }
  if (unixTime) {
    view.setUint16(at, 0x5455, true);
    view.setUint16(at + 2, 5, true);
    view.setUint8(at + 4, 1); // modification time present
    view.setUint32(at + 5, Math.floor(entry.mtime), true);
  }
  return out;
}

function centralZip64Length(size: number, offset: number): number {
  const fields = (size >= MAX32 ? 2 : 0) + (offset >= MAX32 ? 1 : 0);
  return fields === 0 ? 0 : 4 + 8 * fields;
}

/**
 * Central directory header length: 46 + name + zip64 extra (sizes and/or offset, when
 * ≥ 0xFFFFFFFF) + `UT` (9).
 */
export function zipCentralHeaderLength(entry: ZipEntry, localOffset: number): number {
  checkOffset(localOffset);
  return 46 + entryName(entry).length + centralZip64Length(entrySize(entry), localOffset) +
    (hasUnixTime(entry.mtime) ? 9 : 0);
}

/**
 * Builds the central directory header of an entry whose local header starts at `localOffset`.
 * Sizes and offset of 0xFFFFFFFF or more go into a zip64 extra field. Version made by is Unix,
 * and the external attributes carry the Unix mode (plus the MS-DOS directory bit for a
 * directory).
 *
 * @throws {RangeError} when a size or offset is not a non-negative safe integer.
 */
export function encodeZipCentralHeader(entry: ZipEntry, localOffset: number): Uint8Array {
  checkOffset(localOffset);
  const name = entryName(entry);
  const size = entrySize(entry);
  const zip64Length = centralZip64Length(size, localOffset);
  const unixTime = hasUnixTime(entry.mtime);
  const extra = zip64Length + (unixTime ? 9 : 0);
  const out = new Uint8Array(46 + name.length + extra);
  const view = new DataView(out.buffer);
  view.setUint32(0, CENTRAL_SIGNATURE, true);
  view.setUint16(4, UNIX_VERSION_MADE_BY, true);
  writeCommon(view, 6, entry, zip64Length > 0, size, name.length, extra);
  // comment length, disk number start, internal attributes: 0
  const dir = entry.type === "dir";
  const mode = (entry.mode ?? (dir ? 0o755 : 0o644)) | (dir ? 0o040000 : 0o100000);
  view.setUint32(38, ((mode << 16) | (dir ? 0x10 : 0)) >>> 0, true);
  view.setUint32(42, localOffset >= MAX32 ? MAX32 : localOffset, true);
  out.set(name, 46);
  let at = 46 + name.length;
  if (zip64Length > 0) {
    view.setUint16(at, 0x0001, true);
    view.setUint16(at + 2, zip64Length - 4, true);
    at += 4;
    if (size >= MAX32) {
      setUint64(view, at, size);
      setUint64(view, at + 8, size);
      at += 16;
    }
    if (localOffset >= MAX32) {
      setUint64(view, at, localOffset);
      at += 8;
    }
  }
  if (unixTime) {
    view.setUint16(at, 0x5455, true);
    view.setUint16(at + 2, 5, true);
    view.setUint8(at + 4, 1);
    view.setUint32(at + 5, Math.floor(entry.mtime), true);
  }
  return out;
}

function needsZip64End(end: ZipEnd): boolean {
  return end.entries >= MAX16 || end.centralOffset >= MAX32 || end.centralSize >= MAX32;
}

/** End length: 22, plus 56 + 20 for the zip64 end record and locator when needed. */
export function zipEndLength(end: ZipEnd): number {
  return needsZip64End(end) ? 56 + 20 + 22 : 22;
}

/**
 * Builds the end of the central directory: the zip64 end record and its locator (when the entry
 * count is 0xFFFF or more, or the central directory's offset or size is 0xFFFFFFFF or more),
 * then the classic end record, whose overflowing fields then hold their maximum value.
 *
 * @throws {RangeError} when a count, offset or size is not a non-negative safe integer.
 */
export function encodeZipEnd(end: ZipEnd): Uint8Array {
  for (const key of ["entries", "centralOffset", "centralSize"] as const) {
    if (!Number.isSafeInteger(end[key]) || end[key] < 0) {
      throw new RangeError(`Zip end ${key} ${end[key]} is not a non-negative safe integer`);
    }
  }
  const zip64 = needsZip64End(end);
  const out = new Uint8Array(zipEndLength(end));
  const view = new DataView(out.buffer);
  let at = 0;
  if (zip64) {
    const recordOffset = end.centralOffset + end.centralSize;
    view.setUint32(0, ZIP64_END_SIGNATURE, true);
    setUint64(view, 4, 44); // size of the rest of the record
    view.setUint16(12, UNIX_VERSION_MADE_BY, true);
    view.setUint16(14, 45, true);
    // disk numbers (16, 20): 0
    setUint64(view, 24, end.entries);
    setUint64(view, 32, end.entries);
    setUint64(view, 40, end.centralSize);
    setUint64(view, 48, end.centralOffset);
    view.setUint32(56, ZIP64_LOCATOR_SIGNATURE, true);
    // disk with the zip64 end record (60): 0
    setUint64(view, 64, recordOffset);
    view.setUint32(72, 1, true); // total number of disks
    at = 76;
  }
  view.setUint32(at, END_SIGNATURE, true);
  const entries = Math.min(end.entries, MAX16);
  view.setUint16(at + 8, entries, true);
  view.setUint16(at + 10, entries, true);
  view.setUint32(at + 12, Math.min(end.centralSize, MAX32), true);
  view.setUint32(at + 16, Math.min(end.centralOffset, MAX32), true);
  return out;
}
