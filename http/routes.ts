/**
 * The cart API of SPEC §1, as Hono routes: create (POST), status (HEAD), download (GET) and
 * delete (DELETE) of `/{uid}`. Routes only talk to the store and the queue; workers do the
 * staging and bundling.
 *
 * @module
 */
import { Hono } from "hono";
import { createHash } from "node:crypto";
import { pacificaStatus } from "../lib/cart/state.ts";
import { CartDocumentError, parseCartDocument } from "../lib/cart/document.ts";
import type { Bundle } from "../lib/bundle/plan.ts";
import { cartBundle, defaultName } from "../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import type { Config } from "../lib/config/config.ts";
import { DbUnavailableError } from "../lib/db/db.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import type { Queue } from "../lib/queue/queue.ts";
import { parseRange } from "./range.ts";
import { removeCart } from "../lib/space/remove_cart.ts";
import type { Cart, CartStore } from "../lib/store/store.ts";
import type { Volume } from "../lib/volume/volume.ts";

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
}

const JSON_TYPE = "application/json";
/** cartd's own HEAD header: the precise status of the cart, whatever CARTD_STATUS_WORDS says. */
export const STATE_HEADER = "X-Cartd-State";
/** How long a POST waits for the queue before answering (the cart is stored either way). */
const PUBLISH_WAIT_MS = 2_000;
const utf8 = new TextEncoder();

/** A JSON answer: every JSON answer has `Content-Type: application/json`. */
function json(body: unknown, status: number, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": JSON_TYPE, ...headers },
  });
}

/** Why a uid is not acceptable, or null when it is. */
function uidProblem(uid: string): string | null {
  const length = utf8.encode(uid).length;
  if (length === 0) return "The cart uid must not be empty";
  if (length > 255) return `The cart uid is ${length} bytes long; at most 255 are allowed`;
  return null;
}

// deno-lint-ignore no-control-regex
const BAD_NAME = /[/\\"\u0000-\u001f\u007f]/;

/** Why a `?filename=` is not acceptable, or null when it is. */
function filenameProblem(name: string): string | null {
  if (name === "" || name === "." || name === "..") return "filename must name a file";
  if (BAD_NAME.test(name)) {
    return "filename may not contain /, \\, quotes or control characters";
  }
  if (utf8.encode(name).length > 255) return "filename is longer than 255 bytes";
  return null;
}

/**
 * `Content-Disposition` per RFC 6266 for a name {@linkcode filenameProblem} accepts: the name
 * quoted, and for a non-ASCII name `filename*` (UTF-8) after an ASCII `filename` fallback, its
 * accents dropped and anything else outside printable ASCII (or a quote, slash or backslash a
 * compatibility form folds to) made `_`. Clients that read only `filename` (curl -J) get the
 * fallback.
 *
 * @example
 * ```ts
 * import { contentDisposition } from "./routes.ts";
 * contentDisposition("x.tar"); // 'attachment; filename="x.tar"'
 * contentDisposition("données.tar");
 * // `attachment; filename="donnees.tar"; filename*=UTF-8''donn%C3%A9es.tar`
 * ```
 */
export function contentDisposition(name: string): string {
  if (/^[\u0020-\u007e]*$/.test(name)) return `attachment; filename="${name}"`;
  const fallback = name.normalize("NFKD").replace(/\p{M}/gu, "")
    .replace(/[^\u0020-\u007e]|["/\\]/g, "_");
  const encoded = encodeURIComponent(name).replace(
    /['()*]/g,
    (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase(),
  );
  return `attachment; filename="${fallback}"; filename*=UTF-8''${encoded}`;
}

/** Reads the body as text, refusing more than `limit` bytes. */
async function readBody(request: Request, limit: number): Promise<string | null> {
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > limit) return null;
  if (!request.body) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of request.body) {
    size += chunk.length;
    if (size > limit) return null;
    chunks.push(chunk);
  }
  return new TextDecoder().decode(concat(chunks, size));
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** A stable fingerprint of a validated document, so an identical re-POST can be recognised. */
function documentHash(doc: unknown): string {
  return createHash("sha256").update(JSON.stringify(doc)).digest("hex");
}

/** A Hono app, as {@linkcode cartRoutes} returns it. */
export type CartApp = Hono;

/** The Hono app that serves the cart API. */
export function cartRoutes(deps: RouteDeps): CartApp {
  const { store, queue, volume, config } = deps;
  const app = new Hono();

  app.onError((error) => {
    if (error instanceof DbUnavailableError) {
      log.warn("database unavailable", { error: error.message });
      return json(
        { message: "The cart database is unavailable right now; try again shortly" },
        503,
        { "Retry-After": "5" },
      );
    }
    log.error("request failed", { error: errorMessage(error) });
    return json({ message: "Internal error: the request could not be completed" }, 500);
  });
  app.notFound(() => json({ message: "Not Found" }, 404));

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

  app.get("/", () => json({ message: "Pacifica Cartd Interface Up and Running" }, 200));

  app.post("/:uid", async (c) => {
    const uid = c.req.param("uid");
    const problem = uidProblem(uid);
    if (problem) return json({ message: problem }, 400);
    const body = await readBody(c.req.raw, config.limits.maxBodyBytes);
    if (body === null) {
      return json({
        message: `The cart document is larger than ${config.limits.maxBodyBytes} bytes ` +
          "(CARTD_MAX_BODY); split the cart or raise the limit",
      }, 413);
    }
    let doc;
    try {
      doc = parseCartDocument(body, { maxFiles: config.limits.maxFiles });
    } catch (e) {
      if (e instanceof CartDocumentError) return json({ message: e.message }, 400);
      throw e;
    }
    const created = await store.createCart(uid, doc, documentHash(doc));
    if (!created.kept) await publishSoon(created.cart.id, uid);
    for (const old of created.replaced) await removeCart(store, volume, old, "replaced by a POST");
    log.info(created.kept ? "cart kept (identical re-POST)" : "cart accepted", {
      uid,
      cart: created.cart.id,
      files: doc.files.length,
      replaced: created.replaced.length || undefined,
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
  async function status(uid: string): Promise<Response> {
    const cart = await store.liveCart(uid);
    if (!cart) {
      return new Response(null, {
        status: 404,
        headers: {
          "X-Pacifica-Status": "error",
          "X-Pacifica-Message": headerSafe(`No cart with uid ${uid} found`),
          [STATE_HEADER]: "error",
        },
      });
    }
    if (cart.status === "ready") await store.touch(cart.id);
    return new Response(null, {
      status: cart.status === "error" ? 500 : 204,
      headers: {
        "X-Pacifica-Status": pacificaStatus(cart.status, config.api.statusWords),
        "X-Pacifica-Message": headerSafe(cart.message),
        [STATE_HEADER]: cart.status,
      },
    });
  }

  app.get("/:uid", async (c) => {
    if (c.req.raw.method === "HEAD") return await status(c.req.param("uid"));
    const cart = await store.liveCart(c.req.param("uid"));
    if (!cart) return json({ message: "The cart does not exist or has already been deleted" }, 404);
    if (cart.status === "error") return json({ message: cart.message }, 500);
    if (cart.status !== "ready") {
      return c.text("The cart is not ready for download.", 202);
    }
    const format = c.req.query("format") ?? "tar";
    if (format !== "tar" && format !== "zip") {
      return json({ message: `format must be "tar" or "zip", not "${format}"` }, 400);
    }
    const name = c.req.query("filename") ?? defaultName(cart, format);
    const problem = filenameProblem(name);
    if (problem) return json({ message: problem }, 400);
    const manifest = ["1", "true", "yes"].includes(c.req.query("manifest") ?? "");
    return await download(c.req.raw, cart, { name, format, manifest });
  });

  async function download(
    request: Request,
    cart: Cart,
    asked: { name: string; format: "tar" | "zip"; manifest: boolean },
  ): Promise<Response> {
    const form = JSON.stringify([asked.name, asked.format, asked.manifest]);
    const { bundle, release, shared } = await inFlight.take(cart.id, form, async () => {
      const files = await StagedFiles.load(store, cart, volume);
      // Fewer rows: removed (DELETE, replace, purge) between the status read and now.
      return files.length === cart.fileCount ? await cartBundle(cart, files, volume, asked) : null;
    });
    try {
      return await respond(request, cart, asked, bundle, release, shared);
    } catch (error) {
      release();
      throw error;
    }
  }

  /**
   * The answer to a GET whose plan is `bundle` (null: the cart is gone): 404, 416, or the
   * bytes asked for. `release` is called when the plan is no longer needed (at once, or when
   * the body has been sent, cut off or cancelled).
   */
  async function respond(
    request: Request,
    cart: Cart,
    asked: { name: string },
    bundle: Bundle | null,
    release: () => number,
    shared: boolean,
  ): Promise<Response> {
    if (!bundle) {
      release();
      return json({ message: "The cart does not exist or has already been deleted" }, 404);
    }
    const headers: Record<string, string> = {
      "Content-Type": "application/octet-stream",
      "Content-Disposition": contentDisposition(asked.name),
      "Accept-Ranges": "bytes",
      "ETag": bundle.etag,
      "Last-Modified": new Date(cart.readyAt ?? cart.updatedAt).toUTCString(),
    };
    const ifRange = request.headers.get("if-range");
    const rangeApplies = ifRange === null || ifRange === bundle.etag;
    const ranges = rangeApplies ? parseRange(request.headers.get("range"), bundle.size) : null;
    if (ranges === "unsatisfiable") {
      await store.touch(cart.id);
      release();
      return json({ message: `The range is outside the ${bundle.size} bytes of this cart` }, 416, {
        "Content-Range": `bytes */${bundle.size}`,
      });
    }
    log.info("download", {
      uid: cart.uid,
      cart: cart.id,
      bytes: bundle.size,
      range: ranges?.length === 1 ? `${ranges[0].start}-${ranges[0].end}` : undefined,
      plan: shared ? "shared" : undefined, // with a download of the cart in flight
    });
    // The use, recorded before the answer: held while the body is sent (holdWhileSent).
    await store.touch(cart.id, store.now() + DOWNLOAD_HOLD_MS);
    const held = (body: ReadableStream<Uint8Array>) => holdWhileSent(store, cart.id, body, release);
    if (ranges && ranges.length === 1) {
      const { start, end } = ranges[0];
      return new Response(held(bundle.stream(start, end)), {
        status: 206,
        headers: {
          ...headers,
          "Content-Range": `bytes ${start}-${end}/${bundle.size}`,
          "Content-Length": String(end - start + 1),
        },
      });
    }
    // Several ranges: RFC 9110 lets a server answer with the whole representation.
    return new Response(held(bundle.stream(0, bundle.size - 1)), {
      status: 200,
      headers: { ...headers, "Content-Length": String(bundle.size) },
    });
  }

  app.delete("/:uid", async (c) => {
    const cart = await store.liveCart(c.req.param("uid"));
    if (!cart) return json({ message: "Not Found" }, 404);
    await removeCart(store, volume, cart, "DELETE");
    return json({ message: "Cart Deleted Successfully" }, 200);
  });

  return app;
}

/** How long a download in flight keeps its cart from the LRU purge and retention, renewed. */
export const DOWNLOAD_HOLD_MS = 30_000;

/**
 * The downloads in flight in this process and their plans, by cart. Downloads of one cart asked
 * for in the same form share a plan: four clients fetching a 40,000-file cart at once hold one
 * plan (and read the store once), not four. A plan goes when its last download ends.
 */
class InFlightDownloads {
  readonly #carts = new Map<string, Map<string, { plan: Promise<Bundle | null>; users: number }>>();

  /**
   * The plan of cart `cartId` asked for in `form`, made by `make` unless a download in flight
   * has it already (null: the cart is gone). Call `release` once the download has ended; it
   * tells how many downloads of the cart are still in flight.
   */
  async take(
    cartId: string,
    form: string,
    make: () => Promise<Bundle | null>,
  ): Promise<{ bundle: Bundle | null; release: () => number; shared: boolean }> {
    let plans = this.#carts.get(cartId);
    if (!plans) this.#carts.set(cartId, plans = new Map());
    let entry = plans.get(form);
    const shared = entry !== undefined;
    if (!entry) {
      const made = { plan: make(), users: 0 };
      plans.set(form, made);
      made.plan.then((b) => b ?? this.#forget(cartId, form, made), () => {
        this.#forget(cartId, form, made);
      });
      entry = made;
    }
    const taken = entry;
    taken.users++;
    let released = false;
    const release = () => {
      if (!released) {
        released = true;
        if (--taken.users === 0) this.#forget(cartId, form, taken);
      }
      return this.downloads(cartId);
    };
    try {
      return { bundle: await taken.plan, release, shared };
    } catch (error) {
      release();
      throw error;
    }
  }

  /** How many downloads of the cart are in flight in this process. */
  downloads(cartId: string): number {
    let n = 0;
    for (const entry of this.#carts.get(cartId)?.values() ?? []) n += entry.users;
    return n;
  }

  #forget(cartId: string, form: string, entry: { users: number }): void {
    const plans = this.#carts.get(cartId);
    if (plans?.get(form) !== entry) return;
    plans.delete(form);
    if (!plans.size) this.#carts.delete(cartId);
  }
}

const inFlight = new InFlightDownloads();

/**
 * `body`, passed through unchanged, while the cart counts as used: its last use, which the
 * caller set {@linkcode DOWNLOAD_HOLD_MS} ahead, is moved that far ahead again every third of
 * that, so the LRU purge and retention (from whichever process) never delete the files of a
 * download in flight, whatever LRU_BUFFER_TIME is. `release` is called once, when the body is sent, cut off or cancelled;
 * when it tells that no other download of the cart is in flight here, the cart's last use
 * becomes that moment. A process that dies mid-download holds the cart for at most
 * {@linkcode DOWNLOAD_HOLD_MS}.
 */
function holdWhileSent(
  store: CartStore,
  cartId: string,
  body: ReadableStream<Uint8Array>,
  release: () => number,
): ReadableStream<Uint8Array> {
  const warn = (e: unknown) =>
    log.warn("could not record a download's hold on its cart", {
      cart: cartId,
      error: errorMessage(e),
    });
  const hold = () => store.touch(cartId, store.now() + DOWNLOAD_HOLD_MS).catch(warn);
  const timer = setInterval(hold, DOWNLOAD_HOLD_MS / 3);
  let ended = false;
  const end = async () => {
    if (ended) return;
    ended = true;
    clearInterval(timer);
    if (release() === 0) await store.endHold(cartId).catch(warn);
  };
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await reader.read();
        if (!done) return controller.enqueue(value);
        await end(); // before the client sees the end
        controller.close();
      } catch (error) {
        await end();
        controller.error(error);
      }
    },
    async cancel(reason) {
      await end();
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/** Header values cannot carry newlines or non-Latin-1 text; keep the message readable. */
function headerSafe(text: string): string {
  // deno-lint-ignore no-control-regex
  return text.replace(/[\u0000-\u001f\u007f]+/g, " ").replace(/[^\u0000-\u00ff]/g, "?");
}
