/**
 * The webhook outbox: one row of `webhook_events` per event that a cart's webhook is to be
 * told (schema version 6). {@linkcode addCartEvent} writes the row in the transaction that
 * makes the cart ready or failed (`CartStore.markReady`, `CartStore.fail`), so that the state
 * change and its event are committed together or not at all; the event's id and body are
 * made then, once, and every attempt sends those same bytes. {@linkcode WebhookOutbox} is how
 * the delivery loop (lib/webhook/sender.ts) finds the events that are due, claims one for one
 * process at a time, and records how each attempt went.
 *
 * @module
 */
import type { Db } from "../db/db.ts";
import type { Row } from "../db/db.ts";

/** The kinds of event a webhook is told. */
export type WebhookEventType =
  /** The cart became ready for download. */
  | "cart.ready"
  /** The cart failed (its message says why). */
  | "cart.failed";

/** Where an event's delivery stands. */
export type WebhookEventStatus =
  /** Not delivered yet; tried again at `nextAt`. */
  | "pending"
  /** An attempt was answered with a 2xx status. */
  | "delivered"
  /** Not delivered within `CARTD_WEBHOOK_RETRY_FOR`: no attempt follows. */
  | "given_up";

/** One row of the outbox. */
export interface WebhookEvent {
  /** The event's id (a UUID): the same in the body and header of every attempt. */
  id: string;
  /** The internal id of the cart the event is about. */
  cartId: string;
  /** That cart's uid. */
  uid: string;
  /** What happened. */
  type: WebhookEventType;
  /** Where the event is POSTed. */
  url: string;
  /** The URL's host and port (`hooks.example.org:8443`), lowercase. */
  host: string;
  /** The JSON body, as sent on every attempt. */
  body: string;
  /** Where its delivery stands. */
  status: WebhookEventStatus;
  /** When the event happened (ms since the epoch). */
  createdAt: number;
  /** When the next attempt is due (ms since the epoch). */
  nextAt: number;
  /** Attempts made so far. */
  attempts: number;
  /** What the last failed attempt met (a status, a time-out …), or null. */
  lastError: string | null;
  /** When it was delivered or given up (ms since the epoch), or null. */
  doneAt: number | null;
}

/** What {@linkcode addCartEvent} reads of the cart (a `Cart` of lib/store/store.ts fits). */
export interface EventCart {
  /** Internal id. */
  id: string;
  /** The client's label. */
  uid: string;
  /** The URL the cart's document named, or null. */
  webhook: string | null;
  /** The state the cart is in now (`ready` or `error`). */
  status: string;
  /** Why it failed (empty when ready). */
  message: string;
  /** Files in the cart. */
  fileCount: number;
  /** Sum of their sizes, once known. */
  totalBytes: number | null;
  /** Files recorded as staged. */
  stagedFiles: number;
  /** Files recorded as failed. */
  errorFiles: number;
  /** Length of the default download, once ready. */
  downloadSize: number | null;
  /** Its ETag, once ready. */
  downloadEtag: string | null;
}

/**
 * The JSON body of an event (docs/api.md, "Webhooks"): `id`, `type`, `time` (ISO 8601) and
 * the cart's `uid`, `state`, `message` and figures at that moment.
 */
export function eventBody(id: string, type: WebhookEventType, at: number, cart: EventCart): string {
  return JSON.stringify({
    id,
    type,
    time: new Date(at).toISOString(),
    cart: {
      uid: cart.uid,
      state: cart.status,
      message: cart.message,
      files: cart.fileCount,
      bytes: cart.totalBytes,
      staged_files: cart.stagedFiles,
      failed_files: cart.errorFiles,
      download_size: cart.downloadSize,
      download_etag: cart.downloadEtag,
    },
  });
}

/**
 * Writes the event of `cart`'s change to `type` into the outbox, inside the caller's
 * transaction `tx`, due at once; nothing when the cart names no webhook. Returns the
 * event's id, or null.
 */
export async function addCartEvent(
  tx: Db,
  cart: EventCart,
  type: WebhookEventType,
  now: number,
): Promise<string | null> {
  if (cart.webhook === null) return null;
  const id = crypto.randomUUID();
  await tx.run(
    `INSERT INTO webhook_events (id, cart_id, uid, type, url, host, body, status, created_at,
      next_at, attempts)
     VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, 0)`,
    [
      id,
      cart.id,
      cart.uid,
      type,
      cart.webhook,
      new URL(cart.webhook).host.slice(0, 255),
      eventBody(id, type, now, cart),
      now,
      now,
    ],
  );
  return id;
}

const numOrNull = (v: unknown): number | null => v === null || v === undefined ? null : Number(v);

function toEvent(r: Row): WebhookEvent {
  return {
    id: String(r.id),
    cartId: String(r.cart_id),
    uid: String(r.uid),
    type: String(r.type) as WebhookEventType,
    url: String(r.url),
    host: String(r.host),
    body: String(r.body),
    status: String(r.status) as WebhookEventStatus,
    createdAt: Number(r.created_at),
    nextAt: Number(r.next_at),
    attempts: Number(r.attempts),
    lastError: r.last_error === null || r.last_error === undefined ? null : String(r.last_error),
    doneAt: numOrNull(r.done_at),
  };
}

/** Longest `last_error` kept, in characters. */
const MAX_ERROR = 500;

/**
 * The outbox as the delivery loop uses it. Each method is one statement; a claim is a
 * conditional update, so that among every process on the database exactly one holds an
 * event at a time (until its claim lapses: a process that died mid-attempt leaves the
 * event to another after `ttlMs`).
 */
export class WebhookOutbox {
  /** The outbox on `db`; `now` gives the time in ms since the epoch (tests replace it). */
  constructor(readonly db: Db, readonly now: () => number = Date.now) {}

  /**
   * Up to `limit` pending events that are due and that nobody holds, the oldest due first,
   * with their hosts; none for the hosts of `busy` (the caller has as many attempts in flight
   * to them as it allows), so a host that hangs never keeps the others' events waiting.
   */
  async due(limit: number, busy: readonly string[] = []): Promise<{ id: string; host: string }[]> {
    const now = this.now();
    const hosts = busy.length ? `AND host NOT IN (${busy.map(() => "?").join(", ")})` : "";
    const rows = await this.db.all<{ id: string; host: string }>(
      `SELECT id, host FROM webhook_events WHERE status = 'pending' AND next_at <= ?
        AND (claim_owner IS NULL OR claim_expires < ?) ${hosts}
       ORDER BY next_at LIMIT ${Math.max(1, Math.floor(limit))}`,
      [now, now, ...busy],
    );
    return rows.map((r) => ({ id: String(r.id), host: String(r.host) }));
  }

  /**
   * Claims the due event `id` for `owner` until `ttlMs` from now and counts the attempt.
   * Returns the event, or null when it is not due, not pending, or another owner holds it.
   */
  async claim(id: string, owner: string, ttlMs: number): Promise<WebhookEvent | null> {
    const now = this.now();
    const { changes } = await this.db.run(
      `UPDATE webhook_events SET claim_owner = ?, claim_expires = ?, attempts = attempts + 1
       WHERE id = ? AND status = 'pending' AND next_at <= ?
        AND (claim_owner IS NULL OR claim_expires < ?)`,
      [owner, now + ttlMs, id, now, now],
    );
    return changes === 1 ? await this.event(id) : null;
  }

  /** Records that `owner`'s attempt was answered with a 2xx status; false when not its claim. */
  async delivered(id: string, owner: string): Promise<boolean> {
    const { changes } = await this.db.run(
      `UPDATE webhook_events SET status = 'delivered', done_at = ?, last_error = NULL,
        claim_owner = NULL, claim_expires = NULL
       WHERE id = ? AND claim_owner = ? AND status = 'pending'`,
      [this.now(), id, owner],
    );
    return changes === 1;
  }

  /**
   * Records that `owner`'s attempt failed with `error`: the next is due at `nextAt`, or with
   * null, the event is given up. False when the claim was not `owner`'s.
   */
  async failed(id: string, owner: string, error: string, nextAt: number | null): Promise<boolean> {
    const now = this.now();
    const { changes } = await this.db.run(
      `UPDATE webhook_events SET status = ?, next_at = ?, last_error = ?, done_at = ?,
        claim_owner = NULL, claim_expires = NULL
       WHERE id = ? AND claim_owner = ? AND status = 'pending'`,
      [
        nextAt === null ? "given_up" : "pending",
        nextAt ?? now,
        error.slice(0, MAX_ERROR),
        nextAt === null ? now : null,
        id,
        owner,
      ],
    );
    return changes === 1;
  }

  /** The event `id`, or null. */
  async event(id: string): Promise<WebhookEvent | null> {
    const rows = await this.db.all("SELECT * FROM webhook_events WHERE id = ?", [id]);
    return rows.length ? toEvent(rows[0]) : null;
  }

  /** The events of cart `cartId` (live or not), oldest first. */
  async eventsOf(cartId: string): Promise<WebhookEvent[]> {
    const rows = await this.db.all(
      "SELECT * FROM webhook_events WHERE cart_id = ? ORDER BY created_at, id",
      [cartId],
    );
    return rows.map(toEvent);
  }

  /** How many events are pending, due or not. */
  async pending(): Promise<number> {
    const [row] = await this.db.all(
      "SELECT COUNT(*) AS n FROM webhook_events WHERE status = 'pending'",
    );
    return Number(row.n);
  }

  /** Removes delivered and given-up events done before `before`; returns how many. */
  async prune(before: number): Promise<number> {
    const { changes } = await this.db.run(
      "DELETE FROM webhook_events WHERE status <> 'pending' AND done_at < ?",
      [before],
    );
    return changes;
  }
}
