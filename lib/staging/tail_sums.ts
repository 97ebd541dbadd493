/**
 * The sums of a file while it is being written: read behind its writer, in the same thread,
 * so that they are done (but for the last moment's bytes) when the last byte is written.
 *
 * Staging pipes a big file's body to disk in the runtime, which is the cheapest way to write
 * it, and, when a hash is asked for, needs that hash (and then the CRC-32 too, at no extra read)
 * of the same bytes; for a CRC-32 alone it reads nothing back (the worker measures it after the
 * cart is ready, lib/bundle/staged_files.ts). Reading the
 * file back after the pipe cost a pass that nothing overlapped (8 × 1 GiB: 3.3 s after the
 * last byte came), with an asynchronous read per MiB (each a trip to an I/O thread, which cost
 * three times the copy itself). {@linkcode TailSums} instead reads what was written since its
 * last call, a few milliseconds at a time ({@linkcode TailSums.catchUp}, called on a timer
 * while the pipe runs); the bytes come from the page cache, written moments before, with
 * synchronous reads while those are quick (lib/staging/quick_fs.ts: a slow volume gets
 * asynchronous ones). When the pipe ends, {@linkcode TailSums.finish} reads the rest, as the
 * pass after the pipe did.
 *
 * The writer must append in order (a pipe does): every byte below the file's size is final.
 *
 * @example
 * ```ts
 * import { createHash } from "node:crypto";
 * import { QuickFs } from "./quick_fs.ts";
 * import { TailSums } from "./tail_sums.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeTextFile(path, "hello");
 * const sha256 = createHash("sha256");
 * using tail = await TailSums.open(path, [sha256], new QuickFs());
 * await tail.finish();
 * console.log(tail.bytes, tail.crc32, sha256.digest("hex"));
 * await Deno.remove(path);
 * ```
 *
 * @module
 */
import type { Hash } from "node:crypto";
import { crc32 } from "node:zlib";
import type { QuickFs } from "./quick_fs.ts";

/** Bytes read at once. */
const READ_CHUNK = 1 << 20;

/** Reads a file behind its writer and sums what it read: CRC-32, and the hashes given. */
export class TailSums {
  readonly #file: Deno.FsFile;
  readonly #hashes: Hash[];
  readonly #fs: QuickFs;
  readonly #now: () => number;
  readonly #buf = new Uint8Array(READ_CHUNK);
  #crc = 0;
  #bytes = 0;
  #busy: Promise<boolean> | undefined;
  #failure: { error: unknown } | undefined;

  private constructor(file: Deno.FsFile, hashes: Hash[], fs: QuickFs, now: () => number) {
    this.#file = file;
    this.#hashes = hashes;
    this.#fs = fs;
    this.#now = now;
  }

  /**
   * Opens `path` (the file being written) for reading from its start.
   *
   * @param hashes updated with every byte read, in order, besides the CRC-32
   * @param fs chooses between synchronous and asynchronous reads
   * @param now the clock of the time budgets (tests replace it)
   */
  static async open(
    path: string,
    hashes: Hash[],
    fs: QuickFs,
    now: () => number = () => performance.now(),
  ): Promise<TailSums> {
    return new TailSums(await Deno.open(path, { read: true }), hashes, fs, now);
  }

  /** The bytes read and summed so far. */
  get bytes(): number {
    return this.#bytes;
  }

  /** The unsigned CRC-32 of the bytes read so far. */
  get crc32(): number {
    return this.#crc >>> 0;
  }

  /** The file's size now (what the writer has written), by the reading handle. */
  size(): Promise<number> {
    return this.#fs.call(
      () => this.#file.statSync().size,
      async () => (await this.#file.stat()).size,
    );
  }

  /**
   * Reads and sums what was written since the last call, for about `budgetMs` (a chunk at
   * least); resolves with true when it reached what is written (false: more is left). While
   * a call runs, another one waits for it and reads nothing. A read that fails is kept, and
   * thrown by {@linkcode finish}; this never rejects.
   */
  catchUp(budgetMs: number): Promise<boolean> {
    if (this.#busy) return this.#busy.then(() => false);
    if (this.#failure) return Promise.resolve(false);
    const running = this.#read(budgetMs).catch((error) => {
      this.#failure = { error };
      return false;
    }).finally(() => this.#busy = undefined);
    this.#busy = running;
    return running;
  }

  /**
   * Reads and sums the rest, once the writer is done, with asynchronous reads: between two,
   * the thread's other work (the other files' pipes) runs. With a CRC-32 alone the rest is
   * the last tick's bytes; with a SHA-256, whatever the ticks' budgets left.
   *
   * @throws what a read threw (here or in a {@linkcode catchUp} before); `signal.reason`
   *   when it aborts.
   */
  async finish(signal?: AbortSignal): Promise<void> {
    if (this.#busy) await this.#busy;
    this.#throwIfFailed();
    // A catch-up asked meanwhile (a tick of the caller's timer) waits for the end, reading
    // nothing: two reads at once on the handle would sum the chunks out of order.
    const done = this.#readToEnd(signal);
    this.#busy = done.then(() => true, () => false).finally(() => this.#busy = undefined);
    await done;
  }

  async #readToEnd(signal?: AbortSignal): Promise<void> {
    const buf = this.#buf;
    for (let n; (n = await this.#file.read(buf)) !== null;) {
      signal?.throwIfAborted();
      this.#sum(buf.subarray(0, n));
    }
    signal?.throwIfAborted();
  }

  #throwIfFailed(): void {
    if (this.#failure) throw this.#failure.error;
  }

  /** Closes the reading handle (a read still running then fails, and is not reported). */
  [Symbol.dispose](): void {
    try {
      this.#file.close();
    } catch { /* closed already */ }
  }

  async #read(budgetMs: number): Promise<boolean> {
    const start = this.#now();
    const buf = this.#buf;
    for (;;) {
      const n = await this.#fs.call(() => this.#file.readSync(buf), () => this.#file.read(buf));
      if (n === null || n === 0) return true;
      this.#sum(buf.subarray(0, n));
      if (this.#now() - start >= budgetMs) return false;
    }
  }

  #sum(data: Uint8Array): void {
    for (const hash of this.#hashes) hash.update(data);
    this.#crc = crc32(data, this.#crc);
    this.#bytes += data.byteLength;
  }
}
