/**
 * The cart API of SPEC §1, as Hono routes: create (POST), status (HEAD), download (GET) and
 * delete (DELETE) of `/{uid}`, and `GET /`. Routes only talk to the store and the queue;
 * workers do the staging and bundling.
 *
 * Beside this file: {@linkcode ./download.ts} serves a ready cart's bundle,
 * {@linkcode ./downloads.ts} keeps the downloads in flight of one app,
 * {@linkcode ./content_disposition.ts} checks and sends the download name,
 * {@linkcode ./range.ts} and {@linkcode ./conditional.ts} read `Range`, `If-Range` and
 * `If-None-Match`, {@linkcode ./body.ts} reads the POST's body, {@linkcode ./json.ts} makes
 * the JSON answers.
 *
 * @module
 */
import { Hono } from "hono";
import { pacificaStatus } from "../lib/cart/state.ts";
import {
  CartDocumentError,
  documentHash,
  parseCartDocument,
  parseCartDocumentParts,
} from "../lib/cart/document.ts";
import type { Bundle } from "../lib/bundle/plan.ts";
import { defaultName } from "../lib/bundle/cart_bundle.ts";
import type { Config } from "../lib/config/config.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import type { Queue } from "../lib/queue/queue.ts";
import type { Cancellations } from "../lib/space/cancellations.ts";
import { removeCart } from "../lib/space/remove_cart.ts";
import type { Cart, CartStore, Created } from "../lib/store/store.ts";
import type { Volume } from "../lib/volume/volume.ts";
import {
  AllowList,
  checkedAddresses,
  type Resolver,
  WebhookRefused,
} from "../lib/webhook/allow.ts";
import {
  Access,
  accessMiddleware,
  AmbiguousCart,
  findCart,
  ownerOf,
  type Principal,
  principalOf,
  setPrincipal,
} from "./access.ts";
import {
  BodyEncodingError,
  BodyReadError,
  BodyTimeoutError,
  decodeParts,
  readBody,
} from "./body.ts";
import { isUtf8Parts } from "../lib/util/utf8_parts.ts";
import { filenameProblem } from "./content_disposition.ts";
import { serveDownload } from "./download.ts";
import { type DownloadHolds, Downloads } from "./downloads.ts";
import { estimate, ESTIMATE_PATH, type EstimateSources } from "./estimate.ts";
import { EventHub, mountEvents } from "./events.ts";
import { json } from "./json.ts";
import {
  LINK_DEFAULT_S,
  LINK_READS,
  type LinkFields,
  linkQuery,
  LinkRefused,
  LinkSigner,
  parseLinkKeys,
} from "./links.ts";
import { METRICS_ALIAS, METRICS_PATH, mountMetrics } from "./metrics.ts";
import { QuotaExceeded, Quotas } from "./quotas.ts";
import { mountStatus, progressHeaders, retryAfterSeconds } from "./status.ts";
import { unavailable } from "./unavailable.ts";
import { countCartEvent } from "../lib/util/metrics.ts";

/** What the routes need. */
export interface RouteDeps {
  /** Where carts and their files are recorded. */
  store: CartStore;
  /** Where new carts are published for the workers. */
  queue: Queue;
  /** The folder layout under VOLUME_PATH, where staged files and tars are read. */
  volume: Volume;
  /** The service's settings (the routes use its request limits). */
  config: Config;
  /** The process's cancellations: a local worker busy with a removed cart hears it there. */
  cancellations: Cancellations;
  /** The archive and space `POST /_cartd/estimate` reads (./estimate.ts); not served without. */
  estimate?: EstimateSources;
  /**
   * Who may ask (./access.ts); made from `config.access` when not given. Off (no identity
   * setting), every request is served as before owners existed.
   */
  access?: Access;
  /** Resolves a webhook's host name (default: the system's resolver; tests pass their own). */
  resolver?: Resolver;
  /** The downloads in flight of the process, when HTTP threads serve them (./downloads.ts). */
  holds?: DownloadHolds & { downloads(cartId: string): number };
  /**
   * The server copies each chunk of a download before it asks for the next, so downloads
   * may lend their chunks (./download.ts, `DownloadDeps.lendChunks`). Off by default.
   */
  lendChunks?: boolean;
  /**
   * Reads, checks and stores a POSTed document for `who` when webhooks are off ({@linkcode
   * acceptCart} by default; big ones in a thread of their own, app/documents.ts).
   */
  accept?: (request: Request, uid: string, who: Submitter) => Promise<Response | AcceptedCart>;
}

/** cartd's own HEAD header: the precise status of the cart, whatever CARTD_STATUS_WORDS says. */
export const STATE_HEADER = "X-Cartd-State";
/** How long a POST waits for the queue before answering (the cart is stored either way). */
const PUBLISH_WAIT_MS = 2_000;
const utf8 = new TextEncoder();
/** The answer of `GET /{uid}` for a cart that is not live (for the principal asking). */
const NO_CART = "The cart does not exist or has already been deleted";
/** The requests that came through a signed link that verified (their status page keeps it). */
const signedLinks = new WeakSet<Request>();

/** Why a uid is not acceptable, or null when it is. */
function uidProblem(uid: string): string | null {
  const length = utf8.encode(uid).length;
  if (length === 0) return "The cart uid must not be empty";
  if (length > 255) return `The cart uid is ${length} bytes long; at most 255 are allowed`;
  return null;
}

/** What the server knows of a request besides the request itself. */
export interface RequestInfo {
  /** The peer's address (a trusted proxy's header is believed only from those configured). */
  remoteAddr?: Deno.NetAddr;
}

/** The cart API as {@linkcode cartRoutes} returns it (a Hono app), with its downloads in flight. */
export interface CartApp {
  /** Answers one request (`info`: its peer's address): the handler to give the server. */
  fetch(request: Request, info?: RequestInfo): Response | Promise<Response>;
  /** This app's downloads in flight (no other app instance shares them). */
  readonly downloads: Downloads<Bundle>;
  /** This app's event streams (`GET /{uid}/events`): close them before the server stops. */
  readonly events: EventHub;
}

/**
 * The Hono app that serves the cart API. Each app has its own downloads in flight: two apps
 * in one process share no plan.
 */
export function cartRoutes(deps: RouteDeps): CartApp {
  const { store, queue, volume, config, cancellations } = deps;
  const downloads = new Downloads<Bundle>();
  const events = new EventHub({
    store,
    config,
    keepAliveMs: config.api.eventsKeepAliveMs,
    find: (request, uid) => readable(request, uid),
  });
  const app = Object.assign(new Hono(), { downloads, events });
  const access = deps.access ?? new Access(config.access);
  const links = new LinkSigner(parseLinkKeys(config.access.linkKeys));
  const quotas = new Quotas(config.quota);
  // On a full volume, removing a cart's folder makes room for the database's write when the
  // SQLite file shares the volume's file system (cartd's default layout): lib/space/remove_cart.ts.
  const freesDatabase = config.database.kind === "sqlite" &&
    volume.sharesFileSystem(config.database.path);
  const webhookAllow = new AllowList(config.webhooks.allow);

  /**
   * Why the webhook URL `url` of a POSTed document is refused, or null: this cartd sends no
   * webhooks (no secret), or an address of its host is not allowed (checked again before
   * each delivery: lib/webhook/deliver.ts).
   */
  async function webhookProblem(url: string): Promise<string | null> {
    if (!config.webhooks.secret) return NO_WEBHOOKS;
    try {
      await checkedAddresses(new URL(url), webhookAllow, config.webhooks.timeoutMs, deps.resolver);
      return null;
    } catch (e) {
      if (e instanceof WebhookRefused) return e.message;
      throw e;
    }
  }
  /** Removes `cart` (a DELETE, a replace), saying so when that cuts downloads in flight here. */
  const remove = (cart: Cart, why: string) => {
    const cut = downloads.downloads(cart.id) + (deps.holds?.downloads(cart.id) ?? 0);
    if (cut > 0) {
      log.warn("removing a cart cuts its downloads in flight; their clients get a short body", {
        uid: cart.uid,
        cart: cart.id,
        why,
        downloads: cut,
      });
    }
    return removeCart(store, volume, cart, why, cancellations, freesDatabase);
  };

  app.onError((error, c) => errorAnswer(error, c.req.method, c.req.path));
  app.notFound(() => json({ message: "Not Found" }, 404));
  // One middleware, not two: with access on, its checks follow HTTP's own in the same hop.
  const guard = access.on
    ? accessMiddleware(access, {
      rate: (principal) => quotas.rate(principal),
      rateLimit: config.quota.requestsPerSecond,
      open: (request, path) => {
        if (path === "/" || path === METRICS_PATH) return true;
        // GET /metrics without credentials is the metrics; with them, it may be a cart.
        return path === METRICS_ALIAS && request.method === "GET" &&
          !request.headers.has("authorization") &&
          !request.headers.has(config.access.proxyHeader);
      },
      signed: (request, path) => linkRequest(request, path),
    })
    : null;
  if (guard) {
    // Not an async function: a request let through goes on to the routes in the same hop.
    app.use("*", (c, next) => {
      const refused = protocolProblem(c.req.raw);
      return refused ? Promise.resolve(refused) : guard(c, next);
    });
  } else {
    app.use("*", async (c, next) => {
      const refused = protocolProblem(c.req.raw);
      if (refused) return refused;
      await next();
    });
  }

  /**
   * Whether `request` (of `path`) is a signed link's, which the route checks itself instead of
   * credentials: a GET or HEAD with `sig` in its query, of `/{uid}` (the download, the HEAD)
   * or of the cart's read-only `/{uid}/status`, `/{uid}/events` and `/{uid}/files`.
   */
  function linkRequest(request: Request, path: string): boolean {
    if (!links.on || (request.method !== "GET" && request.method !== "HEAD")) return false;
    if (!request.url.includes("sig=")) return false; // most requests stop here, unparsed
    const slash = path.indexOf("/", 1);
    if (slash >= 0 && !LINK_READS.has(path.slice(slash))) return false;
    return new URL(request.url).searchParams.has("sig");
  }

  /**
   * Queues a stored cart, waiting at most PUBLISH_WAIT_MS: the cart is safe in the store as
   * `waiting`, so a slow or absent broker must not hold the client. A publish still pending
   * goes on; one that fails is left to the workers' orphan sweep.
   */
  async function publishSoon(cartId: string, uid: string): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const published = queue.publish(cartId).then(() => true, (e) => {
      log.warn("could not queue cart; the orphan sweep will", {
        uid,
        cart: cartId,
        error: errorMessage(e),
      });
      return true;
    });
    const waited = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), PUBLISH_WAIT_MS);
    });
    if (!(await Promise.race([published, waited]))) {
      log.warn("the queue is slow; the cart is stored and will be queued", { uid, cart: cartId });
    }
    clearTimeout(timer);
  }

  app.get("/", () => json({ message: UP_MESSAGE }, 200));
  const find = (request: Request, uid: string) => findCart(store, request, uid);
  mountMetrics(app, { store, space: deps.estimate?.space, find });
  // GET /{uid}/status, /{uid}/files: ./status.ts; through a signed link too (the status page
  // passes the link's query on to its event stream, its files and its download).
  mountStatus(app, {
    store,
    config,
    find: readable,
    link: (request) => signedLinks.has(request) ? linkQuery(new URL(request.url)) : undefined,
  });
  mountEvents(app, events); // GET /{uid}/events: ./events.ts
  const sources = deps.estimate;
  if (sources) app.post(ESTIMATE_PATH, (c) => estimate({ store, config, ...sources }, c.req.raw));

  app.post("/:uid", async (c) => {
    const uid = c.req.param("uid");
    const principal = principalOf(c.req.raw) ?? undefined;
    const who: Submitter = { owner: ownerOf(c.req.raw), principal };
    // Big documents in a thread of their own (app/documents.ts), owners and quotas included;
    // with webhooks on, this thread reads every document (a webhook's address is checked here).
    const accepted = deps.accept && !config.webhooks.secret
      ? await deps.accept(c.req.raw, uid, who)
      : await acceptCart({ store, config, webhookProblem }, c.req.raw, uid, who);
    if (accepted instanceof Response) return accepted;
    const { created } = accepted;
    if (!created.kept) {
      countCartEvent("created");
      await publishSoon(created.cart.id, uid);
    }
    for (const old of created.replaced) await remove(old, "replaced by a POST");
    log.info(created.kept ? "cart kept (identical re-POST)" : "cart accepted", {
      uid,
      cart: created.cart.id,
      principal: principal?.name,
      files: accepted.files,
      replaced: created.replaced.length || undefined,
      webhook: accepted.webhook === undefined ? undefined : new URL(accepted.webhook).host,
    });
    return json({ message: "Cart Processing has begun" }, 201);
  });

  /**
   * HEAD: the cart's status in headers. `X-Pacifica-Status` uses the words of
   * `config.api.statusWords` (see pacificaStatus); `X-Cartd-State` always has the precise
   * status, read from the same row. An unknown cart says `error` in both (the 404 tells it
   * apart from a failed cart), so a client loop that stops on `error` stops on it too.
   * Hono answers HEAD through the GET route; the GET route hands HEAD over to this.
   */
  async function status(request: Request, uid: string): Promise<Response> {
    const cart = await findCart(store, request, uid);
    return cart ? await statusOf(cart) : noCartHead(uid);
  }

  /** The HEAD of a live cart. */
  async function statusOf(cart: Cart): Promise<Response> {
    if (cart.status === "ready") await store.touch(cart.id);
    const headers: Record<string, string> = {
      "X-Pacifica-Status": pacificaStatus(cart.status, config.api.statusWords),
      "X-Pacifica-Message": headerSafe(cart.message),
      [STATE_HEADER]: cart.status,
    };
    if (config.api.progressHeaders) Object.assign(headers, progressHeaders(cart));
    return new Response(null, { status: cart.status === "error" ? 500 : 204, headers });
  }

  /**
   * `GET /{uid}/link`: a signed URL of the cart's download for its owner (./links.ts), valid
   * for `?expires=` seconds (default {@linkcode LINK_DEFAULT_S}, at most CARTD_LINK_MAX_AGE),
   * of `?format=`, `?filename=` and `?manifest=` as the download takes them.
   */
  app.get("/:uid/link", async (c) => {
    const uid = c.req.param("uid");
    if (!links.on) {
      return json({
        message: "Signed links are off: set CARTD_LINK_KEYS to turn them on",
      }, 404);
    }
    const cart = await findCart(store, c.req.raw, uid);
    if (!cart) return json({ message: NO_CART }, 404);
    const maxS = Math.floor(config.access.linkMaxAgeMs / 1000);
    const expiresIn = c.req.query("expires") ?? String(LINK_DEFAULT_S);
    const seconds = /^\d{1,12}$/.test(expiresIn) ? Number(expiresIn) : NaN;
    if (!(seconds >= 1 && seconds <= maxS)) {
      return json({
        message: `expires must be a whole number of seconds from 1 to ${maxS} ` +
          `(CARTD_LINK_MAX_AGE), not ${JSON.stringify(expiresIn)}`,
      }, 400);
    }
    const format = c.req.query("format") ?? "tar";
    if (format !== "tar" && format !== "zip") {
      return json({ message: `format must be "tar" or "zip", not "${format}"` }, 400);
    }
    const filename = c.req.query("filename") ?? "";
    const problem = filename === "" ? null : filenameProblem(filename);
    if (problem) return json({ message: problem }, 400);
    const expires = Math.floor(links.now() / 1000) + seconds;
    const query = links.query({
      cartId: cart.id,
      uid: cart.uid,
      owner: cart.owner,
      filename,
      format,
      manifest: ["1", "true", "yes"].includes(c.req.query("manifest") ?? ""),
      expires,
    });
    const path = `/${encodeURIComponent(cart.uid)}?${query}`;
    const statusPath = `/${encodeURIComponent(cart.uid)}/status?${query}`;
    log.info("signed link made", {
      uid: cart.uid,
      cart: cart.id,
      principal: principalOf(c.req.raw)?.name,
      expires: new Date(expires * 1000).toISOString(),
    });
    return json(
      {
        url: new URL(path, c.req.url).href,
        path,
        status_url: new URL(statusPath, c.req.url).href,
        status_path: statusPath,
        expires: new Date(expires * 1000).toISOString(),
      },
      200,
      { "Cache-Control": "no-store" },
    );
  });

  /**
   * The cart a signed link opens, or null when it was deleted or replaced since (another id
   * under the uid): the route's 404, as for any missing cart. The request's principal becomes
   * the cart's owner, by way of the link.
   *
   * @throws {LinkRefused} for a link altered or expired (403).
   */
  async function linkedCart(
    request: Request,
    uid: string,
  ): Promise<{ cart: Cart; link: LinkFields } | null> {
    const check = links.verify(uid, new URL(request.url).searchParams);
    if (!check.ok) throw new LinkRefused(check.message);
    const cart = await store.liveCart(uid, check.link.owner);
    if (!cart || cart.id !== check.link.cartId) return null;
    setPrincipal(request, { name: cart.owner, roles: [], admin: false, via: "link" });
    signedLinks.add(request);
    return { cart, link: check.link };
  }

  /**
   * The live cart `uid` as `request` may read it: through the signed link it carries (a GET
   * or HEAD with `sig`, when links are on), else as its principal sees it (./access.ts).
   */
  async function readable(request: Request, uid: string): Promise<Cart | null> {
    if (links.on && new URL(request.url).searchParams.has("sig")) {
      return (await linkedCart(request, uid))?.cart ?? null;
    }
    return await findCart(store, request, uid);
  }

  app.get("/:uid", async (c) => {
    const uid = c.req.param("uid");
    let cart: Cart | null;
    let signed: LinkFields | null = null;
    if (links.on && c.req.query("sig") !== undefined) {
      const found = await linkedCart(c.req.raw, uid);
      if (!found) {
        return c.req.raw.method === "HEAD" ? noCartHead(uid) : json({ message: NO_CART }, 404);
      }
      if (c.req.raw.method === "HEAD") return await statusOf(found.cart);
      cart = found.cart;
      signed = found.link;
    } else {
      if (c.req.raw.method === "HEAD") return await status(c.req.raw, uid);
      cart = await findCart(store, c.req.raw, uid);
    }
    if (!cart) return json({ message: NO_CART }, 404);
    if (cart.status === "error") return json({ message: cart.message }, 500);
    if (cart.status !== "ready") {
      return c.text("The cart is not ready for download.", 202, {
        "Retry-After": String(retryAfterSeconds(cart, store.now())),
      });
    }
    const format = signed ? signed.format : c.req.query("format") ?? "tar";
    if (format !== "tar" && format !== "zip") {
      return json({ message: `format must be "tar" or "zip", not "${format}"` }, 400);
    }
    const name = (signed ? signed.filename || undefined : c.req.query("filename")) ??
      defaultName(cart, format);
    const problem = filenameProblem(name);
    if (problem) return json({ message: problem }, 400);
    const manifest = signed
      ? signed.manifest
      : ["1", "true", "yes"].includes(c.req.query("manifest") ?? "");
    const { holds, lendChunks } = deps;
    return await serveDownload({ store, volume, downloads, holds, lendChunks }, c.req.raw, cart, {
      name,
      format,
      manifest,
    });
  });

  app.delete("/:uid", async (c) => {
    const cart = await findCart(store, c.req.raw, c.req.param("uid"));
    if (!cart) return json({ message: "Not Found" }, 404);
    await remove(cart, "DELETE");
    return json({ message: "Cart Deleted Successfully" }, 200);
  });

  return app;
}

/** The `413` of a cart document over `CARTD_MAX_BODY` (`limit` bytes). */
function tooLarge(limit: number): Response {
  return json({
    message: `The cart document is larger than ${limit} bytes (CARTD_MAX_BODY); ` +
      "split the cart or raise the limit",
  }, 413);
}

/** Why a cart that names a webhook is refused where webhooks are off. */
const NO_WEBHOOKS = "this cartd sends no webhooks (its operator has not set " +
  "CARTD_WEBHOOK_SECRET); leave the field out, or ask for webhooks to be turned on";

/** What `GET /` answers (SPEC §1). */
const UP_MESSAGE = "Pacifica Cartd Interface Up and Running";

/** A POSTed cart, read, checked and stored by {@linkcode acceptCart}. */
export interface AcceptedCart {
  /** The cart's uid. */
  uid: string;
  /** How many files its document lists. */
  files: number;
  /** What the store did. */
  created: Created;
  /** The document's webhook URL, when it has one (for the log: its host). */
  webhook?: string;
}

/**
 * Who POSTs a cart: the owner its cart gets (`""` with access off) and, with access on, the
 * principal whose quotas it counts against. Plain data, so that it goes to the document thread
 * with the document.
 */
export interface Submitter {
  /** The owner the cart gets. */
  owner: string;
  /** The principal whose quotas count it (none with access off). */
  principal?: Principal;
}

/** What {@linkcode acceptCart} and {@linkcode acceptDocument} need besides the document. */
export interface AcceptDeps {
  /** Where the cart is stored. */
  store: CartStore;
  /** The limits and quotas it is checked against. */
  config: Config;
  /**
   * Why a document's webhook URL is refused, or null. Without it (the document thread) a
   * document with a webhook is refused: no webhooks are sent where none are checked.
   */
  webhookProblem?: (url: string) => Promise<string | null>;
  /**
   * Given each part of a document read in parts once it is parsed: the document thread hands
   * them back to the main thread, to read the next big body into (app/documents.ts).
   */
  partRead?: (part: Uint8Array) => void;
}

/** Big documents read and checked at once by one app (the rest wait): each costs memory. */
const BIG_DOCUMENT = 1 << 20;
let bigDocuments = 0;
const waitingDocuments: (() => void)[] = [];

/**
 * Reads, checks and stores the cart document of a POST to `/{uid}`: the cart as stored, or
 * the answer that refuses it (400 naming the problem, 413 over `CARTD_MAX_BODY`). Documents
 * of 1 MiB or more are taken one at a time in each thread, so that four at once cost about
 * one's memory at a time, not four's.
 */
export async function acceptCart(
  deps: AcceptDeps,
  request: Request,
  uid: string,
  who: Submitter = { owner: "" },
): Promise<Response | AcceptedCart> {
  const { config } = deps;
  const problem = uidProblem(uid);
  if (problem) return json({ message: problem }, 400);
  const declared = Number(request.headers.get("content-length") ?? 0);
  const big = !(declared < BIG_DOCUMENT); // a body of unknown length counts as big
  if (big) {
    if (bigDocuments > 0) await new Promise<void>((r) => waitingDocuments.push(r));
    else bigDocuments++;
  }
  try {
    const body = await readBody(request, config.limits.maxBodyBytes, config.api.bodyTimeoutMs);
    if (body === null) {
      return tooLarge(config.limits.maxBodyBytes);
    }
    return await acceptDocument(deps, uid, body, who);
  } finally {
    if (big) {
      const next = waitingDocuments.shift();
      if (next) next(); // hands its turn on
      else bigDocuments--;
    }
  }
}

/**
 * Checks and stores the cart document POSTed to `/{uid}` (already read, within
 * `CARTD_MAX_BODY`): its text, or its bytes in `parts` (emptied as they are parsed, so that
 * the document's text is never made whole: a big document read by app/documents.ts): the
 * cart as stored, or the answer that refuses it (400 naming the problem, 429 over one of
 * `who`'s quotas; a `BodyEncodingError` for bytes not UTF-8). Nothing is stored when it
 * refuses.
 */
export async function acceptDocument(
  deps: AcceptDeps,
  uid: string,
  body: string | Uint8Array[],
  who: Submitter = { owner: "" },
): Promise<Response | AcceptedCart> {
  const problem = uidProblem(uid);
  if (problem) return json({ message: problem }, 400);
  let doc;
  try {
    const limits = { maxFiles: deps.config.limits.maxFiles };
    if (typeof body === "string") doc = parseCartDocument(body, limits);
    else if (!isUtf8Parts(body)) decodeParts(body); // throws, naming the first bad byte
    else doc = parseCartDocumentParts(body, limits, deps.partRead);
  } catch (e) {
    if (e instanceof CartDocumentError) return json({ message: e.message }, 400);
    throw e;
  }
  body = ""; // as large as the document: not kept while the cart is stored
  if (!doc) throw new Error("unreachable: a document that is neither parsed nor refused");
  const { principal } = who;
  const quotas = principal ? new Quotas(deps.config.quota) : null;
  const tooMany = principal ? quotas!.filesPerCart(principal, doc.files.length) : null;
  if (tooMany) {
    log.info("cart refused: over a quota; nothing stored", { uid, principal: principal?.name });
    return tooMany;
  }
  if (doc.webhook !== undefined) {
    const refused = deps.webhookProblem ? await deps.webhookProblem(doc.webhook) : NO_WEBHOOKS;
    if (refused) {
      log.info("cart refused: its webhook may not be called; nothing stored", {
        uid,
        error: refused,
      });
      return json({ message: `webhook: ${refused}` }, 400);
    }
  }
  // The other quotas are checked inside the transaction that stores the cart (./quotas.ts).
  const admit = principal ? quotas!.admission(principal, doc.files.length) : null;
  let created: Created;
  try {
    created = await deps.store.createCart(
      uid,
      doc,
      documentHash(doc),
      who.owner,
      admit ?? undefined,
    );
  } catch (e) {
    if (!(e instanceof QuotaExceeded)) throw e;
    log.info("cart refused: over a quota; nothing stored", { uid, principal: principal?.name });
    return e.answer();
  }
  return { uid, files: doc.files.length, created, webhook: doc.webhook };
}

/**
 * The answer to a request whose handling threw `error`: 400 for a body that is not UTF-8 or
 * that the client stopped sending, 408 for one that did not come in time, 503 naming the
 * cause when the database or the volume is unavailable, 409 for an ambiguous admin lookup,
 * else 500. The app's error handler and the HTTP threads both answer with it.
 */
export function errorAnswer(error: unknown, method: string, path: string): Response {
  // A body that is not UTF-8 (POST /{uid} and the estimate alike): the client's to fix.
  if (error instanceof BodyEncodingError) return json({ message: error.message }, 400);
  if (error instanceof BodyTimeoutError) {
    // Too slow, or stopped mid-body: what came is let go; the connection is closed after
    // the answer, as the rest of the body is not read.
    log.info("a request body did not come within CARTD_BODY_TIMEOUT; cut, nothing stored", {
      method: method,
      path: path,
      seconds: error.timeoutMs / 1000,
    });
    return json({ message: error.message }, 408, { Connection: "close" });
  }
  if (error instanceof BodyReadError) {
    // The client went away mid-body: nothing failed here, and nobody reads the answer.
    log.info("client closed the connection before sending the whole body; nothing stored", {
      method: method,
      path: path,
      error: errorMessage(error.cause),
    });
    return json({ message: error.message }, 400);
  }
  // The database away, busy, full or read-only, or a full volume: 503 naming the cause.
  const down = unavailable(error);
  if (down) {
    log.warn(down.logMessage, { error: errorMessage(error) });
    return json({ message: down.message }, 503, {
      "Retry-After": String(down.retryAfterSeconds),
    });
  }
  if (error instanceof AmbiguousCart) return json({ message: error.message }, 409);
  if (error instanceof LinkRefused) return json({ message: error.message }, 403);
  log.error("request failed", { error: errorMessage(error) });
  return json({ message: "Internal error: the request could not be completed" }, 500);
}

/** What {@linkcode getCart} needs: where the cart is read, and its downloads in flight. */
export interface GetCartDeps {
  /** Where carts and their files are recorded. */
  store: CartStore;
  /** Where staged files and tars are read. */
  volume: Volume;
  /** The downloads in flight of this app. */
  downloads: Downloads<Bundle>;
  /** The downloads in flight of the process, when HTTP threads serve them. */
  holds?: DownloadHolds;
  /** Downloads lend their chunks to the server (./download.ts, `DownloadDeps.lendChunks`). */
  lendChunks?: boolean;
}

/**
 * The answer to `GET /{uid}` (not HEAD): 404, 500 (a failed cart), 202 (not ready), 400 (a
 * bad `format` or `filename`), or the download (./download.ts). `query` reads the query.
 */
export async function getCart(
  deps: GetCartDeps,
  request: Request,
  uid: string,
  query: (name: string) => string | undefined,
): Promise<Response> {
  const { store } = deps;
  const cart = await store.liveCart(uid);
  if (!cart) return json({ message: "The cart does not exist or has already been deleted" }, 404);
  if (cart.status === "error") return json({ message: cart.message }, 500);
  if (cart.status !== "ready") {
    return new Response("The cart is not ready for download.", {
      status: 202,
      headers: {
        "Content-Type": "text/plain; charset=UTF-8",
        "Retry-After": String(retryAfterSeconds(cart, store.now())),
      },
    });
  }
  const format = query("format") ?? "tar";
  if (format !== "tar" && format !== "zip") {
    return json({ message: `format must be "tar" or "zip", not "${format}"` }, 400);
  }
  const name = query("filename") ?? defaultName(cart, format);
  const problem = filenameProblem(name);
  if (problem) return json({ message: problem }, 400);
  const manifest = ["1", "true", "yes"].includes(query("manifest") ?? "");
  return await serveDownload(deps, request, cart, { name, format, manifest });
}

/** What {@linkcode downloadRoutes} needs. */
export interface DownloadRouteDeps extends GetCartDeps {
  /** Wraps a download's body (to count its bytes for the metrics). */
  counted?: (body: ReadableStream<Uint8Array>) => ReadableStream<Uint8Array>;
}

/**
 * The routes of an HTTP thread (app/http_thread.ts): `GET /{uid}` of a cart (its download)
 * is answered here, everything else by `forward` (the main thread's {@linkcode cartRoutes}):
 * the same answers as the one app, with the bytes of downloads sent from this thread.
 */
export function downloadRoutes(
  deps: DownloadRouteDeps,
  forward: (request: Request) => Promise<Response>,
): (request: Request) => Response | Promise<Response> {
  const app = new Hono();
  app.onError((error, c) => errorAnswer(error, c.req.method, c.req.path));
  app.use("*", async (c, next) => {
    const refused = protocolProblem(c.req.raw);
    if (refused) return refused;
    await next();
  });
  // GET / answers here, as there (nothing to read): a health check stays quick while the
  // main thread waits for the database (a big document's transaction holds SQLite's lock).
  app.get("/", () => json({ message: UP_MESSAGE }, 200));
  // GET /metrics is the metrics unless a cart is named so: the main thread decides.
  app.get(METRICS_ALIAS, (c) => forward(c.req.raw));
  app.get("/:uid", async (c) => {
    if (c.req.raw.method === "HEAD") return await forward(c.req.raw);
    const answer = await getCart(deps, c.req.raw, c.req.param("uid"), (n) => c.req.query(n));
    const { counted } = deps;
    if (
      counted && answer.body && (answer.status === 200 || answer.status === 206) &&
      answer.headers.get("content-type") === "application/octet-stream"
    ) {
      return new Response(counted(answer.body), answer);
    }
    return answer;
  });
  app.all("*", (c) => forward(c.req.raw));
  return (request) => app.fetch(request);
}

/**
 * The answer to a request that breaks HTTP's own rules as cartd applies them, or null: a
 * request without `Host` (RFC 9112 §3.2: `400`; the server cannot tell HTTP/1.0 from 1.1,
 * so it asks every request for one, as every client sends it anyway), and a body with a
 * `Content-Encoding` other than `identity` (`415`, with `Accept-Encoding: identity` as RFC
 * 9110 §15.5.16 asks): cartd reads cart documents as they are and never inflates a body,
 * which would let a small request grow past `CARTD_MAX_BODY` in memory.
 */
export function protocolProblem(request: Request): Response | null {
  if (request.headers.get("host") === null) {
    return json({ message: "The request has no Host header, which HTTP/1.1 requires" }, 400);
  }
  const encoding = request.headers.get("content-encoding");
  if (encoding !== null && encoding.split(",").some((e) => e.trim().toLowerCase() !== "identity")) {
    return json(
      {
        message: `The request body is encoded (Content-Encoding: ${headerSafe(encoding)}); ` +
          "cartd accepts only bodies without an encoding: send the cart document as plain JSON",
      },
      415,
      { "Accept-Encoding": "identity" },
    );
  }
  return null;
}

/** The HEAD of a uid without a live cart (for the principal asking). */
function noCartHead(uid: string): Response {
  return new Response(null, {
    status: 404,
    headers: {
      "X-Pacifica-Status": "error",
      "X-Pacifica-Message": headerSafe(`No cart with uid ${uid} found`),
      [STATE_HEADER]: "error",
    },
  });
}

/** Header values cannot carry newlines or non-Latin-1 text; keep the message readable. */
function headerSafe(text: string): string {
  // deno-lint-ignore no-control-regex
  return text.replace(/[\u0000-\u001f\u007f]+/g, " ").replace(/[^\u0000-\u00ff]/g, "?");
}
