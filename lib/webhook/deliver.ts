/**
 * One delivery attempt of a webhook event: the URL's host resolved and checked again
 * (./allow.ts), then one `POST` of the event's body, signed, to exactly the addresses
 * checked (the connection's name lookup is answered with them, so nothing resolves the name
 * a second time between the check and the connection). The attempt ends at the answer's
 * status line and headers: the answer's body is never read (the connection is closed), a
 * redirect is never followed (it counts as a failed attempt), and the whole attempt, from the
 * name lookup on, has one time limit.
 *
 * The signature (docs/api.md, "Webhooks"): `X-Cartd-Signature: sha256=<hex>`, the
 * HMAC-SHA256 under `CARTD_WEBHOOK_SECRET` of the `X-Cartd-Timestamp` value, a `.`, and the
 * body's bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { signature } from "./deliver.ts";
 * assert.match(signature("a secret of 16+ chars", "1764633600", '{"id":"x"}'), /^sha256=[0-9a-f]{64}$/);
 * ```
 * @module
 */
import { createHmac } from "node:crypto";
import http from "node:http";
import https from "node:https";
import type { LookupAddress } from "node:dns";
import type { WebhookOutcome } from "../util/metrics.ts";
import { type Address, type AllowList, checkedAddresses, WebhookRefused } from "./allow.ts";

/** The headers of an event (their names, as docs/api.md gives them). */
export const HEADERS = {
  /** The event's id: the same on every attempt. */
  id: "X-Cartd-Event-Id",
  /** The event's type (`cart.ready`, `cart.failed`), also in the body. */
  type: "X-Cartd-Event",
  /** Seconds since the epoch when this attempt was signed. */
  timestamp: "X-Cartd-Timestamp",
  /** `sha256=` and the hex HMAC-SHA256 of `timestamp.body`. */
  signature: "X-Cartd-Signature",
} as const;

/** The signature header's value for `body` signed at `timestamp` (seconds, as text). */
export function signature(secret: string, timestamp: string, body: string): string {
  return "sha256=" + createHmac("sha256", secret).update(`${timestamp}.${body}`).digest("hex");
}

/**
 * How an attempt ended: `delivered` (a 2xx answer), the class of any other status (`3xx`:
 * a redirect, never followed; `4xx`, `5xx`, `1xx`), `timeout` (no answer within the time
 * limit), `error` (no answer: the connection failed) or `refused` (an address of the host is
 * not allowed now, or the name does not resolve: nothing was sent).
 */
export type DeliveryOutcome = Exclude<WebhookOutcome, "given_up">;

/** What one attempt came to. */
export interface AttemptResult {
  /** How it ended. */
  outcome: DeliveryOutcome;
  /** The answer's status, when there was one. */
  status?: number;
  /** What went wrong, for the log and `last_error` (absent when delivered). */
  error?: string;
}

/** The event to send: its id, type, URL and body, as the outbox keeps them. */
export interface OutgoingEvent {
  /** The event's id. */
  id: string;
  /** Its type. */
  type: string;
  /** Where it goes. */
  url: string;
  /** The JSON body. */
  body: string;
}

/** What an attempt needs besides the event. */
export interface AttemptOptions {
  /** `CARTD_WEBHOOK_SECRET`. */
  secret: string;
  /** `CARTD_WEBHOOK_ALLOW`. */
  allow: AllowList;
  /** The time limit of the whole attempt (ms). */
  timeoutMs: number;
  /** The `User-Agent` sent. */
  userAgent: string;
  /** Seconds since the epoch (tests pass their own clock). */
  now?: () => number;
  /** Resolves the host (tests pass their own; default: the system's resolver). */
  resolver?: (host: string) => Promise<Address[]>;
}

/** The outcome of a status code. */
function outcomeOf(status: number): DeliveryOutcome {
  if (status >= 200 && status < 300) return "delivered";
  if (status < 200) return "1xx";
  if (status < 400) return "3xx";
  return status < 500 ? "4xx" : "5xx";
}

/** Makes one attempt to deliver `event`; never throws (the result says what happened). */
export async function attemptDelivery(
  event: OutgoingEvent,
  options: AttemptOptions,
): Promise<AttemptResult> {
  const started = performance.now();
  const url = new URL(event.url);
  let addresses: Address[];
  try {
    addresses = await checkedAddresses(url, options.allow, options.timeoutMs, options.resolver);
  } catch (e) {
    const message = e instanceof WebhookRefused ? e.message : String(e);
    return { outcome: "refused", error: message };
  }
  const left = Math.max(1, options.timeoutMs - (performance.now() - started));
  const timestamp = String(Math.floor((options.now?.() ?? Date.now()) / 1000));
  const body = new TextEncoder().encode(event.body);
  const headers = {
    "Content-Type": "application/json",
    "Content-Length": String(body.byteLength),
    "User-Agent": options.userAgent,
    [HEADERS.id]: event.id,
    [HEADERS.type]: event.type,
    [HEADERS.timestamp]: timestamp,
    [HEADERS.signature]: signature(options.secret, timestamp, event.body),
  };
  return await new Promise<AttemptResult>((resolve) => {
    let settled = false;
    const settle = (result: AttemptResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(result);
    };
    const client = url.protocol === "https:" ? https : http;
    const request = client.request({
      protocol: url.protocol,
      host: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: url.port || (url.protocol === "https:" ? 443 : 80),
      path: url.pathname + url.search,
      method: "POST",
      headers,
      // A connection of its own (no pool), to the addresses checked above and no other.
      agent: false,
      lookup: (_host: string, opts: { all?: boolean }, callback: LookupCallback) => {
        if (opts?.all) callback(null, addresses as LookupAddress[]);
        else callback(null, addresses[0].address, addresses[0].family);
      },
    }, (answer) => {
      const status = answer.statusCode ?? 0;
      // The body is never read: the connection goes, with whatever the answer still holds.
      answer.destroy();
      request.destroy();
      const outcome = outcomeOf(status);
      settle(
        outcome === "delivered" ? { outcome, status } : {
          outcome,
          status,
          error: outcome === "3xx"
            ? `answered ${status} (a redirect, which cartd does not follow)`
            : `answered ${status}`,
        },
      );
    });
    const timer = setTimeout(() => {
      settle({ outcome: "timeout", error: `no answer within ${options.timeoutMs} ms` });
      request.destroy();
    }, left);
    request.on("error", (e: Error) => settle({ outcome: "error", error: e.message }));
    request.end(body);
  });
}

/** The callback of a `lookup` function of `node:http` (one address, or all of them). */
type LookupCallback = (
  error: Error | null,
  address: string | LookupAddress[],
  family?: number,
) => void;
