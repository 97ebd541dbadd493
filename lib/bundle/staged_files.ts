/**
 * A cart's staged files in columns ({@linkcode StagedFiles}): what a bundle of the cart is
 * planned from, read from the store a page at a time and kept compact, for as long as the
 * cart is bundled or downloaded.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import type { BundleFile, FileList } from "./plan.ts";
import type { Cart, CartStore } from "../store/store.ts";
import { Volume } from "../volume/volume.ts";
import { forEachLimited } from "../util/limit.ts";

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
   * (see {@linkcode StagedFiles.measure}).
   */
  sha256: (string | null)[];
  /** Document positions (`fileids` indexes), which name the staged files. */
  idx: Uint32Array;
  /** Sizes in bytes. */
  sizes: Float64Array;
  /** Modification times, seconds since the epoch. */
  mtimes: Float64Array;
  /** CRC-32s; {@linkcode UNMEASURED} for a staged file whose CRC-32 staging did not measure. */
  crc32: Float64Array;
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
      crc32: new Float64Array(n),
    };
    for await (const f of store.eachFile(cart.id)) {
      // The SHA-256 may be missing: staging measures it only for a manifest.
      // …and so may the CRC-32: a big file piped to disk is not read back only for it.
      const staged = f.status === "staged" && f.size !== null;
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
      c.crc32[i] = staged ? f.crc32 ?? UNMEASURED : 0;
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

  /** How many staged files have no CRC-32 yet (a zip needs them). */
  get unmeasuredCrc32(): number {
    let n = 0;
    for (let i = 0; i < this.columns.length; i++) if (this.columns.crc32[i] === UNMEASURED) n++;
    return n;
  }

  /**
   * Measures what `need` names and staging did not (it measures a SHA-256 only for a cart
   * that asked for a manifest, and no CRC-32 for a big file it piped to disk), reading each
   * such staged file once, {@linkcode MEASURE_IN_FLIGHT} files at a time, and records the sums
   * in `store`: what a bundle with a manifest, or a zip, needs before it is planned. A file
   * measured once is not read again. In one process, a second call for the same cart while
   * one runs waits for it (the pass after ready and a zip asked meanwhile read the files once),
   * then measures whatever is still missing.
   *
   * @example
   * ```ts ignore
   * const files = await StagedFiles.load(store, cart, volume);
   * if (files.unmeasuredCrc32) await files.measure(store, { crc32: true });
   * ```
   */
  async measure(
    store: CartStore,
    need: { sha256?: boolean; crc32?: boolean },
    signal?: AbortSignal,
  ): Promise<void> {
    const c = this.columns;
    for (let running; (running = measuring.get(c.cartId));) {
      await running.then(() => {}, () => {});
      signal?.throwIfAborted();
      // What the other call recorded: read back, so that it is not measured twice.
      await this.#adoptRecorded(store);
    }
    const pass = this.#measure(store, need, signal);
    measuring.set(c.cartId, pass);
    try {
      await pass;
    } finally {
      if (measuring.get(c.cartId) === pass) measuring.delete(c.cartId);
    }
  }

  /** Takes the sums `store` has for the files that have none here. */
  async #adoptRecorded(store: CartStore): Promise<void> {
    const c = this.columns;
    const row = new Map<number, number>();
    for (let i = 0; i < c.length; i++) {
      if (c.sha256[i] === null || c.crc32[i] === UNMEASURED) row.set(c.idx[i], i);
    }
    if (!row.size) return;
    for await (const f of store.eachFile(c.cartId)) {
      const i = row.get(f.idx);
      if (i === undefined) continue;
      if (c.sha256[i] === null) c.sha256[i] = f.sha256;
      if (c.crc32[i] === UNMEASURED && f.crc32 !== null) c.crc32[i] = f.crc32;
    }
  }

  async #measure(
    store: CartStore,
    need: { sha256?: boolean; crc32?: boolean },
    signal?: AbortSignal,
  ): Promise<void> {
    const c = this.columns;
    const shas: { idx: number; sha256: string }[] = [];
    const crcs: { idx: number; crc32: number }[] = [];
    // Records are written one batch at a time, whichever lane fills it.
    let recording: Promise<void> = Promise.resolve();
    const record = (least: number) => {
      const sha = shas.length >= least ? shas.splice(0) : [];
      const crc = crcs.length >= least ? crcs.splice(0) : [];
      recording = recording.then(async () => {
        if (sha.length) await store.setSha256(c.cartId, sha);
        if (crc.length) await store.setCrc32(c.cartId, crc);
      });
      return recording;
    };
    const wanted = function* () {
      for (let i = 0; i < c.length; i++) {
        const sha256 = need.sha256 === true && c.sha256[i] === null;
        const crc = need.crc32 === true && c.crc32[i] === UNMEASURED;
        if (sha256 || crc) yield { i, sha256, crc };
      }
    };
    const buffers: Uint8Array[] = [];
    await forEachLimited(wanted(), MEASURE_IN_FLIGHT, async ({ i, sha256, crc }, lane) => {
      const buf = buffers.pop() ?? new Uint8Array(1 << 20);
      try {
        const hash = sha256 ? createHash("sha256") : undefined;
        let sum = 0;
        using file = await Deno.open(this.source(i), { read: true });
        for (let n; (n = await file.read(buf)) !== null;) {
          lane.throwIfAborted();
          const bytes = buf.subarray(0, n);
          hash?.update(bytes);
          if (crc) sum = crc32(bytes, sum);
        }
        if (hash) shas.push({ idx: c.idx[i], sha256: c.sha256[i] = hash.digest("hex") });
        if (crc) crcs.push({ idx: c.idx[i], crc32: c.crc32[i] = sum >>> 0 });
        await record(256);
      } finally {
        buffers.push(buf);
      }
    }, signal);
    await record(1);
  }

  /** The sum of the files' sizes. */
  get bytes(): number {
    let sum = 0;
    for (let i = 0; i < this.columns.length; i++) sum += this.columns.sizes[i];
    return sum;
  }
}

const ZERO_SHA256 = "0".repeat(64);

/** How many files {@linkcode StagedFiles.measure} reads at once. */
export const MEASURE_IN_FLIGHT = 4;

/** The measuring under way in this process, by cart id. */
const measuring = new Map<string, Promise<void>>();

/** The CRC-32 column's mark of a CRC-32 not measured (no CRC-32 is negative). */
export const UNMEASURED: number = -1;

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
          "StagedFiles.measure measures it before a bundle with a manifest is planned",
      );
    }
    return sha256;
  }
  get crc32(): number {
    const crc32 = this.files.columns.crc32[this.i];
    if (crc32 === UNMEASURED) {
      throw new Error(
        `fileids[${this.files.idx(this.i)}]: its CRC-32 was not measured at staging; ` +
          "StagedFiles.measure measures it before a zip is planned",
      );
    }
    return crc32;
  }
  get source(): string {
    return this.files.source(this.i);
  }
}
