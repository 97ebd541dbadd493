/**
 * A cart's progress, as cartd tells it beside Pacifica's API (issue 16 item 1): read from the
 * database only, so that any API process answers for any cart, whichever worker stages it.
 *
 * - {@linkcode progressHeaders}: `X-Cartd-Files` and `X-Cartd-Bytes` on `HEAD /{uid}`, from
 *   the counters on the cart's row (no count of its files: a HEAD stays one row read).
 * - {@linkcode retryAfterSeconds}: the `Retry-After` of `GET /{uid}` while the cart is not
 *   ready, from {@linkcode estimateOf}.
 * - {@linkcode mountStatus}: `GET /{uid}/status` (a JSON summary; for a browser, whose
 *   `Accept` prefers `text/html`, the status page of ./status_page.ts) and `GET /{uid}/files`
 *   (each file, paged by index, optionally only those of one state).
 *
 * The database knows three states of a file: `pending`, `staged` and `error`. Whether a
 * pending file is being recalled from tape or fetched right now lives only in the memory of
 * the worker staging it, so these routes do not tell it (docs/api.md, "Progress").
 *
 * @module
 */
import type { Context } from "hono";
import { accepts } from "hono/accepts";
import type { Config } from "../lib/config/config.ts";
import {
  type Cart,
  type CartFile,
  type CartStore,
  FILE_STATUSES,
  type FileStatus,
} from "../lib/store/store.ts";
import { json } from "./json.ts";
import { STATUS_PAGE_CSP, statusPage } from "./status_page.ts";

/** cartd's HEAD header of files staged of the cart's files: `12/100`. */
export const FILES_HEADER = "X-Cartd-Files";
/**
 * cartd's HEAD header of bytes staged of the cart's bytes: `1024/4096`, or `1024/*` while the
 * archive has not told every file's size (as `Content-Range` writes an unknown length).
 */
export const BYTES_HEADER = "X-Cartd-Bytes";

/** Files per page of `GET /{uid}/files` when the request names no `limit`. */
export const FILES_PAGE_DEFAULT = 100;
/** The largest `limit` of `GET /{uid}/files`. */
export const FILES_PAGE_MAX = 1000;

/** `Retry-After` (seconds) of a cart not ready while there is no estimate. */
export const RETRY_AFTER_DEFAULT_S = 5;
/** The longest `Retry-After` (seconds): a client comes back at least this often. */
export const RETRY_AFTER_MAX_S = 60;

/** How long a cart must have been staging before its rate is trusted (ms). */
export const ETA_MIN_ELAPSED_MS = 2_000;
/** The least part of the cart (bytes, or files) that must be staged before an estimate. */
export const ETA_MIN_FRACTION = 0.01;

/** The answer of a route for a cart that is not live. */
const NO_CART = "The cart does not exist or has already been deleted";

/** The headers {@linkcode progressHeaders} adds to `HEAD /{uid}`. */
export function progressHeaders(cart: Cart): Record<string, string> {
  const total = cart.totalBytes === null ? "*" : String(cart.totalBytes);
  return {
    [FILES_HEADER]: `${cart.stagedFiles}/${cart.fileCount}`,
    [BYTES_HEADER]: `${cart.stagedBytes}/${total}`,
  };
}

/** When a cart staging now should be staged, as {@linkcode estimateOf} works it out. */
export interface Estimate {
  /** Seconds left until every file is staged (bundling comes after, and is not counted). */
  seconds: number;
  /** The time that comes to (ms since the epoch). */
  at: number;
  /** What the rate is measured in: bytes once every file's size is known, else files. */
  basis: "bytes" | "files";
  /** The rate so far, in `basis` per second. */
  perSecond: number;
}

/**
 * The estimate of when a staging cart's files will all be staged, or null when there is none:
 * the rate since staging began (bytes staged per second once the total is known and not 0,
 * else files staged per second) applied to what is left. None before
 * {@linkcode ETA_MIN_ELAPSED_MS} of staging and {@linkcode ETA_MIN_FRACTION} of progress,
 * and none outside `staging` (a waiting cart has no rate yet; a bundling one has staged all).
 * Files a retried cart kept count as staged at its start, which makes the rate look faster.
 */
export function estimateOf(cart: Cart, now: number): Estimate | null {
  if (cart.status !== "staging" || cart.stagingAt === null) return null;
  const elapsedMs = now - cart.stagingAt;
  if (elapsedMs < ETA_MIN_ELAPSED_MS) return null;
  const byBytes = cart.totalBytes !== null && cart.totalBytes > 0;
  const done = byBytes ? cart.stagedBytes : cart.stagedFiles;
  const total = byBytes ? cart.totalBytes! : cart.fileCount;
  if (total <= 0) return null;
  const fraction = Math.min(1, done / total);
  if (fraction < ETA_MIN_FRACTION) return null;
  const seconds = Math.ceil((elapsedMs / 1000) * (1 - fraction) / fraction);
  return {
    seconds,
    at: now + seconds * 1000,
    basis: byBytes ? "bytes" : "files",
    perSecond: done / (elapsedMs / 1000),
  };
}

/**
 * `Retry-After` of a cart that is not ready (whole seconds): the estimate's seconds, at least
 * 1 and at most {@linkcode RETRY_AFTER_MAX_S}; {@linkcode RETRY_AFTER_DEFAULT_S} without one.
 */
export function retryAfterSeconds(cart: Cart, now: number): number {
  const estimate = estimateOf(cart, now);
  if (!estimate) return RETRY_AFTER_DEFAULT_S;
  return Math.max(1, Math.min(RETRY_AFTER_MAX_S, estimate.seconds));
}

/** What the status routes read. */
export interface StatusDeps {
  /** The carts and their files (its clock is the routes' clock). */
  store: CartStore;
  /** Retention and the LRU purge settings (`space`). */
  config: Pick<Config, "space">;
  /**
   * The live cart `uid` as the request's principal sees it (http/access.ts `findCart`); by
   * default the store's live cart of the uid (access off).
   */
  find?: (request: Request, uid: string) => Promise<Cart | null>;
  /**
   * The signed link's query of a request that came through one (after `find` verified it),
   * for the status page to pass on to its event stream, files and download; else undefined.
   */
  link?: (request: Request) => string | undefined;
}

/** A time for JSON: ISO 8601 in UTC, or null. */
function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

/**
 * The JSON of `GET /{uid}/status` (docs/api.md has an example), from the cart's row alone:
 * its counters tell the files by state, so a cart of 100,000 files costs no count.
 */
export function cartStatusJson(deps: StatusDeps, cart: Cart): unknown {
  const now = deps.store.now();
  const { retentionMs, lruBufferMs, purge } = deps.config.space;
  const ready = cart.status === "ready" && cart.readyAt !== null;
  const estimate = estimateOf(cart, now);
  const eligibleAt = ready ? cart.lastUsedAt + lruBufferMs : null;
  return {
    uid: cart.uid,
    state: cart.status,
    message: cart.message,
    times: {
      created: iso(cart.createdAt),
      stagingBegan: iso(cart.stagingAt),
      ready: iso(cart.readyAt),
      lastUsed: iso(cart.lastUsedAt),
    },
    files: {
      total: cart.fileCount,
      pending: Math.max(0, cart.fileCount - cart.stagedFiles - cart.errorFiles),
      staged: cart.stagedFiles,
      error: cart.errorFiles,
    },
    bytes: { total: cart.totalBytes, staged: cart.stagedBytes },
    eta: estimate && {
      seconds: estimate.seconds,
      at: iso(estimate.at),
      basis: estimate.basis,
      perSecond: Math.round(estimate.perSecond * 100) / 100,
    },
    retention: {
      expiresAt: ready && retentionMs > 0 ? iso(cart.readyAt! + retentionMs) : null,
    },
    purge: {
      enabled: purge,
      eligible: ready && purge && eligibleAt! < now,
      eligibleAt: ready && purge ? iso(eligibleAt) : null,
    },
    download: ready && cart.downloadSize !== null
      ? { size: cart.downloadSize, etag: cart.downloadEtag }
      : null,
  };
}

/** One file as `GET /{uid}/files` shows it. */
function fileJson(file: CartFile) {
  return {
    idx: file.idx,
    id: file.archiveId,
    path: file.path,
    state: file.status,
    size: file.size,
    error: file.status === "error" ? file.message : null,
  };
}

/**
 * A paging parameter of `GET /{uid}/files`: its whole number from `min` to `max`, the
 * fallback when absent, or a message naming it.
 */
function pagingParameter(
  name: string,
  raw: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number | string {
  if (raw === undefined) return fallback;
  const value = /^\d{1,15}$/.test(raw) ? Number(raw) : NaN;
  if (value >= min && value <= max) return value;
  return `${name} must be a whole number from ${min} to ${max}, not ${JSON.stringify(raw)}`;
}

/** What a handler of {@linkcode StatusApp} reads of its request (a Hono context). */
export interface StatusContext {
  /** The request's path parameters, query and headers. */
  req: {
    param(name: "uid"): string;
    query(name: string): string | undefined;
    header(name: string): string | undefined;
    raw: Request;
  };
}

/** Whether the request's `Accept` prefers HTML to JSON (a browser's does; `*\/*` does not). */
function wantsHtml(c: StatusContext): boolean {
  const asked = accepts({ req: c.req } as unknown as Context, {
    header: "Accept",
    supports: ["application/json", "text/html"],
    default: "application/json",
  });
  return asked === "text/html";
}

/** The part of the cart API's app (a Hono app) that {@linkcode mountStatus} uses. */
export interface StatusApp {
  /** Adds a GET (and so HEAD) route on `path`. */
  get(path: string, handler: (c: StatusContext) => Promise<Response>): unknown;
}

/** Registers `GET /{uid}/status` and `GET /{uid}/files` on the cart API's app. */
export function mountStatus(app: StatusApp, deps: StatusDeps): void {
  const { store } = deps;
  const find = deps.find ?? ((_: Request, uid: string) => store.liveCart(uid));
  app.get("/:uid/status", async (c) => {
    const cart = await find(c.req.raw, c.req.param("uid"));
    if (!cart) return json({ message: NO_CART }, 404, { Vary: "Accept" });
    const status = cartStatusJson(deps, cart);
    const headers = { "Cache-Control": "no-store", Vary: "Accept" };
    if (!wantsHtml(c)) return json(status, 200, headers);
    const page = statusPage({
      uid: cart.uid,
      state: cart.status,
      message: cart.message,
      json: status,
      link: deps.link?.(c.req.raw),
    });
    return new Response(page, {
      status: 200,
      headers: {
        ...headers,
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": STATUS_PAGE_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
      },
    });
  });
  app.get("/:uid/files", async (c) => {
    const after = pagingParameter(
      "after",
      c.req.query("after"),
      -1,
      0,
      Number.MAX_SAFE_INTEGER,
    );
    if (typeof after === "string") return json({ message: after }, 400);
    const limit = pagingParameter(
      "limit",
      c.req.query("limit"),
      FILES_PAGE_DEFAULT,
      1,
      FILES_PAGE_MAX,
    );
    if (typeof limit === "string") return json({ message: limit }, 400);
    const state = c.req.query("state");
    if (state !== undefined && !(FILE_STATUSES as readonly string[]).includes(state)) {
      return json({
        message: `state must be one of ${FILE_STATUSES.join(", ")}, not ${JSON.stringify(state)}`,
      }, 400);
    }
    const cart = await find(c.req.raw, c.req.param("uid"));
    if (!cart) return json({ message: NO_CART }, 404);
    const page = await store.filePage(cart.id, after, limit, state as FileStatus | undefined);
    const last = page.files.at(-1);
    return json(
      {
        uid: cart.uid,
        state: cart.status,
        files: page.files.map(fileJson),
        next: page.more && last ? last.idx : null,
      },
      200,
      { "Cache-Control": "no-store" },
    );
  });
}
