/**
 * The metrics route, in the Prometheus text format (lib/util/metrics.ts has the metrics):
 *
 * - `GET /_cartd/metrics` always: two segments, so it is never a cart's uid.
 * - `GET /metrics`, the path Prometheus scrapes by default, only while no live cart has the
 *   uid `metrics`: SPEC §1 lets a cart be called so, and then every method of `/metrics` is
 *   that cart's, as before. (`HEAD`, `POST` and `DELETE /metrics` are always the cart's.)
 *
 * Each scrape reads the global figures (carts by state in one grouped COUNT, and the space
 * report) from the database. The same module counts, as the answers go out, what only the
 * HTTP layer sees: carts posted and deleted, download bytes sent and downloads in flight.
 *
 * @module
 */
import { CART_STATUSES } from "../lib/cart/state.ts";
import type { Space } from "../lib/space/space.ts";
import type { CartStore } from "../lib/store/store.ts";
import {
  countCartEvent,
  exposition,
  type GlobalFigures,
  METRICS_CONTENT_TYPE,
  startDownload,
} from "../lib/util/metrics.ts";

/** What the handlers of {@linkcode mountMetrics} read and set of a request's context. */
export interface MetricsContext {
  /** The request. */
  req: { method: string; raw: Request };
  /** The answer (set after `next()`; a middleware may replace it). */
  res: Response;
}

/** A handler of {@linkcode MetricsApp}: answers, or hands over to the next route. */
export type MetricsHandler = (
  c: MetricsContext,
  next: () => Promise<void>,
) => Promise<Response | void> | Response;

/** The part of the cart API's app (a Hono app) that {@linkcode mountMetrics} uses. */
export interface MetricsApp {
  /** Adds a middleware on `path`. */
  use(path: string, handler: MetricsHandler): unknown;
  /** Adds a GET (and so HEAD) route on `path`. */
  get(path: string, handler: MetricsHandler): unknown;
}

/** cartd's own path of the metrics, which no cart uid can take. */
export const METRICS_PATH = "/_cartd/metrics";
/** The conventional path, served while no live cart has the uid {@linkcode ALIAS_UID}. */
export const METRICS_ALIAS = "/metrics";
/** The uid that {@linkcode METRICS_ALIAS} would be as a cart. */
const ALIAS_UID = "metrics";

/** Where the route reads the global figures. */
export interface MetricsSources {
  /** The carts by state. */
  store: CartStore;
  /** The space figures; without it they are not shown. */
  space?: Pick<Space, "report">;
  /** The cart `uid` as the request's principal sees it (http/access.ts), for `/metrics`. */
  find?: (request: Request, uid: string) => Promise<unknown>;
}

/** The figures the database and the volume hold now. */
async function globalFigures(sources: MetricsSources): Promise<GlobalFigures> {
  const counted = await sources.store.liveCartsByStatus();
  const carts: Record<string, number> = {};
  for (const status of CART_STATUSES) carts[status] = counted[status] ?? 0;
  const report = await sources.space?.report();
  if (!report) return { carts };
  return {
    carts,
    space: {
      capacity: report.volumeSize,
      reserved: report.reserved,
      used: Math.max(0, report.reserved - report.outstanding),
      free: report.free,
    },
  };
}

/** The metrics answer. */
async function metricsAnswer(sources: MetricsSources): Promise<Response> {
  const text = await exposition(await globalFigures(sources));
  return new Response(text, { status: 200, headers: { "Content-Type": METRICS_CONTENT_TYPE } });
}

/** `body` passed through unchanged, its bytes counted as a download's. */
function counted(body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const download = startDownload();
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await reader.read();
        if (done) {
          download.ended();
          return controller.close();
        }
        download.sent(value.byteLength);
        controller.enqueue(value);
      } catch (error) {
        download.ended();
        controller.error(error);
      }
    },
    async cancel(reason) {
      download.ended();
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/**
 * Adds the metrics routes to `app`, and the counting of what the answers of `/{uid}` tell.
 * Call it before the `/{uid}` routes, so that the counting wraps them and `GET /metrics` is
 * asked first.
 */
export function mountMetrics(app: MetricsApp, sources: MetricsSources): void {
  app.use("/:uid", async (c, next) => {
    await next();
    const { method } = c.req;
    const { status, body } = c.res;
    if (method === "POST" && status === 201) countCartEvent("posted");
    else if (method === "DELETE" && status === 200) countCartEvent("deleted");
    else if (
      method === "GET" && (status === 200 || status === 206) && body &&
      c.res.headers.get("content-type") === "application/octet-stream"
    ) {
      c.res = new Response(counted(body), c.res);
    }
  });
  const liveCart = (_: Request, uid: string) => sources.store.liveCart(uid);
  app.get(METRICS_PATH, () => metricsAnswer(sources));
  app.get(METRICS_ALIAS, async (c, next) => {
    // Hono answers HEAD through GET routes: a HEAD is the cart's status, always.
    if (c.req.method === "HEAD" || await (sources.find ?? liveCart)(c.req.raw, ALIAS_UID)) {
      return await next();
    }
    return await metricsAnswer(sources);
  });
}
