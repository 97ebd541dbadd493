/**
 * The messages between the main thread and its HTTP threads (app/http_threads.ts and
 * app/http_thread.ts).
 *
 * @module
 */
import type { Config } from "../lib/config/config.ts";
import type { ServerLimits } from "./server.ts";

/** What the main thread tells an HTTP thread. */
export type ToHttpThread =
  | {
    /** Listen and serve. */
    type: "start";
    config: Config;
    hostname: string;
    port: number;
    limits: ServerLimits;
    /** The connections open in the process (element 0), shared by every thread's server. */
    openCount: Int32Array;
  }
  | {
    /** The answer to a forwarded request (its body whole; null for none). */
    type: "response";
    id: number;
    status: number;
    statusText: string;
    headers: [string, string][];
    body: Uint8Array<ArrayBuffer> | null;
  }
  /** A forwarded request failed in the main thread (answered 500 there already logged). */
  | { type: "failed"; id: number; message: string }
  /** The main thread wants the next chunk of a forwarded request's body. */
  | { type: "pull"; id: number }
  /** The main thread read no further of a forwarded request's body. */
  | { type: "cancelBody"; id: number }
  /** The download hold asked for by `end` was dealt with. */
  | { type: "ended"; id: number }
  /** Stop accepting, finish the answers in flight, close the database. */
  | { type: "stop" };

/** What an HTTP thread tells the main thread. */
export type FromHttpThread =
  | { type: "listening"; port: number }
  | { type: "listenFailed"; name: string; message: string }
  /** A request the thread does not answer itself (all but downloads). */
  | {
    type: "request";
    id: number;
    method: string;
    url: string;
    headers: [string, string][];
    hasBody: boolean;
  }
  /** The next chunk of a forwarded request's body (null: its end), or why it failed. */
  | { type: "body"; id: number; chunk: Uint8Array<ArrayBuffer> | null; error?: string }
  /** A download of the cart begins in the thread. */
  | { type: "begin"; cart: string }
  /** That download ended; answered by `ended` with the same id. */
  | { type: "end"; id: number; cart: string }
  | { type: "stopped" };
