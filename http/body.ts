/**
 * Reading a request body within a size limit (the POST's cart document, `CARTD_MAX_BODY`):
 * a body larger than the limit is refused as soon as its declared length or its bytes so far
 * say so, and the memory held while reading is bounded by the limit too: each chunk is copied
 * into one growing buffer and let go, so a body sent as thousands of one-byte chunks (each a
 * view that would pin the whole buffer it was read into) holds no more than its bytes, and
 * the spent buffers are collected as they pile up.
 *
 * A body must also come within a time (`CARTD_BODY_TIMEOUT`): a client that sends it at a
 * trickle, or stops in the middle, has its body cancelled when the time is up
 * ({@linkcode BodyTimeoutError}, answered `408`), and what was read so far is let go.
 *
 * The text must be UTF-8: a body that is not is refused ({@linkcode BodyEncodingError}), so
 * that no replaced character ever changes an archive id or a path the client sent.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BodyEncodingError, readBody } from "./body.ts";
 * const post = (body: BodyInit) => new Request("http://cartd/x", { method: "POST", body });
 * assert.equal(await readBody(post("{}"), 10), "{}");
 * assert.equal(await readBody(post("x".repeat(11)), 10), null);
 * await assert.rejects(readBody(post(new Uint8Array([0x22, 0xff, 0x22])), 10), BodyEncodingError);
 * ```
 * @module
 */

import { droppedBuffer, spentBuffers } from "../lib/util/memory.ts";

/** The first buffer of a body of unknown length; it doubles as needed, up to the limit. */
const FIRST_BUFFER = 16 * 1024;

/** Thrown by {@linkcode readBody} for a body that is not UTF-8; the message says where. */
export class BodyEncodingError extends Error {
  /** Builds the error; `message` says what is wrong and what to send instead. */
  constructor(message: string) {
    super(message);
    this.name = "BodyEncodingError";
  }
}

/**
 * Thrown by {@linkcode readBody} when the body could not be read to its end: the client
 * closed the connection (or broke the framing) while sending it. Nothing is wrong on this side.
 */
export class BodyReadError extends Error {
  /** Builds the error; `cause` is what the server said. */
  constructor(cause: unknown) {
    super(
      "The request body could not be read to its end (the client closed the connection " +
        `while sending it?): ${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    );
    this.name = "BodyReadError";
  }
}

/**
 * Thrown by {@linkcode readBody} when the whole body did not come within its time limit: the
 * client sent it too slowly, or stopped in the middle. The rest of the body was cancelled.
 */
export class BodyTimeoutError extends Error {
  /** The limit that passed, in milliseconds. */
  readonly timeoutMs: number;
  /** Builds the error; `received` is how many bytes had come by then. */
  constructor(timeoutMs: number, received: number) {
    super(
      `The request body did not arrive within ${timeoutMs / 1000} s (CARTD_BODY_TIMEOUT; ` +
        `${received} bytes came): send the whole body at once, or ask the operator to raise it`,
    );
    this.name = "BodyTimeoutError";
    this.timeoutMs = timeoutMs;
  }
}

/**
 * The body of `request` as UTF-8 text, or null when it is longer than `limit` bytes. Throws
 * {@linkcode BodyEncodingError} when the bytes are not UTF-8 (a leading BOM is dropped),
 * {@linkcode BodyReadError} when the body stops before its end, and
 * {@linkcode BodyTimeoutError} when it has not all come `timeoutMs` after the reading began
 * (0: no time limit).
 */
export async function readBody(
  request: Request,
  limit: number,
  timeoutMs = 0,
): Promise<string | null> {
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > limit) return null;
  if (!request.body) return "";
  // A declared length is only a hint: the bytes that come are what count.
  let buffer = new Uint8Array(Math.min(limit, declared >= 0 ? declared : FIRST_BUFFER));
  let size = 0;
  const reader = new TimedBodyReader(request.body, timeoutMs);
  let whole = false;
  try {
    for (;;) {
      const chunk = await reader.read();
      if (chunk === null) break;
      if (size + chunk.length > limit) {
        await reader.cancel(); // cancels the rest of the body
        return null;
      }
      if (size + chunk.length > buffer.length) {
        const grown = new Uint8Array(
          Math.min(limit, Math.max(buffer.length * 2, size + chunk.length, FIRST_BUFFER)),
        );
        grown.set(buffer.subarray(0, size));
        buffer = grown;
      }
      buffer.set(chunk, size);
      size += chunk.length;
      // The chunk's whole buffer (often 64 KiB for one byte) is garbage now: collect it soon.
      spentBuffers(chunk.buffer.byteLength);
    }
    whole = true;
  } finally {
    reader.release();
    // A body cut off (too slow, too large, broken): what it had sent is garbage now.
    if (!whole) droppedBuffer(buffer.length);
  }
  return decodeUtf8(buffer.subarray(0, size));
}

/**
 * Reads a body's chunks one at a time, within `timeoutMs` of its making (0: no limit): when
 * the time is up the body is cancelled (which ends a read in flight) and the read throws
 * {@linkcode BodyTimeoutError}; a body that breaks off throws {@linkcode BodyReadError}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { TimedBodyReader } from "./body.ts";
 * const reader = new TimedBodyReader(new Response("abc").body!, 1_000);
 * assert.deepEqual(await reader.read(), new TextEncoder().encode("abc"));
 * assert.equal(await reader.read(), null); // the end
 * reader.release();
 * ```
 */
export class TimedBodyReader {
  /** Bytes read so far. */
  received = 0;
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #timeoutMs: number;
  readonly #timer: ReturnType<typeof setTimeout> | undefined;
  #timedOut = false;

  /** Starts the clock of `timeoutMs` on `body`, which this reader locks. */
  constructor(body: ReadableStream<Uint8Array>, timeoutMs: number) {
    this.#reader = body.getReader();
    this.#timeoutMs = timeoutMs;
    this.#timer = timeoutMs > 0
      ? setTimeout(() => {
        this.#timedOut = true;
        this.#reader.cancel(new Error("CARTD_BODY_TIMEOUT passed")).catch(() => {});
      }, timeoutMs)
      : undefined;
  }

  /** The next chunk, or null at the body's end. */
  async read(): Promise<Uint8Array | null> {
    let next: ReadableStreamReadResult<Uint8Array>;
    try {
      next = await this.#reader.read();
    } catch (e) {
      if (this.#timedOut) throw new BodyTimeoutError(this.#timeoutMs, this.received);
      throw new BodyReadError(e);
    }
    if (this.#timedOut) throw new BodyTimeoutError(this.#timeoutMs, this.received);
    if (next.done) return null;
    this.received += next.value.length;
    return next.value;
  }

  /** Cancels the rest of the body (a body over its size limit). */
  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }

  /** Stops the clock and unlocks the body; call it once reading is over, however it ended. */
  release(): void {
    clearTimeout(this.#timer);
    this.#reader.releaseLock();
  }
}

/** `bytes` as text, or a {@linkcode BodyEncodingError} naming the first byte that is not UTF-8. */
export function decodeUtf8(bytes: Uint8Array): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new BodyEncodingError(
      `The request body is not valid UTF-8 (from byte ${firstInvalid(bytes)}): ` +
        "send the cart document as UTF-8 JSON",
    );
  }
}

/** The offset of the first byte of `bytes` where UTF-8 decoding fails (slow; errors only). */
function firstInvalid(bytes: Uint8Array): number {
  // The longest prefix that decodes as the start of a stream (an unfinished sequence at its
  // end is no error) ends just before the first bad byte; such prefixes only get worse longer.
  let good = 0;
  let bad = bytes.length;
  while (bad - good > 1) {
    const mid = (good + bad) >>> 1;
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(0, mid), { stream: true });
      good = mid;
    } catch {
      bad = mid;
    }
  }
  // That prefix may end in the first bytes of the sequence that breaks: it starts there.
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(0, good));
    return good; // a whole prefix: the byte after it breaks
  } catch { /* unfinished at its end */ }
  let start = good;
  while (start > 0 && start > good - 3 && (bytes[start - 1] & 0xc0) === 0x80) start--;
  return start > 0 && bytes[start - 1] >= 0xc0 ? start - 1 : good;
}

/**
 * The text of a body read in `parts`, decoded part by part (the whole bytes and the text are
 * never both in memory; each part is let go once decoded); a `BodyEncodingError` naming the
 * first byte that is not UTF-8.
 */
export function decodeParts(parts: Uint8Array[]): string {
  const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });
  const pieces: string[] = [];
  let i = 0;
  try {
    for (; i < parts.length; i++) pieces.push(decoder.decode(parts[i], { stream: true }));
    pieces.push(decoder.decode());
  } catch {
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    return decodeUtf8(all); // throws, naming the first byte that is not UTF-8
  }
  return pieces.join("");
}
