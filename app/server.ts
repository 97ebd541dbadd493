/**
 * The API's HTTP server: an accept loop of its own over `Deno.listen`, each connection served
 * by `Deno.serveHttp`, with the limits `Deno.serve` (Deno 2.9) does not offer:
 *
 * - a connection cap: a connection beyond it gets a 503 at once and is closed;
 * - a header limit (a connection's first request head must arrive within it) and an idle limit
 *   (between two requests), after which the connection is closed;
 * - a minimum rate for large bodies (those with a `Content-Length` of at least 64 KiB): a
 *   client that reads less than that in one window has its answer cut, and the body's stream is
 *   cancelled, which ends a download's purge hold (http/download.ts);
 * - an accept that fails (EMFILE: `Too many open files`) is logged once per burst and tried
 *   again later, while the connections already open go on being served. (`Deno.serve`'s accept
 *   loop instead stops for good at the first EMFILE and rejects its `finished` promise, which
 *   nobody awaits: the process exited 1.)
 *
 * `Deno.serveHttp` is deprecated and absent from Deno 2's type declarations, but present in the
 * runtime (it serves the 1 GiB download as fast as `Deno.serve`, see docs/operations.md); where
 * it is missing, the server falls back to `Deno.serve` without the limits, and says so.
 *
 * @module
 */
import { errorMessage, log } from "../lib/util/log.ts";

/** What the server tells the handler of a request besides the request: the peer's address. */
export interface ServeInfo {
  /** The address of the connection's other end (a proxy's, behind one). */
  remoteAddr: Deno.NetAddr;
}

/** Answers one request; `info` says where it came from. */
export type ServeHandler = (request: Request, info: ServeInfo) => Response | Promise<Response>;

/** The limits of {@linkcode serveLimited}; times in milliseconds, 0 turns a limit off. */
export interface ServerLimits {
  /** Most connections open at once (CARTD_MAX_CONNECTIONS). */
  maxConnections: number;
  /** Time from a connection's start to its first complete request head (CARTD_HEADER_TIMEOUT). */
  headerTimeoutMs: number;
  /** Time from the end of an answer to the next complete request head (CARTD_IDLE_TIMEOUT). */
  idleTimeoutMs: number;
  /** Least bytes per second a client must read of a large answer (CARTD_MIN_DOWNLOAD_RATE). */
  minRate: number;
  /** The window over which that rate is measured (CARTD_RATE_WINDOW). */
  rateWindowMs: number;
}

/** Where {@linkcode serveLimited} listens, and its limits. */
export interface ServerOptions extends ServerLimits {
  /** The address to listen on. */
  hostname: string;
  /** The port (0 picks a free one). */
  port: number;
  /**
   * Listen with `SO_REUSEPORT` (Linux; needs `--unstable-net`), so that several threads of
   * this process each accept on the same port (app/http_threads.ts).
   */
  reusePort?: boolean;
  /**
   * The connections open in the whole process, shared by the servers of several threads
   * (`Int32Array` over a `SharedArrayBuffer`, element 0): the cap `maxConnections` holds
   * for their sum. Without it, the server counts its own.
   */
  openCount?: Int32Array;
}

/** A running server. */
export interface LimitedServer {
  /** The address it listens on. */
  readonly addr: Deno.NetAddr;
  /** The connections open now. */
  connections(): number;
  /** Stops accepting, closes idle connections, and resolves when every answer in flight is sent. */
  shutdown(): Promise<void>;
}

/** One request of a connection served by `Deno.serveHttp` (its types left Deno 2's declarations). */
interface RequestEvent {
  readonly request: Request;
  respondWith(response: Response | Promise<Response>): Promise<void>;
}

/** A connection served by `Deno.serveHttp`. */
interface HttpConn {
  nextRequest(): Promise<RequestEvent | null>;
  close(): void;
}

/** Bodies at least this large (by `Content-Length`) are held to the minimum rate. */
const RATE_CHECKED_BYTES = 64 * 1024;

/** The answer to a connection beyond the cap, written before it is closed. */
const BUSY = (() => {
  const body = JSON.stringify({
    message: "cartd has as many connections open as it takes (CARTD_MAX_CONNECTIONS); " +
      "try again shortly",
  });
  return new TextEncoder().encode(
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n" +
      `Content-Length: ${body.length}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n${body}`,
  );
})();

/** Refused connections whose request is read before they are closed, at most at once. */
const REFUSED_DRAINING = 64;

/** The longest a refused connection's request is read. */
const REFUSED_DRAIN_MS = 1000;

/** How long a connection whose answer says `Connection: close` stays open after it is sent. */
const CLOSE_LINGER_MS = 1000;

/** The pause after a failed accept: it doubles up to the last, while accepts keep failing. */
const ACCEPT_BACKOFF_MS = [10, 20, 50, 100, 200, 500, 1000];

/**
 * Whether {@linkcode serveLimited} serves through `Deno.serveHttp`, which is done with each
 * chunk of an answer's body (it copies it and writes it) before it asks for the next; so a
 * body may lend its chunks, filling the same buffers again (lib/bundle/plan.ts,
 * `StreamOptions.lend`; app/server_test.ts holds it to that). `Deno.serve`, the fallback,
 * keeps chunks queued after it asked for more: there, chunks must be given.
 */
export function copiesChunks(): boolean {
  return typeof (Deno as unknown as { serveHttp?: unknown }).serveHttp === "function";
}

/**
 * Serves `handler` on `options.hostname:options.port` within `options`' limits (see the
 * module doc). Throws as `Deno.listen` does when the address cannot be bound.
 */
export function serveLimited(
  options: ServerOptions,
  handler: ServeHandler,
): LimitedServer {
  const serveHttp = (Deno as unknown as { serveHttp?: (conn: Deno.Conn) => HttpConn }).serveHttp;
  if (typeof serveHttp !== "function") return fallback(options, handler);
  const listener = Deno.listen({
    hostname: options.hostname,
    port: options.port,
    ...(options.reusePort ? { reusePort: true } : {}),
  } as Deno.TcpListenOptions);
  /** Open connections, each with the way to close it when idle (at shutdown). */
  const open = new Map<Deno.Conn, { idle: boolean; close: () => void }>();
  /** The connections open in the process (all threads' servers), or only this server's. */
  const shared = options.openCount;
  const openNow = () => shared ? Atomics.load(shared, 0) : open.size;
  const served = new Set<Promise<void>>();
  let stopping = false;

  const serve = async (conn: Deno.Conn) => {
    const http = serveHttp(conn);
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      clearTimeout(timer);
      try {
        http.close();
      } catch { /* closed by the client */ }
    };
    const state = { idle: true, close };
    const info: ServeInfo = { remoteAddr: conn.remoteAddr as Deno.NetAddr };
    open.set(conn, state); // its place in a shared count was taken when it was accepted
    const wait = (ms: number) => ms > 0 ? setTimeout(close, ms) : undefined;
    let timer = wait(options.headerTimeoutMs);
    try {
      for (;;) {
        const event = await http.nextRequest().catch(() => null);
        if (!event) break;
        clearTimeout(timer);
        state.idle = false;
        const response = await answer(handler, event.request, info);
        await event.respondWith(limitRate(response, options, close)).catch(() => {});
        state.idle = true;
        if (stopping || closed) break;
        if (response.headers.get("connection") === "close") {
          // An answer that ends the connection (a 408: the rest of its body is never read).
          // Closed at once, the client's bytes still coming would make the kernel reset the
          // connection, and the client lose the answer unread: wait a moment first.
          await new Promise((r) => setTimeout(r, CLOSE_LINGER_MS));
          break;
        }
        timer = wait(options.idleTimeoutMs);
      }
    } finally {
      close();
      open.delete(conn);
      if (shared) Atomics.sub(shared, 0, 1);
    }
  };

  // A refused connection's request head is read first (HTTP clients take an answer that comes
  // before their request as a broken connection), then it gets the 503, and what more it sends
  // is read until it closes (closed with bytes unread, the client would see a reset, not the
  // 503): all within a second, and for at most REFUSED_DRAINING connections at once.
  let draining = 0;
  const refuse = async (conn: Deno.Conn) => {
    if (draining >= REFUSED_DRAINING) return conn.close();
    draining++;
    const timer = setTimeout(() => conn.close(), REFUSED_DRAIN_MS);
    try {
      const buffer = new Uint8Array(16 * 1024);
      let head = "";
      while (!head.includes("\r\n\r\n") && head.length < buffer.length) {
        const n = await conn.read(buffer);
        if (n === null) return;
        head += String.fromCharCode(...buffer.subarray(0, n));
      }
      await conn.write(BUSY);
      await conn.closeWrite();
      while (await conn.read(buffer) !== null);
    } catch {
      /* closed, by the client or by the timer */
    } finally {
      draining--;
      clearTimeout(timer);
      try {
        conn.close();
      } catch { /* closed by the timer */ }
    }
  };

  const accepting = (async () => {
    let failures = 0;
    let refused = 0;
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (stopping || e instanceof Deno.errors.BadResource) return;
        if (failures === 0) {
          log.error(
            "cannot accept a connection; cartd keeps serving the open ones and tries again",
            {
              error: errorMessage(e),
              open: openNow(),
              hint: "raise the descriptor limit (ulimit -n) or lower CARTD_MAX_CONNECTIONS",
            },
          );
        }
        const pause = ACCEPT_BACKOFF_MS[Math.min(failures, ACCEPT_BACKOFF_MS.length - 1)];
        failures++;
        await new Promise((r) => setTimeout(r, pause));
        continue;
      }
      if (failures > 0) {
        log.info("accepting connections again", { failedAccepts: failures, open: openNow() });
        failures = 0;
      }
      // A place is taken before the check, so that threads accepting at once never pass the
      // cap together.
      const before = shared ? Atomics.add(shared, 0, 1) : open.size;
      if (before >= options.maxConnections) {
        if (shared) Atomics.sub(shared, 0, 1);
        if (refused++ === 0) {
          log.warn("connection cap reached: new connections get 503 until some close", {
            cap: options.maxConnections,
          });
        }
        refuse(conn);
        continue;
      }
      if (refused > 0) {
        log.info("below the connection cap again", { refused });
        refused = 0;
      }
      const done: Promise<void> = serve(conn).finally(() => served.delete(done));
      served.add(done);
    }
  })();

  return {
    addr: listener.addr as Deno.NetAddr,
    connections: openNow,
    async shutdown() {
      if (stopping) return;
      stopping = true;
      listener.close();
      await accepting;
      for (const state of open.values()) if (state.idle) state.close();
      await Promise.all([...served]);
    },
  };
}

/** The handler's answer to `request`; a 500 when it throws (as `Deno.serve` answers). */
async function answer(
  handler: ServeHandler,
  request: Request,
  info: ServeInfo,
): Promise<Response> {
  try {
    return await handler(request, info);
  } catch (e) {
    log.error("the API's handler failed", { url: request.url, error: errorMessage(e) });
    return new Response("Internal Server Error", { status: 500 });
  }
}

/**
 * `response`, its body (when large) watched: when a window passes in which the client read
 * fewer than `minRate × window` bytes, the body is cancelled (a download's hold ends), the
 * answer cut and the connection closed (`cut`).
 */
function limitRate(response: Response, limits: ServerLimits, cut: () => void): Response {
  const length = Number(response.headers.get("content-length") ?? 0);
  const { minRate, rateWindowMs } = limits;
  if (!response.body || minRate <= 0 || rateWindowMs <= 0 || length < RATE_CHECKED_BYTES) {
    return response;
  }
  const reader = response.body.getReader();
  const least = minRate * rateWindowMs / 1000;
  let sent = 0;
  let inWindow = 0;
  let over = false;
  let controller: ReadableStreamDefaultController<Uint8Array> | null = null;
  const stop = () => {
    over = true;
    clearInterval(watch);
  };
  const watch = setInterval(() => {
    if (inWindow >= least) return void (inWindow = 0);
    stop();
    log.warn("cut an answer that the client read too slowly", {
      sent,
      of: length,
      rate: Math.round(inWindow * 1000 / rateWindowMs),
      least: minRate,
      hint: "CARTD_MIN_DOWNLOAD_RATE and CARTD_RATE_WINDOW set the limit",
    });
    const reason = new Error(`the client read fewer than ${minRate} bytes/s`);
    reader.cancel(reason).catch(() => {}); // ends a download's hold (http/download.ts)
    try {
      controller?.error(reason);
    } catch { /* already closed */ }
    cut();
  }, rateWindowMs);
  const watched = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
    async pull(c) {
      if (over) return;
      try {
        const { done, value } = await reader.read();
        if (done) {
          stop();
          return c.close();
        }
        sent += value.byteLength;
        inWindow += value.byteLength;
        c.enqueue(value);
      } catch (e) {
        stop();
        c.error(e);
      }
    },
    async cancel(reason) {
      stop();
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  return new Response(watched, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

/** Where `Deno.serveHttp` is gone: `Deno.serve` without the limits, its accept errors logged. */
function fallback(
  options: ServerOptions,
  handler: ServeHandler,
): LimitedServer {
  log.warn(
    "this Deno has no Deno.serveHttp: the API runs without its connection cap, time limits and " +
      "minimum rate (CARTD_MAX_CONNECTIONS, CARTD_HEADER_TIMEOUT, CARTD_IDLE_TIMEOUT, " +
      "CARTD_MIN_DOWNLOAD_RATE); run it on Deno 2.9",
  );
  const server = Deno.serve(
    { hostname: options.hostname, port: options.port, onListen: () => {} },
    (request, info) => handler(request, { remoteAddr: info.remoteAddr as Deno.NetAddr }),
  );
  server.finished.catch((e) => log.error("the API stopped accepting", { error: errorMessage(e) }));
  return {
    addr: server.addr,
    connections: () => 0,
    shutdown: () => server.shutdown(),
  };
}
