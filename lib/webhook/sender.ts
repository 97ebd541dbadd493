/**
 * The webhook delivery loop of a worker process: every second it asks the outbox
 * (lib/store/webhooks.ts) for due events, claims each for this process (one process at a
 * time holds an event, whichever worker processes share the database), and makes one
 * attempt (./deliver.ts) with the event's stored id and body. A failed attempt is tried
 * again after a growing delay (`CARTD_WEBHOOK_RETRY_DELAY`, doubled each time up to an hour;
 * lib/util/backoff.ts) for `CARTD_WEBHOOK_RETRY_FOR` after the event; then it is given up.
 *
 * The loop is apart from staging: it shares nothing with the carts' work but the database,
 * holds at most {@linkcode MAX_IN_FLIGHT} attempts at once and {@linkcode MAX_PER_HOST} to
 * one host, and each attempt has its time limit, so a slow or failing endpoint costs a few
 * sockets and timers, never a cart's time nor another endpoint's turn.
 * Delivery is at least once: a process that dies after sending and before recording leaves
 * the event to be sent again (same id) once its claim lapses.
 *
 * @module
 */
import { hostname } from "node:os";
import type { WebhookEvent, WebhookOutbox } from "../store/webhooks.ts";
import { backoffDelays, sleep } from "../util/backoff.ts";
import { errorMessage, log } from "../util/log.ts";
import { countWebhookDelivery } from "../util/metrics.ts";
import type { AllowList, Resolver } from "./allow.ts";
import { attemptDelivery, type AttemptResult } from "./deliver.ts";

/** Attempts one process makes at once. */
export const MAX_IN_FLIGHT = 16;
/** Attempts one process makes at once to one host (host and port of the URL). */
export const MAX_PER_HOST = 2;
/** How often the loop looks for due events (ms). */
export const POLL_MS = 1000;
/** The longest delay between two attempts (ms). */
export const MAX_RETRY_DELAY_MS = 3_600_000;
/** How long delivered and given-up events stay in the outbox (ms): a week. */
export const KEEP_DONE_MS = 7 * 86_400_000;
/** Time a claim lasts beyond the attempt's time limit (to record the result). */
const CLAIM_MARGIN_MS = 5000;
/** How often done events are pruned (ms). */
const PRUNE_EVERY_MS = 3_600_000;

/** The settings the loop runs by (`Config.webhooks`, its secret set). */
export interface SenderSettings {
  /** `CARTD_WEBHOOK_SECRET`. */
  secret: string;
  /** `CARTD_WEBHOOK_ALLOW`, compiled. */
  allow: AllowList;
  /** `CARTD_WEBHOOK_TIMEOUT` (ms). */
  timeoutMs: number;
  /** `CARTD_WEBHOOK_RETRY_DELAY` (ms). */
  retryDelayMs: number;
  /** `CARTD_WEBHOOK_RETRY_FOR` (ms). */
  retryForMs: number;
  /** The `User-Agent` of the POSTs. */
  userAgent: string;
  /** Resolves host names (default: the system's resolver). */
  resolver?: Resolver;
}

/**
 * When the attempt after `event`'s failed attempt number `event.attempts` is due, or null
 * when that is past `retryForMs` after the event (it is given up).
 */
export function nextAttemptAt(
  event: Pick<WebhookEvent, "attempts" | "createdAt">,
  now: number,
  settings: Pick<SenderSettings, "retryDelayMs" | "retryForMs">,
): number | null {
  const delays = backoffDelays({
    initialMs: settings.retryDelayMs,
    maxMs: MAX_RETRY_DELAY_MS,
    jitter: 0.1,
  });
  let delay = delays.next().value;
  for (let i = 1; i < event.attempts; i++) delay = delays.next().value;
  const at = now + delay;
  return at > event.createdAt + settings.retryForMs ? null : at;
}

/** Delivers the outbox's events from this process (see the module doc). */
export class WebhookSender {
  /** This process's name in claims. */
  readonly owner = `${hostname().slice(0, 30)}:${Deno.pid}:hooks:${
    crypto.randomUUID().slice(0, 8)
  }`;
  readonly #inFlight = new Set<Promise<void>>();
  /** Attempts in flight by host. */
  readonly #perHost = new Map<string, number>();
  readonly #stop = new AbortController();
  #loop: Promise<void> | null = null;
  #prunedAt = 0;
  /** Ends the loop's current wait early (an attempt is due sooner than the next poll). */
  #wake: (() => void) | null = null;
  /** Timers that wake the loop when a retry falls due before the next poll. */
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();

  /** A sender on `outbox`; nothing runs until {@linkcode start}. */
  constructor(readonly outbox: WebhookOutbox, readonly settings: SenderSettings) {}

  /** Starts the loop. */
  start(): void {
    this.#loop ??= this.#run();
  }

  /** Stops the loop, and waits (at most the attempt time limit) for the attempts in flight. */
  async stop(): Promise<void> {
    this.#stop.abort();
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    this.#wake?.();
    await this.#loop;
    const waited = sleep(this.settings.timeoutMs + 100).then(() => false);
    await Promise.race([Promise.all(this.#inFlight).then(() => true), waited]);
  }

  async #run(): Promise<void> {
    const signal = this.#stop.signal;
    let failing = false;
    while (!signal.aborted) {
      try {
        await this.tick();
        failing = false;
      } catch (e) {
        // The database away: logged once until it answers again; the events wait in it.
        if (!failing) {
          log.warn("webhook delivery cannot read the outbox; trying again", {
            error: errorMessage(e),
          });
        }
        failing = true;
      }
      await this.#wait(POLL_MS);
    }
  }

  /** Waits `ms`, or less when {@linkcode #wakeAt} wakes the loop, or it stops. */
  async #wait(ms: number): Promise<void> {
    if (this.#stop.signal.aborted) return;
    const waiting = new AbortController(); // aborted early: its timer goes at once
    const end = () => waiting.abort();
    this.#stop.signal.addEventListener("abort", end, { once: true });
    this.#wake = end;
    await sleep(ms, waiting.signal).catch(() => {});
    this.#stop.signal.removeEventListener("abort", end);
    this.#wake = null;
  }

  /** Wakes the loop at `at` (ms since the epoch) when that comes before its next poll. */
  #wakeAt(at: number): void {
    const ms = at - this.outbox.now();
    if (ms >= POLL_MS || this.#stop.signal.aborted) return;
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      this.#wake?.();
    }, Math.max(0, ms));
    this.#timers.add(timer);
  }

  /**
   * One pass: claims as many due events as there are free places and starts their attempts
   * (without waiting for them); prunes done events once an hour. Tests call it directly.
   */
  async tick(): Promise<void> {
    const free = MAX_IN_FLIGHT - this.#inFlight.size;
    if (free > 0) {
      const busy = [...this.#perHost].filter(([, n]) => n >= MAX_PER_HOST).map(([host]) => host);
      for (const { id, host } of await this.outbox.due(free, busy)) {
        if (this.#stop.signal.aborted || this.#inFlight.size >= MAX_IN_FLIGHT) break;
        if ((this.#perHost.get(host) ?? 0) >= MAX_PER_HOST) continue; // the next tick takes it
        const event = await this.outbox.claim(
          id,
          this.owner,
          this.settings.timeoutMs + CLAIM_MARGIN_MS,
        );
        if (!event) continue; // another process took it first
        this.#perHost.set(host, (this.#perHost.get(host) ?? 0) + 1);
        const attempt = this.#deliver(event).catch((e) => {
          log.error("webhook attempt failed unexpectedly", { event: id, error: errorMessage(e) });
        }).finally(() => {
          this.#inFlight.delete(attempt);
          const left = (this.#perHost.get(host) ?? 1) - 1;
          if (left > 0) this.#perHost.set(host, left);
          else this.#perHost.delete(host);
          this.#wake?.(); // a place is free: events may wait for it
        });
        this.#inFlight.add(attempt);
      }
    }
    const now = this.outbox.now();
    if (now - this.#prunedAt > PRUNE_EVERY_MS) {
      this.#prunedAt = now;
      const pruned = await this.outbox.prune(now - KEEP_DONE_MS);
      if (pruned) log.info("old webhook events removed from the outbox", { events: pruned });
    }
  }

  /** Attempts in flight now. */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  /** Makes one attempt at `event` (claimed) and records how it went. */
  async #deliver(event: WebhookEvent): Promise<void> {
    const { settings } = this;
    const result: AttemptResult = await attemptDelivery(event, {
      secret: settings.secret,
      allow: settings.allow,
      timeoutMs: settings.timeoutMs,
      userAgent: settings.userAgent,
      resolver: settings.resolver,
    }).catch((e) => ({ outcome: "error" as const, error: errorMessage(e) }));
    countWebhookDelivery(result.outcome);
    const fields = {
      uid: event.uid,
      cart: event.cartId,
      event: event.id,
      type: event.type,
      attempt: event.attempts,
    };
    try {
      if (result.outcome === "delivered") {
        await this.outbox.delivered(event.id, this.owner);
        log.info("webhook delivered", { ...fields, status: result.status });
        return;
      }
      const next = nextAttemptAt(event, this.outbox.now(), settings);
      await this.outbox.failed(event.id, this.owner, result.error ?? result.outcome, next);
      if (next === null) {
        countWebhookDelivery("given_up");
        log.warn("webhook given up: not delivered within CARTD_WEBHOOK_RETRY_FOR", {
          ...fields,
          error: result.error,
        });
      } else {
        this.#wakeAt(next);
        log.info("webhook attempt failed; it is tried again", {
          ...fields,
          error: result.error,
          in_s: Math.round((next - this.outbox.now()) / 100) / 10,
        });
      }
    } catch (e) {
      // The claim lapses by itself and the event is tried again (at least once, same id).
      log.warn("could not record a webhook attempt; it will be tried again", {
        ...fields,
        outcome: result.outcome,
        error: errorMessage(e),
      });
    }
  }
}
