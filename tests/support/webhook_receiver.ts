/**
 * A webhook receiver for tests: a real HTTP server on 127.0.0.1 that records every request
 * (headers, body, time, whether the client went away) and answers as the test says: at
 * once, after a delay, never (until the client gives up), or with a redirect. It checks each
 * request's signature itself with `node:crypto`, independently of cartd's code.
 *
 * @module
 */
import { createHmac, timingSafeEqual } from "node:crypto";

/** One request the receiver got. */
export interface Received {
  /** The path and query. */
  path: string;
  /** The request's headers. */
  headers: Headers;
  /** The body, as text. */
  body: string;
  /** The body, parsed. */
  json: Record<string, unknown>;
  /** When it came (performance.now()). */
  at: number;
  /** Whether the signature verifies under the receiver's secret. */
  signed: boolean;
  /** Aborts when the client closed the connection before the answer. */
  gone: AbortSignal;
}

/** What the receiver answers to a request: a Response, or `"hang"` (no answer, ever). */
export type Answer = Response | "hang";

/** A running receiver. */
export interface Receiver extends AsyncDisposable {
  /** Its base URL, `http://127.0.0.1:PORT/`. */
  url: string;
  /** Its port. */
  port: number;
  /** The requests so far, in order. */
  received: Received[];
  /** Changes how it answers from now on (`n`: the request's number, from 1). */
  answer(next: (request: Received, n: number) => Answer | Promise<Answer>): void;
  /** Stops it (hanging requests are answered first). */
  close(): Promise<void>;
}

/** Whether `signature` is `sha256=` HMAC-SHA256 of `timestamp.body` under `secret`. */
export function verifies(secret: string, timestamp: string, body: string, signature: string) {
  const expected = Buffer.from(
    "sha256=" + createHmac("sha256", secret).update(`${timestamp}.${body}`).digest("hex"),
  );
  const given = Buffer.from(signature);
  return expected.length === given.length && timingSafeEqual(expected, given);
}

/** Starts a receiver that checks signatures under `secret`; it answers 200 until told otherwise. */
export function startReceiver(secret: string): Receiver {
  const received: Received[] = [];
  let answerWith: (request: Received, n: number) => Answer | Promise<Answer> = () =>
    new Response("ok");
  const closing = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (request) => {
      const body = await request.text();
      let json: Record<string, unknown> = {};
      try {
        json = JSON.parse(body);
      } catch { /* recorded as it is */ }
      const url = new URL(request.url);
      const got: Received = {
        path: url.pathname + url.search,
        headers: request.headers,
        body,
        json,
        at: performance.now(),
        signed: verifies(
          secret,
          request.headers.get("x-cartd-timestamp") ?? "",
          body,
          request.headers.get("x-cartd-signature") ?? "",
        ),
        gone: request.signal,
      };
      received.push(got);
      const answer = await answerWith(got, received.length);
      if (answer !== "hang") return answer;
      // No answer: wait until the client gives up, or the receiver closes.
      await new Promise<void>((resolve) => {
        request.signal.addEventListener("abort", () => resolve(), { once: true });
        closing.signal.addEventListener("abort", () => resolve(), { once: true });
      });
      return new Response("too late", { status: 504 });
    },
  );
  const port = server.addr.port;
  const close = async () => {
    closing.abort();
    await server.shutdown();
  };
  return {
    url: `http://127.0.0.1:${port}/`,
    port,
    received,
    answer(next) {
      answerWith = next;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** A receiver that never answers: see {@linkcode startHangingReceiver}. */
export interface HangingReceiver extends AsyncDisposable {
  /** Its base URL. */
  url: string;
  /** The requests so far; `gone` aborts when the client closes its connection. */
  received: Received[];
  /** Stops it, closing every connection. */
  close(): Promise<void>;
}

/**
 * A receiver that reads each request and never answers, on plain TCP, so that it sees the
 * very moment the client closes the connection (its read ends): `Deno.serve` does not always
 * tell a handler that waits.
 */
export function startHangingReceiver(secret: string): HangingReceiver {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const received: Received[] = [];
  const conns = new Set<Deno.Conn>();
  const serveOne = async (conn: Deno.Conn) => {
    conns.add(conn);
    const gone = new AbortController();
    let text = "";
    const buffer = new Uint8Array(65536);
    const decoder = new TextDecoder();
    let recorded = false;
    try {
      for (;;) {
        const n = await conn.read(buffer);
        if (n === null) break;
        text += decoder.decode(buffer.subarray(0, n), { stream: true });
        const end = text.indexOf("\r\n\r\n");
        if (recorded || end < 0) continue;
        const [start, ...lines] = text.slice(0, end).split("\r\n");
        const headers = new Headers(lines.map((l) => {
          const at = l.indexOf(":");
          return [l.slice(0, at).trim(), l.slice(at + 1).trim()] as [string, string];
        }));
        const length = Number(headers.get("content-length") ?? 0);
        const body = text.slice(end + 4);
        if (new TextEncoder().encode(body).length < length) continue;
        recorded = true;
        let json: Record<string, unknown> = {};
        try {
          json = JSON.parse(body);
        } catch { /* recorded as it is */ }
        received.push({
          path: start.split(" ")[1],
          headers,
          body,
          json,
          at: performance.now(),
          signed: verifies(
            secret,
            headers.get("x-cartd-timestamp") ?? "",
            body,
            headers.get("x-cartd-signature") ?? "",
          ),
          gone: gone.signal,
        });
      }
    } catch {
      /* reset, or closed by close() */
    } finally {
      gone.abort();
      conns.delete(conn);
      try {
        conn.close();
      } catch { /* closed already */ }
    }
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) serveOne(conn);
    } catch { /* closed */ }
  })();
  const close = async () => {
    listener.close();
    for (const conn of conns) {
      try {
        conn.close();
      } catch { /* closed already */ }
    }
    await accepting;
  };
  const port = (listener.addr as Deno.NetAddr).port;
  return { url: `http://127.0.0.1:${port}/`, received, close, [Symbol.asyncDispose]: close };
}
