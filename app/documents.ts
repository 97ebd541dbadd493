/**
 * Big cart documents off the threads that answer requests (issue 15 item 4): a `POST /{uid}`
 * body of 1 MiB or more (by `Content-Length`, or read to be so) is read here, then checked
 * and stored by the document thread (app/document_thread.ts), one document at a time (the
 * others wait, read: a client that sends slowly holds up no other). At most
 * {@linkcode READ_AHEAD_DOCUMENTS} documents of `CARTD_MAX_BODY` are held at once (one
 * checked, one read ahead); more wait to be read, their clients' sending held back
 * meanwhile. Smaller documents are taken here, as before. Bodies are read into parts that the
 * thread has made ahead, or has parsed and handed back ({@linkcode SpareParts}). The thread
 * starts with the first big document and stops 5 s after the last, so an idle cartd
 * pays nothing for it.
 *
 * @module
 */
import type { Config } from "../lib/config/config.ts";
import type { Created } from "../lib/store/store.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import { TimedBodyReader } from "../http/body.ts";
import { droppedBuffer, holdBuffers, spentBuffers } from "../lib/util/memory.ts";
import { ByteBudget } from "../lib/util/byte_budget.ts";
import { acceptCart, acceptDocument, type AcceptedCart, type Submitter } from "../http/routes.ts";
import type { CartStore } from "../lib/store/store.ts";

/** What the main thread tells the document thread. */
export type ToDocumentThread =
  | {
    type: "start";
    config: Config;
    /** Parts asked for ahead of the bodies that need them ({@linkcode SpareParts.wanted}). */
    wanted: Int32Array<SharedArrayBuffer>;
  }
  /** Make the parts asked for, if any are still wanted. */
  | { type: "make" }
  | {
    type: "accept";
    id: number;
    uid: string;
    who: Submitter;
    parts: Uint8Array<ArrayBuffer>[];
  }
  | { type: "stop" };

/** What the document thread answers. */
export type FromDocumentThread =
  | { type: "ready" }
  | { type: "failed"; message: string }
  | { type: "closed" }
  /** A part to read a body into: made ahead, or a document's, parsed (the main thread's again). */
  | { type: "spare"; buffer: ArrayBuffer }
  | { type: "accepted"; id: number; accepted: { uid: string; files: number; created: Created } }
  | {
    type: "refused";
    id: number;
    status: number;
    headers: [string, string][];
    body: Uint8Array<ArrayBuffer>;
  };

/** Documents at least this long (by `Content-Length`) go to the document thread. */
export const BIG_DOCUMENT_BYTES = 1 << 20;

/** How many documents of `CARTD_MAX_BODY` may be held at once (read, waiting or checked). */
export const READ_AHEAD_DOCUMENTS = 2;

/**
 * How long the document thread stays after its last document: its memory (a 60 MiB document
 * leaves a few hundred MiB of heap behind) goes with it.
 */
const IDLE_MS = 5_000;

/** The module of the thread, beside this one (`.js` inside the bundle). */
const THREAD_MODULE = new URL(
  import.meta.url.endsWith(".ts") ? "./document_thread.ts" : "./document_thread.js",
  import.meta.url,
);

/** Big cart documents, taken one at a time by a thread of their own. */
export class Documents {
  #worker: Worker | null = null;
  #ready: Promise<void> | null = null;
  #waiting = new Map<number, (message: FromDocumentThread) => void>();
  #nextId = 1;
  #turn: Promise<void> = Promise.resolve();
  #idle: ReturnType<typeof setTimeout> | undefined;
  #busy = 0;
  /**
   * The bytes of big documents held at once, read, waiting or being checked: two of the
   * longest allowed (one checked, one read ahead), so that four 64 MiB documents POSTed at
   * once cost about two's bytes, not four's; the others wait before they are read.
   */
  readonly #room: ByteBudget;
  /** Parts the thread has made ahead or parsed and handed back, to read bodies into. */
  readonly #spares: SpareParts;

  /** Documents for the cartd whose settings are `config` and whose store is `store`. */
  constructor(readonly config: Config, readonly store: CartStore) {
    this.#room = new ByteBudget(READ_AHEAD_DOCUMENTS * config.limits.maxBodyBytes);
    // As many as the documents held at once are read into: more would never all be taken.
    this.#spares = new SpareParts(
      READ_AHEAD_DOCUMENTS * Math.ceil(config.limits.maxBodyBytes / PART_BYTES),
    );
  }

  /** How many parts are ready to read a big body into (from the thread). */
  get spareParts(): number {
    return this.#spares.count;
  }

  /**
   * The answer to `POST /{uid}` of `request` by `who`, or the cart it stored (for the app to
   * finish): as {@linkcode acceptCart} answers, whichever thread reads it (owners and quotas
   * included; a document with a webhook is refused, as webhooks are checked by the app).
   */
  async accept(
    request: Request,
    uid: string,
    who: Submitter = { owner: "" },
  ): Promise<Response | AcceptedCart> {
    const deps = { store: this.store, config: this.config };
    const declared = Number(request.headers.get("content-length") ?? NaN);
    if (declared < BIG_DOCUMENT_BYTES) return await acceptCart(deps, request, uid, who);
    this.#busy++;
    clearTimeout(this.#idle);
    const limit = this.config.limits.maxBodyBytes;
    // Room for its bytes first (of unknown length: room for the longest allowed); a declared
    // length over the limit reads nothing and needs none.
    const giveBack = declared > limit ? () => {} : await this.#room.take(declared || limit);
    // Of a declared length: its parts made ahead by the thread, so that their pages are mapped
    // in there, not here while the body is copied into them.
    const asked = declared <= limit ? this.#spares.ask(Math.ceil(declared / PART_BYTES)) : 0;
    if (asked) {
      // A thread that cannot start fails the document where it is sent (#send).
      this.#start().then((worker) => worker.postMessage({ type: "make" } as ToDocumentThread))
        .catch(() => {});
    }
    let taken = 0;
    const tally = { spare: 0 };
    const spares = {
      take: () => {
        taken++;
        return this.#spares.take(tally);
      },
    };
    // Its parts, live until they are handed over (or dropped): not garbage for the heap's pacing.
    const held = new HeldParts();
    try {
      // Read first, then wait for the turn: a client that sends slowly holds up no other
      // (besides those waiting for room).
      const parts = declared > limit
        ? null
        : await readParts(request, limit, this.config.api.bodyTimeoutMs, held, spares);
      this.#spares.unask(asked - taken); // a body shorter than it said, or cut off
      log.debug("big document read", { uid, parts: taken, spareParts: tally.spare });
      if (parts === null) {
        // Over CARTD_MAX_BODY: the same 413 as ever (a declared length over it reads nothing).
        const over = new Request("http://cartd/", {
          method: "POST",
          headers: { "content-length": String(limit + 1) },
        });
        return await acceptCart(deps, over, uid, who);
      }
      const size = parts.reduce((n, p) => n + p.length, 0);
      if (size < BIG_DOCUMENT_BYTES) {
        // Of unknown length, and small after all: taken here, as before.
        return await acceptDocument(deps, uid, parts, who);
      }
      const previous = this.#turn;
      const done = Promise.withResolvers<void>();
      this.#turn = done.promise;
      try {
        await previous;
        return await this.#send(uid, who, parts, held);
      } finally {
        done.resolve();
      }
    } finally {
      held.letGo();
      giveBack();
      if (--this.#busy === 0) {
        this.#idle = setTimeout(() => this.close(), IDLE_MS);
        Deno.unrefTimer(this.#idle);
      }
    }
  }

  async #send(
    uid: string,
    who: Submitter,
    parts: Uint8Array<ArrayBuffer>[],
    held: HeldParts,
  ): Promise<Response | AcceptedCart> {
    const worker = await this.#start();
    const id = this.#nextId++;
    const answer = new Promise<FromDocumentThread>((resolve) => this.#waiting.set(id, resolve));
    // Handed over, not copied: the document's bytes are in memory once.
    const buffers = parts.map((p) => p.buffer);
    worker.postMessage({ type: "accept", id, uid, who, parts } as ToDocumentThread, buffers);
    // Gone from this thread's buffers: told now, or pacing would see them come back as growth.
    held.letGo();
    const message = await answer;
    if (message.type === "accepted") return message.accepted;
    if (message.type === "refused") {
      return new Response(message.body.length ? message.body : null, {
        status: message.status,
        headers: message.headers,
      });
    }
    throw new Error(
      `the document thread failed: ${message.type === "failed" ? message.message : "?"}`,
    );
  }

  #start(): Promise<Worker> {
    if (this.#worker && this.#ready) return this.#ready.then(() => this.#worker!);
    log.info("starting the document thread for big cart documents", {
      stopsAfterIdleSeconds: IDLE_MS / 1000,
    });
    const worker = new Worker(THREAD_MODULE, { type: "module", name: "cartd-documents" });
    this.#worker = worker;
    const ready = Promise.withResolvers<void>();
    this.#ready = ready.promise;
    worker.onmessage = (event: MessageEvent<FromDocumentThread>) => {
      const message = event.data;
      if (message.type === "ready") return ready.resolve();
      if (message.type === "failed") return ready.reject(new Error(message.message));
      // Its database is closed: ended here at once. Left to end by itself, it sometimes kept
      // its heap (the last document's garbage, ~130 MiB) until the 5 s backstop below.
      if (message.type === "closed") return worker.terminate();
      if (message.type === "spare") {
        // From the thread that is running now only: those of one stopped are let go.
        return this.#worker === worker ? this.#spares.give(message.buffer) : undefined;
      }
      const waiting = this.#waiting.get(message.id);
      this.#waiting.delete(message.id);
      waiting?.(message);
    };
    worker.onerror = (event) => {
      event.preventDefault();
      log.error("the document thread failed", { error: event.message });
      this.#spares.clear(); // none will come from it
      ready.reject(new Error(event.message));
      for (const waiting of this.#waiting.values()) {
        waiting({ type: "failed", message: event.message });
      }
      this.#waiting.clear();
      this.#worker = null;
      this.#ready = null;
      worker.terminate();
    };
    worker.postMessage(
      { type: "start", config: this.config, wanted: this.#spares.wanted } as ToDocumentThread,
    );
    return ready.promise.then(() => worker);
  }

  /** Stops the thread (a later big document starts it again). */
  close(): void {
    clearTimeout(this.#idle);
    this.#spares.clear(); // given back to the system with the thread's memory
    const worker = this.#worker;
    this.#worker = null;
    this.#ready = null;
    if (!worker) return;
    try {
      worker.postMessage({ type: "stop" } as ToDocumentThread);
    } catch (e) {
      log.debug("the document thread was gone", { error: errorMessage(e) });
    }
    // Ended for sure a little later, should it not close itself.
    Deno.unrefTimer(setTimeout(() => worker.terminate(), 5_000));
  }
}

/** The size of the parts a big body is read into: above the allocator's mmap threshold. */
export const PART_BYTES = 4 << 20;

/**
 * Takes one of the parts counted in `wanted` (shared by the main and the document thread):
 * true when there was one, which the caller is then to make. Each is taken once, by
 * whichever thread comes first.
 */
export function claimWanted(wanted: Int32Array<SharedArrayBuffer>): boolean {
  for (;;) {
    const left = Atomics.load(wanted, 0);
    if (left <= 0) return false;
    if (Atomics.compareExchange(wanted, 0, left, left - 1) === left) return true;
  }
}

/**
 * How long a body being read waits for a part the document thread is making before it makes
 * one itself: reading a body is then slower by at most this for each 4 MiB (while the thread
 * starts, the first 0.15 s), and the main thread is idle meanwhile, not mapping pages in.
 */
const PART_WAIT_MS = 20;

/**
 * Parts to read big bodies into whose pages are mapped already: made ahead by the document
 * thread, or parsed by it and handed back. A new part's pages are mapped in by the kernel one
 * at a time as the body is copied into it: on a 2-core machine that was most of the main
 * thread's time while big bodies came in (about 6 µs for each 4 KiB page, 0.1 s for every 60
 * MiB read), and what kept `GET /` waiting up to 165 ms meanwhile. Spare parts are held (not
 * garbage for the heap's pacing) until taken; {@linkcode SpareParts.clear} lets go of them.
 */
class SpareParts {
  #parts: { part: Uint8Array<ArrayBuffer>; letGo: () => void }[] = [];
  /**
   * How many parts are asked of the thread and not yet made. Shared with it: a body that finds
   * no spare part takes one of these and makes the part itself (a new one), so that no part
   * is made twice ({@linkcode claimWanted}).
   */
  readonly wanted = new Int32Array(new SharedArrayBuffer(4));
  /** Bodies waiting for a part that the thread is making. */
  #waiting: ((part: Uint8Array<ArrayBuffer> | null) => void)[] = [];

  /** Keeps at most `max` parts; more handed back are let go. */
  constructor(readonly max: number) {}

  /** How many are ready. */
  get count(): number {
    return this.#parts.length;
  }

  /**
   * Asks for the parts of a body that needs `parts`, those ready counted first: how many it
   * asked for (for {@linkcode SpareParts.unask}).
   */
  ask(parts: number): number {
    const more = Math.max(0, parts - this.#parts.length);
    if (more) Atomics.add(this.wanted, 0, more);
    return more;
  }

  /** Takes back up to `parts` of those asked for and not made yet. */
  unask(parts: number): void {
    for (let i = 0; i < parts && claimWanted(this.wanted); i++);
  }

  /**
   * A spare part; when there is none but the thread is making some, the next it hands over,
   * if it comes within {@linkcode PART_WAIT_MS}; else a new one. The caller's to hold.
   */
  async take(tally: { spare: number }): Promise<Uint8Array<ArrayBuffer>> {
    const spare = this.#parts.pop();
    if (spare) {
      tally.spare++;
      spare.letGo();
      return spare.part;
    }
    if (Atomics.load(this.wanted, 0) > 0) {
      const made = await new Promise<Uint8Array<ArrayBuffer> | null>((resolve) => {
        const waiter = (part: Uint8Array<ArrayBuffer> | null) => {
          clearTimeout(timer);
          resolve(part);
        };
        const timer = setTimeout(() => {
          this.#waiting.splice(this.#waiting.indexOf(waiter), 1);
          resolve(null);
        }, PART_WAIT_MS);
        this.#waiting.push(waiter);
      });
      if (made) {
        tally.spare++;
        return made;
      }
    }
    claimWanted(this.wanted); // made here after all: not by the thread as well
    return new Uint8Array(PART_BYTES);
  }

  /** A part handed back (any other buffer, or one over `max`, is garbage now). */
  give(buffer: ArrayBuffer): void {
    if (buffer.byteLength !== PART_BYTES) return droppedBuffer(buffer.byteLength);
    const waiter = this.#waiting.shift();
    if (waiter) return waiter(new Uint8Array(buffer));
    if (this.#parts.length >= this.max) return droppedBuffer(buffer.byteLength);
    this.#parts.push({ part: new Uint8Array(buffer), letGo: holdBuffers(PART_BYTES) });
  }

  /** Lets go of them all: garbage, collected at once (and none are asked for any more). */
  clear(): void {
    Atomics.store(this.wanted, 0, 0);
    for (const waiter of this.#waiting.splice(0)) waiter(null);
    const parts = this.#parts.splice(0);
    for (const spare of parts) spare.letGo();
    if (parts.length) droppedBuffer(parts.length * PART_BYTES);
  }
}

/** The parts of one body being read, held on purpose ({@linkcode holdBuffers}). */
class HeldParts {
  #letGo: (() => void)[] = [];
  /** One more part of `bytes`. */
  add(bytes: number): void {
    this.#letGo.push(holdBuffers(bytes));
  }
  /** The parts were handed over or dropped. */
  letGo(): void {
    for (const letGo of this.#letGo.splice(0)) letGo();
  }
}

/**
 * The body of `request` in parts of {@linkcode PART_BYTES} (each its own whole buffer, so that
 * it can be handed to another thread, and told to `held`), taken from `spares`; null when it
 * is longer than `limit`. The last part is a view of the bytes read into it: a spare part may
 * hold an earlier body's bytes after them.
 */
async function readParts(
  request: Request,
  limit: number,
  timeoutMs: number,
  held: HeldParts,
  spares: { take(): Promise<Uint8Array<ArrayBuffer>> },
): Promise<Uint8Array<ArrayBuffer>[] | null> {
  if (!request.body) return [];
  const parts: Uint8Array<ArrayBuffer>[] = [];
  let current: Uint8Array<ArrayBuffer> | null = null;
  let used = 0;
  let size = 0;
  const reader = new TimedBodyReader(request.body, timeoutMs);
  let whole = false;
  try {
    const read = await readAll();
    whole = read !== null;
    return read;
  } finally {
    reader.release();
    if (!whole) {
      // Cut off (too slow, too large, broken): what it had sent is garbage now; collect it.
      parts.length = 0;
      current = null;
      held.letGo();
      droppedBuffer(size);
    }
  }

  async function readAll(): Promise<Uint8Array<ArrayBuffer>[] | null> {
    for (;;) {
      const value = await reader.read();
      if (value === null) break;
      size += value.length;
      if (size > limit) {
        await reader.cancel();
        return null;
      }
      // Copied into parts of PART_BYTES: each its own buffer (to hand over to the thread), and
      // big enough to be mapped on its own, so that a body cut off gives its memory back to the
      // system (small chunks would stay in the allocator's heap). The chunk is garbage now.
      for (let at = 0; at < value.length;) {
        if (!current) {
          current = await spares.take();
          held.add(PART_BYTES);
        }
        const n = Math.min(value.length - at, PART_BYTES - used);
        current.set(value.subarray(at, at + n), used);
        at += n;
        used += n;
        if (used === PART_BYTES) {
          parts.push(current);
          current = null;
          used = 0;
        }
      }
      spentBuffers(value.buffer.byteLength);
    }
    if (current) parts.push(current.subarray(0, used));
    current = null;
    return parts;
  }
}
