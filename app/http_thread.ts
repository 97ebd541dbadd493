/// <reference lib="deno.worker" />
/**
 * An HTTP thread: a Web Worker that accepts on the API's port (with `SO_REUSEPORT`, beside
 * the other HTTP threads, app/http_threads.ts) through the same limited server as ever
 * (app/server.ts), and answers `GET /{uid}` downloads itself, with its own database
 * connection: the plan, the `Range`, the ETag, the bytes. Every other request is handed to
 * the main thread's API and its answer handed back, so posting, status, deleting, metrics and
 * the estimate behave exactly as with one thread (a big POSTed document is read, checked and
 * stored by a thread of its own, app/documents.ts). The process's downloads in flight are
 * counted in the main thread, which ends a cart's hold after its last one.
 *
 * @module
 */
import { openDb } from "../lib/db/open.ts";
import type { Db } from "../lib/db/db.ts";
import { CartStore } from "../lib/store/store.ts";
import { Volume } from "../lib/volume/volume.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import { paceHeap } from "../lib/util/memory.ts";
import { recordMetric } from "../lib/util/metric_events.ts";
import type { Bundle } from "../lib/bundle/plan.ts";
import { Downloads } from "../http/downloads.ts";
import { downloadRoutes } from "../http/routes.ts";
import type { FromHttpThread, ToHttpThread } from "./http_messages.ts";
import { copiesChunks, type LimitedServer, serveLimited } from "./server.ts";

const post = (message: FromHttpThread, transfer: Transferable[] = []) =>
  self.postMessage(message, transfer);

let nextId = 1;
/** Forwarded requests waiting for their answer. */
const answers = new Map<number, PromiseWithResolvers<Response>>();
/** The bodies of forwarded requests, read as the main thread pulls them. */
const bodies = new Map<number, ReadableStreamDefaultReader<Uint8Array>>();
/** Hold ends waiting for the main thread. */
const ends = new Map<number, () => void>();

/** Hands `request` to the main thread's API; resolves with its answer. */
function forward(request: Request): Promise<Response> {
  const id = nextId++;
  const waiting = Promise.withResolvers<Response>();
  answers.set(id, waiting);
  if (request.body) bodies.set(id, request.body.getReader());
  post({
    type: "request",
    id,
    method: request.method,
    url: request.url,
    headers: [...request.headers],
    hasBody: request.body !== null,
  });
  return waiting.promise.finally(() => {
    const reader = bodies.get(id);
    bodies.delete(id);
    reader?.cancel().catch(() => {});
  });
}

/** Sends the next chunk of forwarded body `id` to the main thread. */
async function pull(id: number): Promise<void> {
  const reader = bodies.get(id);
  if (!reader) return post({ type: "body", id, chunk: null });
  try {
    const { done, value } = await reader.read();
    if (done) {
      bodies.delete(id);
      return post({ type: "body", id, chunk: null });
    }
    // A chunk may be a view of a larger buffer: copy what is not whole before handing it over.
    const whole = value.byteOffset === 0 && value.byteLength === value.buffer.byteLength &&
      value.buffer instanceof ArrayBuffer;
    const chunk = whole ? value as Uint8Array<ArrayBuffer> : value.slice();
    post({ type: "body", id, chunk }, [chunk.buffer]);
  } catch (e) {
    bodies.delete(id);
    post({ type: "body", id, chunk: null, error: errorMessage(e) });
  }
}

/** Download bytes not yet reported to the main thread's metrics. */
let unreported = 0;
let reportTimer: ReturnType<typeof setTimeout> | undefined;
const report = (inFlight: 1 | 0 | -1) => {
  recordMetric({ kind: "download", inFlight, bytes: unreported });
  unreported = 0;
};

/** `body`, its bytes counted for the main thread's metrics (a few times a second). */
function counted(body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let open = true;
  report(1);
  const ended = () => {
    if (open) report(-1);
    open = false;
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await reader.read();
        if (done) {
          ended();
          return controller.close();
        }
        unreported += value.byteLength;
        reportTimer ??= setTimeout(() => {
          reportTimer = undefined;
          if (unreported > 0) report(0);
        }, 250);
        controller.enqueue(value);
      } catch (error) {
        ended();
        controller.error(error);
      }
    },
    async cancel(reason) {
      ended();
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

let server: LimitedServer | null = null;
let db: Db | null = null;

async function start(message: Extract<ToHttpThread, { type: "start" }>): Promise<void> {
  const { config } = message;
  log.setLevel(config.logLevel);
  log.setFormat(config.logFormat);
  paceHeap({ slackBytes: config.limits.gcSlackBytes });
  db = await openDb(config.database);
  const store = new CartStore(db);
  const volume = new Volume(config.volumePath);
  const holds = {
    begin: (cart: string) => post({ type: "begin", cart }),
    end: (cart: string) =>
      new Promise<void>((resolve) => {
        const id = nextId++;
        ends.set(id, resolve);
        post({ type: "end", id, cart });
      }),
  };
  const handler = downloadRoutes(
    {
      store,
      volume,
      downloads: new Downloads<Bundle>(),
      holds,
      counted,
      lendChunks: copiesChunks(),
    },
    forward,
  );
  try {
    server = serveLimited({
      hostname: message.hostname,
      port: message.port,
      reusePort: true,
      openCount: message.openCount,
      ...message.limits,
    }, handler);
  } catch (e) {
    const error = e instanceof Error ? e : new Error(String(e));
    await db.close().catch(() => {});
    return post({ type: "listenFailed", name: error.name, message: error.message });
  }
  post({ type: "listening", port: server.addr.port });
}

async function stop(): Promise<void> {
  await server?.shutdown();
  await db?.close().catch(() => {});
  post({ type: "stopped" });
  self.close();
}

self.onmessage = (event: MessageEvent<ToHttpThread>) => {
  const message = event.data;
  switch (message.type) {
    case "start":
      return void start(message).catch((e) =>
        post({ type: "listenFailed", name: "Error", message: errorMessage(e) })
      );
    case "response": {
      const waiting = answers.get(message.id);
      answers.delete(message.id);
      waiting?.resolve(
        new Response(message.body, {
          status: message.status,
          statusText: message.statusText,
          headers: message.headers,
        }),
      );
      return;
    }
    case "failed": {
      const waiting = answers.get(message.id);
      answers.delete(message.id);
      waiting?.reject(new Error(message.message));
      return;
    }
    case "pull":
      return void pull(message.id);
    case "cancelBody": {
      const reader = bodies.get(message.id);
      bodies.delete(message.id);
      reader?.cancel().catch(() => {});
      return;
    }
    case "ended": {
      const resolve = ends.get(message.id);
      ends.delete(message.id);
      resolve?.();
      return;
    }
    case "stop":
      return void stop();
  }
};
