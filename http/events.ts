/**
 * `GET /{uid}/events`: a cart's progress pushed as a server-sent event stream
 * (`text/event-stream`, for `curl -N` and a browser's `EventSource`), until the cart is ready,
 * failed or gone (issue 16 item 2).
 *
 * The events come from the database, not from this process's memory, so that any API process
 * serves a stream of any cart, whichever worker stages it: one {@linkcode EventHub} per API
 * reads, once every {@linkcode POLL_MS}, the rows of every cart with an open stream in one
 * query ({@linkcode CartStore.liveCartsById}), and writes to each stream what changed:
 *
 * - `state`: the cart's state changed (and the first event of a stream). Its data is the JSON
 *   of `GET /{uid}/status` (./status.ts).
 * - `progress`: files or bytes staged or failed, or the total size, changed; the same data.
 * - `deleted`: the cart was deleted, replaced, purged or expired; data `{uid, message}`.
 *
 * The stream ends after the `state` event of `ready` or `error`, and after `deleted`. Each
 * event's `id` tells the cart and the figures it shows; a client that reconnects with it in
 * `Last-Event-ID` (as `EventSource` does by itself) gets only what changed since, and `204` when
 * it has seen the end already (which makes an `EventSource` stop reconnecting). An idle stream
 * gets a comment line every `CARTD_EVENTS_KEEPALIVE` seconds: that is when a client that went
 * away is noticed (the HTTP server tells it on a write only), and its stream let go.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { isFinal } from "../lib/cart/state.ts";
import type { Cart } from "../lib/store/store.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import { openEventStream } from "../lib/util/metrics.ts";
import { json } from "./json.ts";
import { cartStatusJson, type StatusDeps } from "./status.ts";

/** How often the hub reads the carts of its open streams (ms): progress comes at most so often. */
export const POLL_MS = 1000;
/** What a stream asks its client to wait before reconnecting (ms): the `retry` field. */
export const RETRY_MS = 2000;
/** Bytes a stream may have queued for a client that does not read before it is dropped. */
export const MAX_QUEUED_BYTES = 256 * 1024;
/** The media type of an event stream. */
export const EVENT_STREAM_TYPE = "text/event-stream";

const utf8 = new TextEncoder();
/** The answer of a route for a cart that is not live. */
const NO_CART = "The cart does not exist or has already been deleted";

/** What {@linkcode EventHub} needs. */
export interface EventDeps extends StatusDeps {
  /** Time (ms) between the keep-alive comments of a stream (`CARTD_EVENTS_KEEPALIVE`). */
  keepAliveMs: number;
  /** Time (ms) between two reads of the carts (default {@linkcode POLL_MS}). */
  pollMs?: number;
  /**
   * The live cart `uid` as the request's principal sees it (http/access.ts `findCart`); by
   * default the store's cart of that uid (access off).
   */
  find?: (request: Request, uid: string) => Promise<Cart | null>;
}

/** The figures an event shows, from which its id is made and the next event is decided. */
interface Figures {
  state: string;
  staged: number;
  errors: number;
  bytes: number;
  total: number | null;
}

/** The figures of `cart`. */
function figuresOf(cart: Cart): Figures {
  return {
    state: cart.status,
    staged: cart.stagedFiles,
    errors: cart.errorFiles,
    bytes: cart.stagedBytes,
    total: cart.totalBytes,
  };
}

/**
 * A short, stable token of a cart (its internal id is not shown): ids of another cart under the
 * same uid (a re-POST) never pass for this one's.
 */
function generationOf(cart: Cart): string {
  return createHash("sha256").update(cart.id).digest("hex").slice(0, 12);
}

/** The event id of `figures` of the cart `generation`: `gen.state.staged.errors.bytes.total`. */
function eventId(generation: string, f: Figures): string {
  return [generation, f.state, f.staged, f.errors, f.bytes, f.total ?? ""].join(".");
}

/** The figures a `Last-Event-ID` names, when it names the cart `generation`; else null. */
function parseEventId(id: string | null, generation: string): Figures | null {
  const parts = id?.trim().split(".");
  if (!parts || parts.length !== 6 || parts[0] !== generation) return null;
  const [, state, staged, errors, bytes, total] = parts;
  const n = (text: string) => /^\d{1,16}$/.test(text) ? Number(text) : NaN;
  const figures = {
    state,
    staged: n(staged),
    errors: n(errors),
    bytes: n(bytes),
    total: total === "" ? null : n(total),
  };
  if ([figures.staged, figures.errors, figures.bytes, figures.total ?? 0].some(isNaN)) return null;
  return figures;
}

/** Whether two figures are the same. */
function same(a: Figures | null, b: Figures): boolean {
  return a !== null && a.state === b.state && a.staged === b.staged && a.errors === b.errors &&
    a.bytes === b.bytes && a.total === b.total;
}

/** One event in the stream format: `id`, `event` and a one-line `data`. */
function eventText(id: string | null, event: string, data: unknown): Uint8Array {
  return utf8.encode(
    `${id === null ? "" : `id: ${id}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`,
  );
}

const KEEPALIVE = utf8.encode(":\n\n");

/** One open stream. */
interface Stream {
  /** The cart's uid (for the `deleted` event and the log). */
  uid: string;
  /** The cart's token in event ids. */
  generation: string;
  /** The figures of the last event the client has (null: none yet). */
  last: Figures | null;
  /** Writes to the client; false when the stream is over (the client went or lags too far). */
  write(bytes: Uint8Array): boolean;
  /** Ends the stream. */
  end(): void;
}

/**
 * The event streams of one API (one per `cartRoutes` app): their carts read from the database
 * once per poll for all of them, and the streams let go at {@linkcode EventHub.close}.
 */
export class EventHub {
  /** The open streams, by cart id. */
  readonly #streams = new Map<string, Set<Stream>>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #lastKeepAlive = Date.now();
  #closed = false;
  /** Whether the last poll failed (a failure is logged once per burst). */
  #failing = false;

  /** A hub that reads carts through `deps.store`. */
  constructor(readonly deps: EventDeps) {}

  /** The streams open now. */
  get size(): number {
    let n = 0;
    for (const streams of this.#streams.values()) n += streams.size;
    return n;
  }

  /**
   * The answer to `GET /{uid}/events`: `404` JSON for a cart that is not live, `204` when
   * `Last-Event-ID` shows the client has seen the cart's end, `503` once the hub is closed, else
   * the stream (see the module doc).
   */
  async open(request: Request, uid: string): Promise<Response> {
    if (this.#closed) {
      return json({ message: "cartd is shutting down; connect again shortly" }, 503, {
        "Retry-After": "1",
      });
    }
    const find = this.deps.find ?? ((_: Request, uid: string) => this.deps.store.liveCart(uid));
    const cart = await find(request, uid);
    if (!cart) return json({ message: NO_CART }, 404);
    const generation = generationOf(cart);
    const last = parseEventId(request.headers.get("last-event-id"), generation);
    const now = figuresOf(cart);
    if (isFinal(cart.status) && same(last, now)) return new Response(null, { status: 204 });
    const headers = {
      "Content-Type": EVENT_STREAM_TYPE,
      "Cache-Control": "no-store",
      "X-Accel-Buffering": "no",
    };
    if (request.method === "HEAD") return new Response(null, { status: 200, headers });

    let controller!: ReadableStreamDefaultController<Uint8Array>;
    let over = false;
    const closeMetric = openEventStream();
    const stream: Stream = {
      uid,
      generation,
      last,
      write: (bytes) => {
        if (over) return false;
        try {
          controller.enqueue(bytes);
        } catch {
          stream.end(); // the client went away: the server cancelled the body meanwhile
          return false;
        }
        if ((controller.desiredSize ?? 0) < -MAX_QUEUED_BYTES) {
          log.info("dropped an event stream whose client does not read it", { uid });
          // An error, not a close: what is queued for it is thrown away with the connection.
          try {
            controller.error(new Error("the client does not read its event stream"));
          } catch { /* cancelled meanwhile */ }
          stream.end();
          return false;
        }
        return true;
      },
      end: () => {
        if (over) return;
        over = true;
        this.#forget(cart.id, stream);
        closeMetric();
        try {
          controller.close();
        } catch { /* cancelled by the server */ }
      },
    };
    const body = new ReadableStream<Uint8Array>({
      start: (c) => {
        controller = c;
      },
      cancel: () => {
        over = true;
        this.#forget(cart.id, stream);
        closeMetric();
      },
    }, { highWaterMark: 0, size: (chunk) => chunk.byteLength });
    stream.write(utf8.encode(`retry: ${RETRY_MS}\n\n`));
    let streams = this.#streams.get(cart.id);
    if (!streams) this.#streams.set(cart.id, streams = new Set());
    streams.add(stream);
    this.#send(stream, cart, this.#statusEvent(cart, stream));
    this.#schedule();
    return new Response(body, { status: 200, headers });
  }

  /** Ends every stream and answers `503` to new ones; the poll stops. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const streams of [...this.#streams.values()]) {
      for (const stream of [...streams]) stream.end();
    }
    this.#streams.clear();
  }

  /** Takes `stream` of cart `cartId` out of the hub. */
  #forget(cartId: string, stream: Stream): void {
    const streams = this.#streams.get(cartId);
    if (!streams?.delete(stream)) return;
    if (streams.size === 0) this.#streams.delete(cartId);
  }

  /** The event of `cart` as streams see it now, made once per poll for all its streams. */
  #statusEvent(cart: Cart, stream: Stream): (event: string) => Uint8Array {
    let made: Uint8Array | null = null;
    let madeFor = "";
    const data = cartStatusJson(this.deps, cart);
    return (event) => {
      if (made === null || madeFor !== event) {
        made = eventText(eventId(stream.generation, figuresOf(cart)), event, data);
        madeFor = event;
      }
      return made;
    };
  }

  /**
   * Writes to `stream` what changed in `cart` since its last event (nothing when nothing did),
   * and ends it after a final state.
   */
  #send(stream: Stream, cart: Cart, event: (name: string) => Uint8Array): void {
    const now = figuresOf(cart);
    if (same(stream.last, now)) return;
    const name = stream.last?.state === now.state ? "progress" : "state";
    if (!stream.write(event(name))) return;
    stream.last = now;
    if (isFinal(cart.status)) stream.end();
  }

  /** Polls again in one period, while streams are open. */
  #schedule(): void {
    if (this.#timer !== undefined || this.#closed || this.#streams.size === 0) return;
    this.#timer = setTimeout(async () => {
      try {
        await this.#poll();
      } finally {
        this.#timer = undefined;
        this.#schedule();
      }
    }, this.deps.pollMs ?? POLL_MS);
  }

  /** One poll: every open stream's cart in one query, then each stream's events. */
  async #poll(): Promise<void> {
    const ids = [...this.#streams.keys()];
    if (!ids.length) return;
    let carts: Cart[];
    try {
      carts = await this.deps.store.liveCartsById(ids);
    } catch (e) {
      if (!this.#failing) {
        log.warn("event streams cannot read their carts; they wait and try again each second", {
          streams: this.size,
          error: errorMessage(e),
        });
      }
      this.#failing = true;
      return;
    }
    if (this.#failing) log.info("event streams read their carts again", { streams: this.size });
    this.#failing = false;
    const found = new Map(carts.map((cart) => [cart.id, cart]));
    const now = Date.now();
    const keepAlive = now - this.#lastKeepAlive >= this.deps.keepAliveMs;
    if (keepAlive) this.#lastKeepAlive = now;
    for (const id of ids) {
      const streams = this.#streams.get(id);
      if (!streams) continue;
      const cart = found.get(id);
      let event: ((name: string) => Uint8Array) | null = null;
      for (const stream of [...streams]) {
        if (!cart) {
          stream.write(eventText(null, "deleted", {
            uid: stream.uid,
            message: "The cart was deleted, replaced or purged",
          }));
          stream.end();
          continue;
        }
        event ??= this.#statusEvent(cart, stream);
        const before = stream.last;
        this.#send(stream, cart, event);
        if (keepAlive && stream.last === before) stream.write(KEEPALIVE);
      }
    }
  }
}

/** What a handler of {@linkcode EventsApp} reads of its request (a Hono context). */
export interface EventsContext {
  /** The request and its path parameter. */
  req: { param(name: "uid"): string; raw: Request };
}

/** The part of the cart API's app (a Hono app) that {@linkcode mountEvents} uses. */
export interface EventsApp {
  /** Adds a GET (and so HEAD) route on `path`. */
  get(path: string, handler: (c: EventsContext) => Promise<Response>): unknown;
}

/** Registers `GET /{uid}/events` on the cart API's app, served by `hub`. */
export function mountEvents(app: EventsApp, hub: EventHub): void {
  app.get("/:uid/events", (c) => hub.open(c.req.raw, c.req.param("uid")));
}
