/**
 * A cart's staged files in columns ({@linkcode StagedFiles}): what a bundle of the cart is
 * planned from, read from the store a page at a time and kept compact, for as long as the
 * cart is bundled or downloaded.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { BundleFile, FileList } from "./plan.ts";
import type { Cart, CartStore } from "../store/store.ts";
import { Volume } from "../volume/volume.ts";

/**
 * The columns of {@linkcode StagedFiles}: plain data, so that it crosses to a thread
 * (`postMessage`) as it is.
 */
export interface StagedColumns {
  /** VOLUME_PATH, where the files are staged (see {@linkcode Volume.filePath}). */
  volumeRoot: string;
  /** The cart's internal id. */
  cartId: string;
  /** How many rows are filled. */
  length: number;
  /** Rows of files that were not staged (only when loaded with `sizesOnly`). */
  unstaged: number[];
  /** Bundle paths. */
  paths: string[];
  /**
   * Lowercase hex SHA-256s; null for a staged file whose SHA-256 staging did not measure
   * (see {@linkcode StagedFiles.measureSha256}).
   */
  sha256: (string | null)[];
  /** Document positions (`fileids` indexes), which name the staged files. */
  idx: Uint32Array;
  /** Sizes in bytes. */
  sizes: Float64Array;
  /** Modification times, seconds since the epoch. */
  mtimes: Float64Array;
  /** CRC-32s. */
  crc32: Uint32Array;
}

/**
 * A cart's staged files, kept in columns: a 40,000-file cart takes about 5 MiB here instead of
 * some 20 MiB of row objects, and is read from the store a page at a time. Each
 * {@linkcode BundleFile} is made when the bundle asks for it (its `source` is worked out
 * then, not kept).
 *
 * @example
 * ```ts
 * const files = await StagedFiles.load(store, cart, volume);
 * const bundle = planBundle(files, options);
 * ```
 */
export class StagedFiles implements FileList {
  readonly #volume: Volume;

  /** A list over `columns` (as {@linkcode columns} gave them, here or in another thread). */
  constructor(readonly columns: StagedColumns) {
    this.#volume = new Volume(columns.volumeRoot);
  }

  /**
   * Reads the files of `cart` from `store`.
   *
   * @param sizesOnly take files that are not staged yet too, with what is known of them (size
   *   0 until the archive tells it), and list them in `unstaged`: enough to size the bundle
   *   before staging, or to see what is missing before bundling.
   * @throws {Error} naming the first file that is not staged (unless `sizesOnly`).
   */
  static async load(
    store: CartStore,
    cart: Cart,
    volume: Volume,
    sizesOnly = false,
  ): Promise<StagedFiles> {
    const n = cart.fileCount;
    const c: StagedColumns = {
      volumeRoot: volume.root,
      cartId: cart.id,
      length: 0,
      unstaged: [],
      paths: [],
      sha256: [],
      idx: new Uint32Array(n),
      sizes: new Float64Array(n),
      mtimes: new Float64Array(n),
      crc32: new Uint32Array(n),
    };
    for await (const f of store.eachFile(cart.id)) {
      // The SHA-256 may be missing: staging measures it only for a manifest.
      const staged = f.status === "staged" && f.size !== null && f.crc32 !== null;
      if (!staged && !sizesOnly) {
        throw new Error(`fileids[${f.idx}] (id ${f.archiveId}) is not staged`);
      }
      if (c.length === n) throw new Error(`cart ${cart.id} has more than its ${n} files`);
      const i = c.length++;
      if (!staged) c.unstaged.push(i);
      c.paths.push(f.path);
      c.sha256.push(staged ? f.sha256 : ZERO_SHA256);
      c.idx[i] = f.idx;
      c.sizes[i] = f.size ?? 0;
      c.mtimes[i] = f.mtime ?? 0;
      c.crc32[i] = f.crc32 ?? 0;
    }
    return new StagedFiles(c);
  }

  /** How many files. */
  get length(): number {
    return this.columns.length;
  }

  /**
   * The `i`-th file as the bundle sees it: a view on the columns, so that asking for it
   * (the bundle does, for every fact of every file) makes one small object and no strings.
   */
  at(i: number): BundleFile | undefined {
    if (i < 0 || i >= this.columns.length) return undefined;
    return new StagedFileView(this, i);
  }

  /** Where the `i`-th file is staged. */
  source(i: number): string {
    return this.#volume.filePath(this.columns.cartId, this.columns.idx[i]);
  }

  /** The document position (`fileids` index) of the `i`-th file. */
  idx(i: number): number {
    return this.columns.idx[i];
  }

  /** The size of the `i`-th file. */
  size(i: number): number {
    return this.columns.sizes[i];
  }

  /** How many staged files have no SHA-256 yet (a bundle with a manifest needs them). */
  get unmeasured(): number {
    let n = 0;
    for (let i = 0; i < this.columns.length; i++) if (this.columns.sha256[i] === null) n++;
    return n;
  }

  /**
   * Measures the SHA-256 of every staged file that has none (staging measures it only for a
   * cart that asked for a manifest), reading the staged bytes once each, and records them in
   * `store`: what a manifest asked for at download time needs before it is planned. A file
   * measured once is not read again by later downloads.
   */
  async measureSha256(store: CartStore, signal?: AbortSignal): Promise<void> {
    const measured: { idx: number; sha256: string }[] = [];
    const buf = new Uint8Array(1 << 20);
    for (let i = 0; i < this.columns.length; i++) {
      if (this.columns.sha256[i] !== null) continue;
      signal?.throwIfAborted();
      const hash = createHash("sha256");
      using file = await Deno.open(this.source(i), { read: true });
      for (let n; (n = await file.read(buf)) !== null;) hash.update(buf.subarray(0, n));
      const sha256 = hash.digest("hex");
      this.columns.sha256[i] = sha256;
      measured.push({ idx: this.columns.idx[i], sha256 });
      if (measured.length >= 256) await store.setSha256(this.columns.cartId, measured.splice(0));
    }
    await store.setSha256(this.columns.cartId, measured);
  }

  /** The sum of the files' sizes. */
  get bytes(): number {
    let sum = 0;
    for (let i = 0; i < this.columns.length; i++) sum += this.columns.sizes[i];
    return sum;
  }
}

const ZERO_SHA256 = "0".repeat(64);

/** One row of {@linkcode StagedFiles}; `source` is worked out when it is read. */
class StagedFileView implements BundleFile {
  constructor(readonly files: StagedFiles, readonly i: number) {}
  get path(): string {
    return this.files.columns.paths[this.i];
  }
  get size(): number {
    return this.files.columns.sizes[this.i];
  }
  get mtime(): number {
    return this.files.columns.mtimes[this.i];
  }
  get sha256(): string {
    const sha256 = this.files.columns.sha256[this.i];
    if (sha256 === null) {
      throw new Error(
        `fileids[${this.files.idx(this.i)}]: its SHA-256 was not measured at staging; ` +
          "StagedFiles.measureSha256 measures it before a bundle with a manifest is planned",
      );
    }
    return sha256;
  }
  get crc32(): number {
    return this.files.columns.crc32[this.i];
  }
  get source(): string {
    return this.files.source(this.i);
  }
}
