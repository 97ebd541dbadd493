/**
 * Serving a ready cart's bundle (SPEC §1, Download): the bundle (`cartBundle`: the tar written
 * for a `"bundle": true` cart, with the size and ETag the store recorded, else the plan of its
 * staged files; shared with the downloads of the same cart and form in flight,
 * {@linkcode ./downloads.ts}), `If-None-Match` → 304, `Range`
 * and `If-Range` → 206 or 416, `ETag`, `Last-Modified`, `Content-Disposition`, and the hold
 * that keeps the cart from the LRU purge and retention while its bytes are sent.
 *
 * @module
 */
import type { Bundle, StreamOptions } from "../lib/bundle/plan.ts";
import { cartBundle, cartBundleOptions } from "../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import { startSpan } from "../lib/util/trace.ts";
import type { Cart, CartStore } from "../lib/store/store.ts";
import type { Volume } from "../lib/volume/volume.ts";
import { noneMatch, rangeApplies } from "./conditional.ts";
import { contentDisposition } from "./content_disposition.ts";
import type { DownloadHolds, Downloads } from "./downloads.ts";
import { json } from "./json.ts";
import { parseRange } from "./range.ts";

/** How long a download in flight keeps its cart from the LRU purge and retention, renewed. */
export const DOWNLOAD_HOLD_MS = 30_000;

/** What serving a download needs. */
export interface DownloadDeps {
  /** Where the cart's files are listed and its uses recorded. */
  store: CartStore;
  /** Where the staged files and the tar are read. */
  volume: Volume;
  /** The downloads in flight of this app instance. */
  downloads: Downloads<Bundle>;
  /**
   * The downloads in flight of the whole process, when its API runs in several threads
   * (app/http_threads.ts): the last download of a cart in the process, not in this thread,
   * ends its hold. Without it, this app's downloads are all there are.
   */
  holds?: DownloadHolds;
  /**
   * The server copies each chunk of an answer's body before it asks for the next
   * (`Deno.serveHttp` does, app/server.ts): the bundle then lends its chunks
   * ({@linkcode StreamOptions.lend}) and a download makes no garbage of its bytes. Leave it
   * off for any other consumer (`Deno.serve` keeps chunks queued; a test reading the body
   * keeps them all).
   */
  lendChunks?: boolean;
}

/** How the client asked for the cart (the GET's query, checked). */
export interface DownloadAsk {
  /** The download name (`?filename=`, or the default name). */
  name: string;
  /** The archive format (`?format=`). */
  format: "tar" | "zip";
  /** Add a sha256 manifest (`?manifest=`). */
  manifest: boolean;
}

/** The answer when the cart went away between the status read and the plan. */
const gone = () => json({ message: "The cart does not exist or has already been deleted" }, 404);

/**
 * The answer to a GET of the ready cart `cart` asked for as `asked`: 404 (the cart was removed
 * meanwhile), 304 (`If-None-Match` names its ETag), 416, or the bytes asked for (200 or 206),
 * held while they are sent.
 */
export async function serveDownload(
  deps: DownloadDeps,
  request: Request,
  cart: Cart,
  asked: DownloadAsk,
): Promise<Response> {
  const { store, volume, downloads, holds } = deps;
  const options: StreamOptions = { lend: deps.lendChunks ?? false };
  const form = JSON.stringify([asked.name, asked.format, asked.manifest]);
  // Counted in the process before the plan is taken, as the plan's users are here.
  holds?.begin(cart.id);
  let taken;
  try {
    taken = await downloads.take(
      cart.id,
      form,
      () =>
        cartBundle(cart, volume, asked, async () => {
          const files = await StagedFiles.load(store, cart, volume);
          // Fewer rows: removed (DELETE, replace, purge) between the status read and now.
          if (files.length !== cart.fileCount) return null;
          // A manifest the cart did not ask for: staging measured no SHA-256s for it; a zip
          // asked for before the pass after ready ended: CRC-32s of big files are left.
          const sha256 = cartBundleOptions(cart, asked).manifest && files.unmeasured > 0;
          const crc32 = asked.format === "zip" && files.unmeasuredCrc32 > 0;
          if (sha256 || crc32) await files.measure(store, { sha256, crc32 });
          return files;
        }),
    );
  } catch (error) {
    await holds?.end(cart.id);
    throw error;
  }
  const { bundle, shared } = taken;
  let released = false;
  /** Ends this download's use of the plan, and the cart's hold when it was the last. */
  const release = async () => {
    if (released) return;
    released = true;
    const left = taken.release();
    if (holds) return await holds.end(cart.id);
    if (left === 0) await store.endHold(cart.id).catch((e) => holdNotRecorded(cart.id, e));
  };
  try {
    return await respond(store, request, cart, asked, bundle, release, shared, options);
  } catch (error) {
    await release();
    throw error;
  }
}

/** Logs a hold that could not be recorded (the download goes on). */
function holdNotRecorded(cartId: string, e: unknown): void {
  log.warn("could not record a download's hold on its cart", {
    cart: cartId,
    error: errorMessage(e),
  });
}

/**
 * The answer to a GET whose plan is `bundle` (null: the cart is gone). `release` is called
 * when the plan is no longer needed (at once, or when the body has been sent, cut off or
 * cancelled).
 */
async function respond(
  store: CartStore,
  request: Request,
  cart: Cart,
  asked: { name: string },
  bundle: Bundle | null,
  release: () => Promise<void>,
  shared: boolean,
  options: StreamOptions,
): Promise<Response> {
  if (!bundle) {
    await release();
    return gone();
  }
  const validators: Record<string, string> = {
    "ETag": bundle.etag,
    "Last-Modified": new Date(cart.readyAt ?? cart.updatedAt).toUTCString(),
  };
  if (!noneMatch(request.headers.get("if-none-match"), bundle.etag)) {
    // The client has these bytes: a use of the cart, without a body (RFC 9110, 15.4.5).
    await store.touch(cart.id);
    await release();
    return new Response(null, { status: 304, headers: validators });
  }
  const headers: Record<string, string> = {
    "Content-Type": "application/octet-stream",
    "Content-Disposition": contentDisposition(asked.name),
    "Accept-Ranges": "bytes",
    ...validators,
  };
  const ranges = rangeApplies(request.headers.get("if-range"), bundle.etag)
    ? parseRange(request.headers.get("range"), bundle.size)
    : null;
  if (ranges === "unsatisfiable") {
    await store.touch(cart.id);
    await release();
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
  const held = (body: ReadableStream<Uint8Array>, bytes: number) =>
    holdWhileSent(store, cart, body, bytes, release);
  if (ranges && ranges.length === 1) {
    const { start, end } = ranges[0];
    return new Response(held(bundle.stream(start, end, undefined, options), end - start + 1), {
      status: 206,
      headers: {
        ...headers,
        "Content-Range": `bytes ${start}-${end}/${bundle.size}`,
        "Content-Length": String(end - start + 1),
      },
    });
  }
  // Several ranges: RFC 9110 lets a server answer with the whole representation.
  return new Response(held(bundle.stream(0, bundle.size - 1, undefined, options), bundle.size), {
    status: 200,
    headers: { ...headers, "Content-Length": String(bundle.size) },
  });
}

/**
 * `body`, passed through unchanged, while the cart counts as used: its last use, which the
 * caller set {@linkcode DOWNLOAD_HOLD_MS} ahead, is moved that far ahead again every third of
 * that, so the LRU purge and retention (from whichever process) never delete the files of a
 * download in flight, whatever LRU_BUFFER_TIME is. `release` is called once, when the body is
 * sent, cut off or cancelled; when no other download of the cart is in flight in the
 * process, it makes the cart's last use that moment. A process that dies mid-download holds the
 * cart for at most {@linkcode DOWNLOAD_HOLD_MS}.
 *
 * A download that ends early is logged, not thrown at the server: a client that goes away at
 * INFO, files that can no longer be read (the cart removed meanwhile) at WARN. Then the body
 * just ends: the answer's `Content-Length` (of `bytes`) is not met, so the server cuts the
 * connection and the client sees a short body, as it would for an error, without the
 * server printing a raw stack trace.
 */
function holdWhileSent(
  store: CartStore,
  cart: Cart,
  body: ReadableStream<Uint8Array>,
  bytes: number,
  release: () => Promise<void>,
): ReadableStream<Uint8Array> {
  const cartId = cart.id;
  let sent = 0;
  const span = startSpan("cartd.download", {
    "cartd.uid": cart.uid,
    "cartd.cart": cartId,
    "cartd.bytes": bytes,
  });
  const hold = () =>
    store.touch(cartId, store.now() + DOWNLOAD_HOLD_MS).catch((e) => holdNotRecorded(cartId, e));
  const timer = setInterval(hold, DOWNLOAD_HOLD_MS / 3);
  let ended = false;
  const end = async (cut?: string) => {
    if (ended) return;
    ended = true;
    clearInterval(timer);
    span.set({ "cartd.sent": sent });
    span.end(cut);
    await release();
  };
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await reader.read();
        if (!done) {
          sent += value.length;
          return controller.enqueue(value);
        }
        await end(); // before the client sees the end
        controller.close();
      } catch (error) {
        await end(`the cart's files could not be read: ${errorMessage(error)}`);
        log.warn("download cut: the cart's files could not be read (removed meanwhile?)", {
          uid: cart.uid,
          cart: cartId,
          sent,
          bytes,
          error: errorMessage(error),
        });
        controller.close(); // short of Content-Length: the server cuts the connection
      }
    },
    async cancel(reason) {
      log.info("download cut by the client (connection closed)", {
        uid: cart.uid,
        cart: cartId,
        sent,
        bytes,
      });
      await end("cut by the client");
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}
