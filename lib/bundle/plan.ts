/**
 * The bundle of a cart: the tar (or zip) a client downloads, laid out in full before its first
 * byte is sent, so its exact length and a strong ETag are known up front and any byte range
 * can be served by reading only the file regions it covers.
 *
 * {@linkcode planBundle} computes the layout (an offset per entry; header bytes are built only
 * while streaming). {@linkcode Bundle.stream} is a pull-based `ReadableStream` that reads the
 * staged files in chunks of 64 KiB for its first 8 MiB, then of 1 MiB, straight into the
 * chunks it hands out: fresh ones, or, for a consumer that is done with each chunk before it
 * reads the next (the HTTP server), the same few buffers again ({@linkcode StreamOptions}).
 *
 * Tar layout: `TOP/`, then for each file in the given order its parent directories not yet
 * listed (`TOP/a/`, `TOP/a/b/`, mode 0755) and the file itself (mode 0644), then two zero
 * blocks. With `manifest: true` the bundle is a BagIt bag: `TOP/bagit.txt`, `TOP/bag-info.txt`,
 * `TOP/manifest-sha256.txt`, `TOP/data/`, and the files under `TOP/data/`. Zip bundles hold
 * the same entries, stored (uncompressed), with the central directory at the end.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { planBundle } from "./plan.ts";
 * const files = [{
 *   path: "a/b.txt", size: 6, mtime: 1700000000, source: "/srv/cartd/cart/0", // "hello\n"
 *   sha256: "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03", crc32: 0x363a3020,
 * }];
 * const bundle = planBundle(files, { top: "data_2024", format: "tar", manifest: false, mtime: 1700000100 });
 * // data_2024/, data_2024/a/, the header of b.txt, one block of data, two end blocks.
 * assert.equal(bundle.size, 6 * 512);
 * assert.match(bundle.etag, /^"[^"]+"$/);
 * // 200: new Response(bundle.stream(), { headers: { "content-length": String(bundle.size), etag: bundle.etag } })
 * // 206: bundle.stream(range.start, range.end, request.signal); a range of headers reads no file.
 * const first = await new Response(bundle.stream(0, 511)).bytes();
 * assert.equal(new TextDecoder().decode(first.subarray(0, 10)), "data_2024/");
 * ```
 * @module
 */

import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import { heapCheckpoint, lentBuffersDropped, spentBuffers } from "../util/memory.ts";
import { encodeTarHeader, TAR_END, tarHeaderLength, tarPadding } from "./tar.ts";
import {
  encodeZipCentralHeader,
  encodeZipEnd,
  encodeZipLocalHeader,
  zipCentralHeaderLength,
  zipEndLength,
  zipLocalHeaderLength,
} from "./zip.ts";

/** One staged file of a cart, as it sits on disk. */
export interface BundleFile {
  /** Validated relative bundle path, e.g. `"1/2/3/foo.txt"` (no leading `/`, no `..`). */
  path: string;
  /** Length in bytes. */
  size: number;
  /** Seconds since the epoch (may be fractional; the tar header uses its floor). */
  mtime: number;
  /** Absolute path of the file on disk. */
  source: string;
  /** Lowercase hex SHA-256 of the file; read only for a bundle with a manifest. */
  sha256: string;
  /**
   * Unsigned CRC-32 of the file; read only for a zip (staging measures it for the files it
   * reads anyway, a zip asked for later measures the rest).
   */
  crc32: number;
}

/**
 * The files of a bundle, in order: an array, or any list that hands out its `i`-th file (a
 * cart's files kept in columns, say, which makes each {@linkcode BundleFile} on request).
 */
export interface FileList {
  /** How many files. */
  readonly length: number;
  /** The file at `index` (0 ≤ index < length). */
  at(index: number): BundleFile | undefined;
}

/** The archive format of a bundle. */
export type BundleFormat = "tar" | "zip";

/** How a bundle is laid out. */
export interface BundleOptions {
  /** Top directory name (the download name without `.tar`/`.zip`). */
  top: string;
  /** `tar` (POSIX ustar + pax) or `zip` (stored, zip64 where needed). */
  format: BundleFormat;
  /**
   * BagIt-style bag: files under `TOP/data/<path>`, plus `TOP/bagit.txt`, `TOP/bag-info.txt`
   * and `TOP/manifest-sha256.txt`, so `cd TOP && sha256sum -c manifest-sha256.txt` passes.
   */
  manifest: boolean;
  /** Seconds: mtime of directory entries and manifest files (the cart's ready time). */
  mtime: number;
}

/** A bundle whose every byte is known before the first is sent. */
export interface Bundle {
  /** Exact total length in bytes. */
  readonly size: number;
  /** Strong ETag, quoted, a hash over everything that determines the bytes. */
  readonly etag: string;
  /**
   * The bytes from `start` to `end` inclusive (default: all of them). Only the file regions
   * the range covers are read, in chunks of 64 KiB and then 1 MiB, as the consumer pulls;
   * `options.lend` lends the chunks ({@linkcode StreamOptions}). The stream errors, naming
   * the file, when a source file is missing or not of its recorded size; and with
   * `signal.reason` when `signal` aborts.
   *
   * @throws {RangeError} unless `0 <= start <= end + 1` and `end < size`.
   */
  stream(
    start?: number,
    end?: number,
    signal?: AbortSignal,
    options?: StreamOptions,
  ): ReadableStream<Uint8Array>;
}

/** How {@linkcode Bundle.stream} hands out its bytes. */
export interface StreamOptions {
  /**
   * Lend the chunks instead of giving them: the stream reads into the same two buffers of
   * each chunk size over and over, so a chunk is the consumer's only until it reads the next
   * one. A consumer that keeps chunks (`new Response(stream).bytes()`, a `pipeTo` that queues
   * them, a transfer to another thread) must not ask for it. In exchange a download makes no
   * garbage of its bytes: nothing for the collector to trace, free or be forced to run for
   * (a stream that gives its chunks makes 1 GiB of garbage a GiB). Default false.
   */
  lend?: boolean;
}

/** Size of the chunks a bundle stream hands out (and of its file reads), after its first bytes. */
export const CHUNK_SIZE = 1 << 20;

/**
 * The first {@linkcode RAMP_BYTES} of a stream go in chunks of this size. A client that reads
 * slowly, or stops, fills the socket's buffers (on Linux up to about 4 MiB) and is then left
 * holding the chunk being written and the one read ahead: 128 KiB with these, not 2 MiB, and
 * 100 such clients leave the allocator no scattered megabytes that it cannot give back.
 */
export const FIRST_CHUNK_SIZE = 64 * 1024;

/** Bytes of a stream sent in {@linkcode FIRST_CHUNK_SIZE} chunks before they grow to 1 MiB. */
export const RAMP_BYTES = 8 << 20;

const LAYOUT_VERSION = "cartd-bundle-1";
const encoder = new TextEncoder();
const SHA256_HEX = /^[0-9a-f]{64}$/;

/** What the bytes of one segment of a bundle are. */
type Piece =
  | { kind: "zeros" }
  | { kind: "bytes"; bytes: () => Uint8Array }
  | { kind: "file"; source: string; name: string; size: number };

/** A bundle's bytes as a sequence of segments: `starts[k]` ≤ byte < `starts[k + 1]`. */
interface Segments {
  starts: Float64Array;
  piece(k: number): Piece;
}

interface Entry {
  readonly name: string;
  readonly type: "file" | "dir";
  readonly size: number;
  readonly mtime: number;
  readonly crc32: number;
  /** Staged file (the data of a cart file) … */
  readonly file?: BundleFile;
  /** … or generated text (a BagIt file). */
  readonly text?: () => Uint8Array;
}

/**
 * The entry of a staged file. Its name and facts are read from the list when asked, so a
 * bundle of 40,000 files keeps no second copy of them for as long as it is downloaded.
 */
class FileEntry implements Entry {
  constructor(readonly files: FileList, readonly index: number, readonly base: string) {}
  get file(): BundleFile {
    return this.files.at(this.index)!;
  }
  get name(): string {
    return this.base + this.file.path;
  }
  get type(): "file" {
    return "file";
  }
  get size(): number {
    return this.file.size;
  }
  get mtime(): number {
    return this.file.mtime;
  }
  get crc32(): number {
    return this.file.crc32;
  }
}

function checkFile(file: BundleFile, index: number, options: BundleOptions): void {
  const where = `Bundle file ${index} ("${file.path}")`;
  const p = file.path;
  if (typeof p !== "string" || p.length === 0 || p.startsWith("/") || p.endsWith("/")) {
    throw new TypeError(`${where}: path must be a non-empty relative file path`);
  }
  if (p.split("/").some((s) => s === "" || s === "." || s === "..")) {
    throw new TypeError(`${where}: path has an empty, "." or ".." segment`);
  }
  if (!Number.isSafeInteger(file.size) || file.size < 0) {
    throw new RangeError(`${where}: size ${file.size} is not a non-negative safe integer`);
  }
  if (!Number.isFinite(file.mtime)) {
    throw new RangeError(`${where}: mtime ${file.mtime} is not finite`);
  }
  // Only a manifest reads the SHA-256, and only a zip the CRC-32 (a file staged without
  // them may have none).
  if (options.manifest && !SHA256_HEX.test(file.sha256)) {
    throw new TypeError(`${where}: sha256 "${file.sha256}" is not 64 lowercase hex digits`);
  }
  const zip = options.format === "zip";
  if (zip && (!Number.isInteger(file.crc32) || file.crc32 < 0 || file.crc32 > 0xffffffff)) {
    throw new RangeError(`${where}: crc32 ${file.crc32} is not an unsigned 32-bit integer`);
  }
  if (typeof file.source !== "string" || file.source.length === 0) {
    throw new TypeError(`${where}: source is empty`);
  }
}

/** A manifest line that GNU `sha256sum -c` reads back (backslashes escaped its way). */
function manifestLine(file: BundleFile): string {
  const name = `data/${file.path}`;
  if (!name.includes("\\")) return `${file.sha256}  ${name}\n`;
  return `\\${file.sha256}  ${name.replaceAll("\\", "\\\\")}\n`;
}

function isoDate(seconds: number): string {
  const d = new Date(Math.floor(seconds) * 1000);
  return Number.isNaN(d.getTime()) ? "1970-01-01" : d.toISOString().slice(0, 10);
}

function textEntry(name: string, mtime: number, format: BundleFormat, make: () => string): Entry {
  const bytes = encoder.encode(make()); // built once here for its length (and CRC), then dropped
  return {
    name,
    type: "file",
    size: bytes.length,
    mtime,
    crc32: format === "zip" ? crc32(bytes) >>> 0 : 0,
    text: () => encoder.encode(make()),
  };
}

/** Calls `fn` with every file of the list, in order. */
function eachOf(files: FileList, fn: (file: BundleFile, index: number) => void): void {
  for (let i = 0; i < files.length; i++) {
    fn(files.at(i)!, i);
    if ((i & 4095) === 4095) heapCheckpoint(); // a 40,000-file plan makes garbage fast
  }
}

function buildEntries(files: FileList, options: BundleOptions): Entry[] {
  const { top, mtime, format } = options;
  const entries: Entry[] = [{ name: `${top}/`, type: "dir", size: 0, mtime, crc32: 0 }];
  let base = `${top}/`;
  if (options.manifest) {
    let octets = 0;
    eachOf(files, (f) => void (octets += f.size));
    entries.push(
      textEntry(
        `${top}/bagit.txt`,
        mtime,
        format,
        () => "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
      ),
      textEntry(
        `${top}/bag-info.txt`,
        mtime,
        format,
        () =>
          `Bagging-Date: ${isoDate(mtime)}\nPayload-Oxum: ${octets}.${files.length}\n` +
          "Bag-Software-Agent: cartd\n",
      ),
      textEntry(`${top}/manifest-sha256.txt`, mtime, format, () => {
        let text = "";
        eachOf(files, (f) => void (text += manifestLine(f)));
        return text;
      }),
      { name: `${top}/data/`, type: "dir", size: 0, mtime, crc32: 0 },
    );
    base = `${top}/data/`;
  }
  const dirs = new Set<string>();
  const paths = new Set<string>();
  eachOf(files, (file, index) => {
    checkFile(file, index, options);
    if (paths.has(file.path) || dirs.has(file.path)) {
      throw new TypeError(`Bundle file ${index} ("${file.path}") collides with an earlier entry`);
    }
    paths.add(file.path);
    for (let cut = file.path.indexOf("/"); cut >= 0; cut = file.path.indexOf("/", cut + 1)) {
      const dir = file.path.slice(0, cut);
      if (dirs.has(dir)) continue;
      if (paths.has(dir)) {
        throw new TypeError(`Bundle file ${index} ("${file.path}") needs "${dir}" as a directory`);
      }
      dirs.add(dir);
      entries.push({ name: `${base}${dir}/`, type: "dir", size: 0, mtime, crc32: 0 });
    }
    entries.push(new FileEntry(files, index, base));
  });
  return entries;
}

function computeEtag(files: FileList, options: BundleOptions): string {
  const hash = createHash("sha256");
  hash.update(
    JSON.stringify([LAYOUT_VERSION, options.format, options.top, options.manifest, options.mtime]),
  );
  // What the bytes are made of: the SHA-256s only when a manifest carries them, the CRC-32s
  // only in a zip (a file staged without them has none until a bundle asks for them, and the
  // tar's ETag must not change then).
  const zip = options.format === "zip";
  eachOf(files, (f) => {
    const facts = [
      f.path,
      f.size,
      f.mtime,
      ...(options.manifest ? [f.sha256] : []),
      ...(zip ? [f.crc32] : []),
    ];
    hash.update("\n" + JSON.stringify(facts));
  });
  return `"${hash.digest("hex").slice(0, 40)}"`;
}

function dataPiece(entry: Entry): Piece {
  if (entry.file) {
    return { kind: "file", source: entry.file.source, name: entry.name, size: entry.size };
  }
  if (entry.text) return { kind: "bytes", bytes: entry.text };
  return { kind: "zeros" }; // a directory: zero-length
}

/**
 * Segments: entry i has segments 3i (header), 3i+1 (data), 3i+2 (padding); then zip central
 * directory headers at 3n+i (zero-length for tar); then the end (4n); `starts[4n+1]` = size.
 */
function layOut(entries: Entry[], options: BundleOptions): Segments {
  const n = entries.length;
  const starts = new Float64Array(4 * n + 2);
  const zip = options.format === "zip";
  let at = 0;
  for (let i = 0; i < n; i++) {
    const e = entries[i];
    starts[3 * i] = at;
    at += zip ? zipLocalHeaderLength(e) : tarHeaderLength(e);
    starts[3 * i + 1] = at;
    at += e.size;
    starts[3 * i + 2] = at;
    if (!zip) at += tarPadding(e.size);
  }
  const centralOffset = at;
  for (let i = 0; i < n; i++) {
    starts[3 * n + i] = at;
    if (zip) at += zipCentralHeaderLength(entries[i], starts[3 * i]);
  }
  const end = { entries: n, centralOffset, centralSize: at - centralOffset };
  starts[4 * n] = at;
  at += zip ? zipEndLength(end) : TAR_END.length;
  starts[4 * n + 1] = at;
  if (!Number.isSafeInteger(at)) throw new RangeError(`Bundle of ${at} bytes is too large`);
  return {
    starts,
    piece(k) {
      if (k >= 4 * n) return { kind: "bytes", bytes: () => zip ? encodeZipEnd(end) : TAR_END };
      if (k >= 3 * n) {
        const i = k - 3 * n;
        return { kind: "bytes", bytes: () => encodeZipCentralHeader(entries[i], starts[3 * i]) };
      }
      const e = entries[Math.floor(k / 3)];
      switch (k % 3) {
        case 0:
          return {
            kind: "bytes",
            bytes: () => zip ? encodeZipLocalHeader(e) : encodeTarHeader(e),
          };
        case 1:
          return dataPiece(e);
        default:
          return { kind: "zeros" };
      }
    },
  };
}

/**
 * Lays out the bundle of `files` (in the given order) and returns it; no file is read.
 *
 * @throws {TypeError} when a file's path is not a clean relative path, its sha256 is not
 * lowercase hex, two files collide, or `options.top` is not a single path segment.
 * @throws {RangeError} when a size, mtime or crc32 is out of range.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { planBundle } from "./plan.ts";
 * const file = {
 *   path: "1/2/3/foo.txt", size: 6, mtime: 1700000000.5, source: "/var/cart/abc/0",
 *   sha256: "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03", crc32: 0x363a3020,
 * };
 * const options = { top: "data", format: "tar" as const, manifest: false, mtime: 1700000100 };
 * const bundle = planBundle([file], options);
 * // TOP/, 1/, 1/2/, 1/2/3/, foo.txt header + 1 data block, 2 end blocks
 * assert.equal(bundle.size, 4096);
 * // The ETag is a hash of everything that makes the bytes: the same plan, the same ETag.
 * assert.equal(planBundle([file], options).etag, bundle.etag);
 * assert.notEqual(planBundle([file], { ...options, format: "zip" }).etag, bundle.etag);
 * assert.throws(() => planBundle([{ ...file, path: "../x" }], options), TypeError);
 * ```
 */
export function planBundle(files: FileList, options: BundleOptions): Bundle {
  const { top } = options;
  if (
    typeof top !== "string" || top.length === 0 || /[/\\\0]/.test(top) || top === "." ||
    top === ".."
  ) {
    throw new TypeError(`Bundle top directory "${top}" must be one non-empty path segment`);
  }
  if (options.format !== "tar" && options.format !== "zip") {
    throw new TypeError(`Bundle format "${options.format}" is not "tar" or "zip"`);
  }
  if (!Number.isFinite(options.mtime)) {
    throw new RangeError(`Bundle mtime ${options.mtime} is not finite`);
  }
  // An array is copied (the caller may change it later); other lists are read as they are.
  const list: FileList = Array.isArray(files) ? files.slice() : files;
  const segments = layOut(buildEntries(list, options), options);
  return makeBundle(segments, computeEtag(list, options));
}

/**
 * A bundle whose bytes are the tar (or zip) already written to disk at `path` (a cart posted
 * with `"bundle": true`), with the same ranged {@linkcode Bundle.stream}. `size` is the file's
 * expected length and `etag` is returned as given (normally the `etag` of the
 * {@linkcode planBundle} result whose stream was written to `path`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { bundleFromFile, planBundle } from "./plan.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/0`, "hello\n");
 * const files = [{
 *   path: "b.txt", size: 6, mtime: 1700000000, source: `${dir}/0`,
 *   sha256: "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03", crc32: 0x363a3020,
 * }];
 * const planned = planBundle(files, { top: "t", format: "tar", manifest: false, mtime: 1700000000 });
 * const tarPath = `${dir}/t.tar`;
 * await planned.stream().pipeTo((await Deno.create(tarPath)).writable);
 * const bundle = bundleFromFile(tarPath, planned.size, planned.etag);
 * // The same bytes as the plan, any range of them, read from the one file.
 * assert.deepEqual(await new Response(bundle.stream(1024, 1029)).text(), "hello\n");
 * const bytes = (stream: ReadableStream<Uint8Array>) => new Response(stream).bytes();
 * assert.deepEqual(await bytes(bundle.stream()), await bytes(planned.stream()));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function bundleFromFile(path: string, size: number, etag: string): Bundle {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new RangeError(`Bundle file size ${size} is not a non-negative safe integer`);
  }
  const piece: Piece = { kind: "file", source: path, name: "the bundle", size };
  return makeBundle({ starts: Float64Array.of(0, size), piece: () => piece }, etag);
}

function makeBundle(segments: Segments, etag: string): Bundle {
  const size = segments.starts[segments.starts.length - 1];
  return {
    size,
    etag,
    stream(start = 0, end = size - 1, signal, options) {
      if (
        !Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 ||
        start > end + 1 || end >= size
      ) {
        throw new RangeError(
          `Bundle range ${start}-${end} is outside the ${size} bytes of the bundle`,
        );
      }
      return streamRange(segments, start, end + 1, signal, options?.lend ?? false);
    },
  };
}

/** Index of the segment holding byte `pos` (the last non-empty one starting at or before it). */
function findSegment(starts: Float64Array, pos: number): number {
  let lo = 0;
  let hi = starts.length - 2;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (starts[mid] <= pos) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

function fileError(piece: { name: string; source: string }, what: string): Error {
  return new Error(`Cannot read ${JSON.stringify(piece.name)} from ${piece.source}: ${what}`);
}

/** Whole files up to this size are read with one call (and several at a time). */
const SMALL_FILE = 256 * 1024;
const PARALLEL_READS = 16;

/** Reads a whole small file into `view`, which is exactly its recorded size. */
async function readWhole(
  piece: { source: string; name: string; size: number },
  view: Uint8Array,
): Promise<void> {
  let data: Uint8Array;
  try {
    data = await Deno.readFile(piece.source);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) throw fileError(piece, "the file is missing");
    throw error;
  }
  if (data.length !== piece.size) {
    throw fileError(
      piece,
      `it has ${data.length} bytes but ${piece.size} were recorded${
        data.length < piece.size ? " (the file is shorter)" : ""
      }`,
    );
  }
  view.set(data);
  spentBuffers(data.length); // read for this copy only: thousands of them add up
}

function streamRange(
  segments: Segments,
  from: number,
  to: number,
  signal: AbortSignal | undefined,
  lend: boolean,
): ReadableStream<Uint8Array> {
  const { starts } = segments;
  /** Lent buffers: two of FIRST_CHUNK_SIZE, then two of CHUNK_SIZE, made when first needed. */
  const lent: (Uint8Array | undefined)[] = [];
  let turn = 0;
  /** A chunk of `length` bytes (at most `size`): zeroed when given, not when lent. */
  const chunkOf = (length: number, size: number): Uint8Array => {
    if (!lend) return new Uint8Array(length);
    // Two chunks in a row never share a buffer: the one the consumer holds stays whole
    // while the next is read ahead.
    const slot = (size === CHUNK_SIZE ? 2 : 0) + (turn++ & 1);
    const buffer = lent[slot] ??= new Uint8Array(size);
    return length === size ? buffer : buffer.subarray(0, length);
  };
  let pos = from;
  let k = findSegment(starts, from);
  let cachedK = -1;
  let cached: Uint8Array = TAR_END;
  let file: Deno.FsFile | null = null;
  let fileK = -1;
  let done = false;
  let onAbort: (() => void) | undefined;

  const cleanup = () => {
    if (!done && lent.length > 0) {
      lentBuffersDropped(lent.reduce((sum, buffer) => sum + (buffer?.length ?? 0), 0));
    }
    done = true;
    if (file) {
      try {
        file.close();
      } catch { /* already closed */ }
      file = null;
    }
    if (onAbort) signal?.removeEventListener("abort", onAbort);
  };

  /** Fills `view` with the bytes at `offset…` of file segment `k`. */
  const readFile = async (
    k: number,
    piece: { source: string; name: string; size: number },
    offset: number,
    view: Uint8Array,
  ) => {
    if (fileK !== k) {
      if (file) file.close();
      file = null;
      try {
        const opened = await Deno.open(piece.source, { read: true });
        if (done) {
          opened.close();
          return;
        }
        file = opened;
        fileK = k;
        const actual = (await file.stat()).size;
        if (actual !== piece.size) {
          throw fileError(
            piece,
            `it has ${actual} bytes but ${piece.size} were recorded${
              actual < piece.size ? " (the file is shorter)" : ""
            }`,
          );
        }
        if (offset > 0) await file.seek(offset, Deno.SeekMode.Start);
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) throw fileError(piece, "the file is missing");
        throw error;
      }
    }
    let filled = 0;
    while (filled < view.length) {
      const n = await file!.read(view.subarray(filled));
      if (done) return;
      if (n === null) {
        throw fileError(
          piece,
          `the file ended after ${offset + filled} of its ${piece.size} recorded bytes`,
        );
      }
      filled += n;
    }
    if (offset + filled === piece.size) {
      file!.close();
      file = null;
      fileK = -1;
    }
  };

  return new ReadableStream<Uint8Array>({
    start(controller) {
      if (from >= to) {
        controller.close();
        done = true;
        return;
      }
      if (signal) {
        signal.throwIfAborted();
        onAbort = () => {
          if (done) return;
          controller.error(signal.reason);
          cleanup();
        };
        signal.addEventListener("abort", onAbort, { once: true });
      }
    },
    async pull(controller) {
      if (done) return;
      const size = pos - from < RAMP_BYTES ? FIRST_CHUNK_SIZE : CHUNK_SIZE;
      const chunk = chunkOf(Math.min(size, to - pos), size);
      // Small files wholly inside this chunk are read concurrently, one call each; the others
      // (large, or cut by the chunk's edges) in order through one open handle.
      const inOrder: (() => Promise<void>)[] = [];
      const whole: (() => Promise<void>)[] = [];
      let filled = 0;
      try {
        while (filled < chunk.length) {
          while (starts[k + 1] <= pos) k++;
          const offset = pos - starts[k];
          const n = Math.min(starts[k + 1] - pos, chunk.length - filled);
          const piece = segments.piece(k);
          const view = chunk.subarray(filled, filled + n);
          if (piece.kind === "file") {
            if (offset === 0 && n === piece.size && n <= SMALL_FILE) {
              whole.push(() => readWhole(piece, view));
            } else {
              const segment = k;
              inOrder.push(() => readFile(segment, piece, offset, view));
            }
          } else if (piece.kind === "bytes") {
            if (cachedK !== k) {
              cached = piece.bytes();
              cachedK = k;
            }
            view.set(cached.subarray(offset, offset + n));
          } else if (lend) view.fill(0); // a given chunk is zero already
          filled += n;
          pos += n;
        }
        await Promise.all([
          (async () => {
            for (const task of inOrder) if (!done) await task();
          })(),
          ...Array.from({ length: Math.min(PARALLEL_READS, whole.length) }, async () => {
            for (let task = whole.pop(); task && !done; task = whole.pop()) await task();
          }),
        ]);
        if (done) return;
      } catch (error) {
        cleanup();
        throw error;
      }
      controller.enqueue(chunk);
      if (!lend) spentBuffers(chunk.length);
      if (pos >= to) {
        cleanup();
        controller.close();
      }
    },
    cancel() {
      cleanup();
    },
  });
}
