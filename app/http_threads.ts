/**
 * Downloads on every core: the API served by several HTTP threads (app/http_thread.ts), Web
 * Workers that each accept on the same port with `SO_REUSEPORT` (Linux spreads the
 * connections over them), each with the limits of app/server.ts, the connection cap held
 * for their sum. A thread sends the bytes of the downloads it accepted; every other request
 * it hands to the main thread's app (`handler`), so one app instance still answers them.
 *
 * The main thread counts the process's downloads in flight by cart ({@linkcode ProcessHolds}):
 * a cart's hold (http/download.ts) ends when its last download in the process ends, whichever
 * thread sent it.
 *
 * The port is first bound without `SO_REUSEPORT` and let go, so that a port another program
 * (another cartd too) holds fails as before, with `AddrInUse`; then the threads bind it.
 *
 * @module
 */
import type { Config } from "../lib/config/config.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import { watchHttpThreads } from "../lib/util/metrics.ts";
import type { CartStore } from "../lib/store/store.ts";
import { DOWNLOAD_HOLD_MS } from "../http/download.ts";
import type { FromHttpThread, ToHttpThread } from "./http_messages.ts";
import type { LimitedServer, ServerLimits } from "./server.ts";

/**
 * The thread's module, beside this one: `http_thread.ts` from source (and `deno compile`,
 * which embeds it through `--include app/http_thread.ts`), `http_thread.js` inside the bundle.
 */
const THREAD_MODULE = new URL(
  import.meta.url.endsWith(".ts") ? "./http_thread.ts" : "./http_thread.js",
  import.meta.url,
);

/** How long a stopping thread may take to finish its answers before it is terminated. */
const STOP_GRACE_MS = 10_000;

/**
 * Whether this process can run HTTP threads: `SO_REUSEPORT` needs `--unstable-net` (without
 * it, `Deno.listen({ reusePort })` ends the process), which also brings `Deno.listenDatagram`;
 * and the limited server needs `Deno.serveHttp`.
 */
export function canShareThePort(): boolean {
  const deno = Deno as unknown as Record<string, unknown>;
  return Deno.build.os === "linux" && typeof deno.listenDatagram === "function" &&
    typeof deno.serveHttp === "function";
}

/**
 * The downloads in flight of the process, by cart, as its HTTP threads report them; the last
 * one of a cart ends its hold.
 */
export class ProcessHolds {
  readonly #counts = new Map<string, number>();
  /** Counts for the process whose store is `store` (where holds are ended). */
  constructor(readonly store: CartStore) {}

  /** Downloads of the cart in flight in the HTTP threads. */
  downloads(cartId: string): number {
    return this.#counts.get(cartId) ?? 0;
  }

  /** A download of the cart began in a thread. */
  begin(cartId: string): void {
    this.#counts.set(cartId, this.downloads(cartId) + 1);
  }

  /**
   * A download of the cart ended; when it was the last, the hold ends. A download that began
   * in another thread while the hold was being ended (its own hold may have been written
   * before) gets the hold back.
   */
  async end(cartId: string): Promise<void> {
    const left = this.downloads(cartId) - 1;
    if (left > 0) return void this.#counts.set(cartId, left);
    this.#counts.delete(cartId);
    await this.store.endHold(cartId).catch((e) =>
      log.warn("could not record a download's hold on its cart", {
        cart: cartId,
        error: errorMessage(e),
      })
    );
    if (this.downloads(cartId) > 0) {
      await this.store.touch(cartId, this.store.now() + DOWNLOAD_HOLD_MS).catch(() => {});
    }
  }
}

/** What {@linkcode startHttpThreads} starts. */
export interface HttpThreadOptions {
  /** How many threads (at least 1). */
  threads: number;
  /** The address to listen on. */
  hostname: string;
  /** The port (0 picks a free one). */
  port: number;
  /** Each thread's server limits (the connection cap counts all threads' connections). */
  limits: ServerLimits;
  /** The settings each thread runs with. */
  config: Config;
  /** The process's downloads in flight, which the threads report to. */
  holds: ProcessHolds;
}

/** One HTTP thread and its open forwarded bodies. */
interface Thread {
  worker: Worker;
  /** Forwarded request bodies waiting for their next chunk, by request id. */
  pulls: Map<number, (message: Extract<FromHttpThread, { type: "body" }>) => void>;
  stopped: PromiseWithResolvers<void>;
}

/**
 * Starts `options.threads` HTTP threads on `hostname:port`, the requests they do not answer
 * themselves answered by `handler`. Throws as `Deno.listen` does when the port cannot be
 * bound (`AddrInUse`, …), or when a thread cannot load.
 */
export async function startHttpThreads(
  options: HttpThreadOptions,
  handler: (request: Request) => Response | Promise<Response>,
): Promise<LimitedServer> {
  const probe = Deno.listen({ hostname: options.hostname, port: options.port });
  const addr = probe.addr as Deno.NetAddr;
  probe.close();
  const openCount = new Int32Array(new SharedArrayBuffer(4));
  const threads: Thread[] = [];
  const deaf = watchHttpThreads();
  const start = (index: number) => {
    const worker = new Worker(THREAD_MODULE, { type: "module", name: `cartd-http-${index}` });
    const thread: Thread = { worker, pulls: new Map(), stopped: Promise.withResolvers() };
    threads.push(thread);
    const listening = Promise.withResolvers<void>();
    worker.onmessage = (event: MessageEvent<FromHttpThread>) => {
      const message = event.data;
      switch (message.type) {
        case "listening":
          return listening.resolve();
        case "listenFailed": {
          const Known =
            (Deno.errors as unknown as Record<string, new (m: string) => Error>)[message.name];
          return listening.reject(Known ? new Known(message.message) : new Error(message.message));
        }
        case "request":
          return void answer(thread, message, handler);
        case "body": {
          const waiting = thread.pulls.get(message.id);
          thread.pulls.delete(message.id);
          return waiting?.(message);
        }
        case "begin":
          return options.holds.begin(message.cart);
        case "end":
          return void options.holds.end(message.cart).finally(() =>
            send(thread, { type: "ended", id: message.id })
          );
        case "stopped":
          return thread.stopped.resolve();
      }
    };
    worker.onerror = (event) => {
      event.preventDefault();
      log.error("an HTTP thread failed", { thread: index, error: event.message });
      listening.reject(new Error(`an HTTP thread could not start: ${event.message}`));
      thread.stopped.resolve();
    };
    send(thread, {
      type: "start",
      config: options.config,
      hostname: options.hostname,
      port: addr.port,
      limits: options.limits,
      openCount,
    });
    return listening.promise;
  };
  const stopAll = async () => {
    for (const t of threads) send(t, { type: "stop" });
    const grace = new Promise<void>((r) => Deno.unrefTimer(setTimeout(r, STOP_GRACE_MS)));
    await Promise.race([Promise.all(threads.map((t) => t.stopped.promise)), grace]);
    for (const t of threads) t.worker.terminate();
    deaf();
  };
  try {
    await start(0); // binds first, so that a failure is one error, not one per thread
    await Promise.all(Array.from({ length: options.threads - 1 }, (_, i) => start(i + 1)));
  } catch (e) {
    await stopAll();
    throw e;
  }
  log.info("the API accepts on every HTTP thread", {
    threads: options.threads,
    address: `${addr.hostname}:${addr.port}`,
  });
  let stopping: Promise<void> | null = null;
  return {
    addr,
    connections: () => Atomics.load(openCount, 0),
    shutdown: () => stopping ??= stopAll(),
  };
}

/** Sends `response` (its body whole) to `thread` as the answer to request `id`. */
async function reply(thread: Thread, id: number, response: Response): Promise<void> {
  const bytes = response.body ? await response.bytes() : null;
  send(thread, {
    type: "response",
    id,
    status: response.status,
    statusText: response.statusText,
    headers: [...response.headers],
    body: bytes && bytes.length ? bytes : null,
  }, bytes && bytes.length ? [bytes.buffer] : []);
}

function send(thread: Thread, message: ToHttpThread, transfer: Transferable[] = []): void {
  try {
    thread.worker.postMessage(message, transfer);
  } catch { /* the thread is gone */ }
}

/** Answers a request that `thread` forwarded, with `handler`, and sends the answer back. */
async function answer(
  thread: Thread,
  message: Extract<FromHttpThread, { type: "request" }>,
  handler: (request: Request) => Response | Promise<Response>,
): Promise<void> {
  const { id } = message;
  const body = message.hasBody
    ? new ReadableStream<Uint8Array>({
      pull: (controller) =>
        new Promise<void>((resolve) => {
          thread.pulls.set(id, (part) => {
            if (part.error) controller.error(new Error(part.error));
            else if (part.chunk) controller.enqueue(part.chunk);
            else controller.close();
            resolve();
          });
          send(thread, { type: "pull", id });
        }),
      cancel: () => {
        thread.pulls.delete(id);
        send(thread, { type: "cancelBody", id });
      },
    }, { highWaterMark: 0 })
    : null;
  try {
    const request = new Request(message.url, {
      method: message.method,
      headers: message.headers,
      body,
    });
    await reply(thread, id, await handler(request));
  } catch (e) {
    log.error("the API's handler failed", { url: message.url, error: errorMessage(e) });
    send(thread, { type: "failed", id, message: errorMessage(e) });
  } finally {
    if (body) {
      thread.pulls.delete(id);
      body.cancel().catch(() => {});
    }
  }
}
