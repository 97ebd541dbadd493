/**
 * cartd's metrics for operators (`GET /_cartd/metrics`, http/metrics.ts): the process's
 * Prometheus registry, every metric's definition, and small typed helpers that any layer
 * calls to record into it. It imports nothing of the project but {@linkcode ./metric_events.ts},
 * through which measurements of the staging threads reach this (the main) thread.
 *
 * Two kinds of figures (docs/operations.md, "Metrics"):
 *
 * - **Per process**, kept here as they happen: archive calls, files and bytes fetched, bytes
 *   served, downloads in flight, carts posted and deleted through this process's API; and, read
 *   at each scrape from the parts that registered (a thread pool, a recall manager), fetch
 *   slots and recalls.
 * - **Global**, read from the database (and the volume) at each scrape by the route and
 *   handed to {@linkcode exposition}: carts by state, and space.
 *
 * @example
 * ```ts
 * import { countCartEvent, exposition } from "./metrics.ts";
 * countCartEvent("posted");
 * const text = await exposition({ carts: { waiting: 1, ready: 2 } });
 * console.log(text.includes('cartd_carts{state="ready"} 2'));
 * ```
 * @module
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import {
  type ArchiveMethod,
  type ArchiveOutcome,
  hearThreads,
  type MetricEvent,
  setMetricSink,
} from "./metric_events.ts";

export type { ArchiveMethod, ArchiveOutcome };

/** The `Content-Type` of {@linkcode exposition}'s text (Prometheus text format 0.0.4). */
export const METRICS_CONTENT_TYPE: string = new Registry().contentType;

/** The registry of the figures this process keeps as they happen. */
const registry = new Registry();

const archiveRequests = new Counter({
  name: "cartd_archive_requests_total",
  help: "Calls this process made to the archive, by method and outcome (ok, 4xx, 5xx, 1xx, " +
    "3xx, timeout, error: no answer, aborted: cartd stopped waiting).",
  labelNames: ["method", "outcome"] as const,
  registers: [registry],
});

const archiveSeconds = new Histogram({
  name: "cartd_archive_request_duration_seconds",
  help: "Time of this process's archive calls until the archive's answer headers (a GET's " +
    "body is not included), or until the call failed, by method.",
  labelNames: ["method"] as const,
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  registers: [registry],
});

const filesFetched = new Counter({
  name: "cartd_files_fetched_total",
  help: "Files this process's staging threads fetched from the archive and verified.",
  registers: [registry],
});

const bytesFetched = new Counter({
  name: "cartd_fetched_bytes_total",
  help: "Bytes of the files this process's staging threads fetched and verified.",
  registers: [registry],
});

const bytesServed = new Counter({
  name: "cartd_download_bytes_total",
  help: "Bytes of cart downloads (tar and zip bodies) this process's API has sent.",
  registers: [registry],
});

const tapeWait = new Histogram({
  name: "cartd_tape_wait_seconds",
  help: "Time of this process's tape recalls from the first stage POST until the archive " +
    "said the file is on disk (as the recall poller noticed it).",
  buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400],
  registers: [registry],
});

const filesShared = new Counter({
  name: "cartd_files_shared_total",
  help: "Files this process staged for a cart from a copy another live cart had staged, " +
    "without asking the archive (reads 0 until cartd shares staged files between carts).",
  registers: [registry],
});

const eventStreams = new Gauge({
  name: "cartd_event_streams_open",
  help: "Event streams (GET /{uid}/events) this process's API has open now.",
  registers: [registry],
});

const downloadsInFlight = new Gauge({
  name: "cartd_downloads_in_flight",
  help: "Cart downloads whose body this process's API is sending now.",
  registers: [registry],
});

/** The cart events that {@linkcode countCartEvent} counts. */
export type CartEvent =
  /** A POST answered 201 (a new cart, or an identical re-POST that kept the live one). */
  | "posted"
  /** A new cart stored (not an identical re-POST). */
  | "created"
  /** A cart became ready. */
  | "ready"
  /** A cart failed. */
  | "failed"
  /** A DELETE removed a cart. */
  | "deleted"
  /** The LRU purge or retention removed a cart. */
  | "purged";

const cartEvents = new Counter({
  name: "cartd_cart_events_total",
  help: "Cart events in this process: posted (POST answered 201), created (a new cart " +
    "stored), deleted (DELETE answered 200), in the API process; ready, failed and purged " +
    "(LRU purge or retention), in the worker that made them.",
  labelNames: ["event"] as const,
  registers: [registry],
});

/**
 * How a webhook delivery attempt ended (lib/webhook/deliver.ts), or `given_up`: an event
 * whose last attempt failed at the end of `CARTD_WEBHOOK_RETRY_FOR`.
 */
export type WebhookOutcome =
  | "delivered"
  | "1xx"
  | "3xx"
  | "4xx"
  | "5xx"
  | "timeout"
  | "error"
  | "refused"
  | "given_up";

const webhookDeliveries = new Counter({
  name: "cartd_webhook_deliveries_total",
  help: "Webhook delivery attempts this process made, by outcome (delivered: a 2xx answer; " +
    "1xx, 3xx (redirects are not followed), 4xx, 5xx; timeout; error: no answer; refused: an " +
    "address not allowed, nothing sent); given_up counts events abandoned after their last attempt.",
  labelNames: ["outcome"] as const,
  registers: [registry],
});

/** Counts one webhook delivery attempt of this process by its outcome (or a given-up event). */
export function countWebhookDelivery(outcome: WebhookOutcome): void {
  webhookDeliveries.inc({ outcome });
}

/** Counts one cart event of this process. */
export function countCartEvent(event: CartEvent): void {
  cartEvents.inc({ event });
}

/** Records one archive call of this process (the archive client calls it). */
export function observeArchiveCall(
  method: ArchiveMethod,
  outcome: ArchiveOutcome,
  seconds: number,
): void {
  archiveRequests.inc({ method, outcome });
  archiveSeconds.observe({ method }, seconds);
}

/** Counts one file fetched from the archive and verified, of `bytes` bytes. */
export function countFetched(bytes: number): void {
  filesFetched.inc();
  bytesFetched.inc(bytes);
}

/** Records the wait of one tape recall that ended on disk, in seconds. */
export function observeTapeWait(seconds: number): void {
  tapeWait.observe(seconds);
}

/** Counts one file staged from another live cart's copy, without an archive request. */
export function countShared(): void {
  filesShared.inc();
}

/**
 * Marks an event stream open now; returns what ends it (once: more calls change nothing).
 */
export function openEventStream(): () => void {
  eventStreams.inc();
  let open = true;
  return () => {
    if (open) eventStreams.dec();
    open = false;
  };
}

/**
 * Marks a download whose body starts now; returns what the download calls as it goes: `sent`
 * with each chunk's length, `ended` once (more calls change nothing) when the body is sent,
 * cut off or cancelled.
 */
export function startDownload(): { sent(bytes: number): void; ended(): void } {
  downloadsInFlight.inc();
  let open = true;
  return {
    sent: (bytes) => bytesServed.inc(bytes),
    ended() {
      if (open) downloadsInFlight.dec();
      open = false;
    },
  };
}

/** The fetch slots of one thread pool, read at each scrape. */
export interface FetchSlots {
  /** Tasks running in the pool's threads now. */
  inUse: number;
  /** The most that may run at once (`CARTD_FILES_IN_FLIGHT`). */
  capacity: number;
}

/** The figures of one recall manager (lib/staging/recalls.ts `RecallStats`), read at scrapes. */
export interface RecallFigures {
  /** Recalls whose stage POST was sent and that are not on disk yet. */
  outstanding: number;
  /** Recalls waiting for the cap on outstanding recalls. */
  waiting: number;
  /** Waiters that share a recall another cart asked for first. */
  shared: number;
  /** HEADs the recall poller has sent so far. */
  heads: number;
  /** Stage POSTs sent so far (re-sends included). */
  posts: number;
  /** Recalls that ended with the file on disk so far. */
  recalled: number;
}

const slotSources = new Set<() => FetchSlots>();
const recallSources = new Set<() => RecallFigures>();

/** Adds `source` to `sources` until the returned function is called. */
function watch<T>(sources: Set<() => T>, source: () => T): () => void {
  sources.add(source);
  return () => sources.delete(source);
}

/**
 * Reads a thread pool's fetch slots at each scrape, and hears its threads' measurements, until
 * the returned function is called (when the pool closes).
 */
export function watchFetchSlots(source: () => FetchSlots): () => void {
  const unwatch = watch(slotSources, source);
  const deaf = hearThreads();
  return () => {
    unwatch();
    deaf();
  };
}

/**
 * Hears the measurements of the process's HTTP threads (app/http_threads.ts) until the returned
 * function is called.
 */
export function watchHttpThreads(): () => void {
  return hearThreads();
}

/** Reads a recall manager's figures at each scrape until the returned function is called. */
export function watchRecalls(source: () => RecallFigures): () => void {
  return watch(recallSources, source);
}

/** The space figures of {@linkcode GlobalFigures}, from lib/space/space.ts's report. */
export interface SpaceFigures {
  /** `VOLUME_SIZE`, or null when only the file system limits. */
  capacity: number | null;
  /** Bytes reserved by every cart. */
  reserved: number;
  /** Bytes of those that are staged: reserved less what carts in progress have yet to stage. */
  used: number;
  /** Free bytes of the file system under `VOLUME_PATH`. */
  free: number;
}

/** The figures read from the database (and the volume) for one scrape. */
export interface GlobalFigures {
  /** Live carts by state; every state the caller names is shown, 0 included. */
  carts: Record<string, number>;
  /** The space, when the process has one to read. */
  space?: SpaceFigures;
}

/** A gauge of one value in `into`, shown only when `value` is a number. */
function gauge(into: Registry, name: string, help: string, value: number | null): void {
  if (value === null) return;
  new Gauge({ name, help, registers: [into] }).set(value);
}

/** A counter of one running total in `into` (read from a part that keeps it), or nothing. */
function counter(into: Registry, name: string, help: string, value: number | null): void {
  if (value === null) return;
  new Counter({ name, help, registers: [into] }).inc(value);
}

/** The sum of `pick` over the figures of `sources`, or null when there is none. */
function total<T>(sources: Set<() => T>, pick: (figures: T) => number): number | null {
  if (sources.size === 0) return null;
  let sum = 0;
  for (const source of sources) sum += pick(source());
  return sum;
}

/** The registry of one scrape: the global figures, and those read from the process's parts. */
function scrapeRegistry(figures: GlobalFigures): Registry {
  const scrape = new Registry();
  const carts = new Gauge({
    name: "cartd_carts",
    help: "Live carts by state (global: from the database, whichever process holds them).",
    labelNames: ["state"] as const,
    registers: [scrape],
  });
  for (const [state, n] of Object.entries(figures.carts)) carts.set({ state }, n);
  const space = figures.space;
  if (space) {
    const what = "(global: the database's reservations, the volume's file system)";
    gauge(
      scrape,
      "cartd_space_capacity_bytes",
      `VOLUME_SIZE, the cap on reservations ${what}.`,
      space.capacity,
    );
    gauge(
      scrape,
      "cartd_space_reserved_bytes",
      `Bytes reserved by all carts ${what}.`,
      space.reserved,
    );
    gauge(scrape, "cartd_space_used_bytes", `Reserved bytes already staged ${what}.`, space.used);
    gauge(
      scrape,
      "cartd_space_free_bytes",
      `Free bytes of the volume's file system ${what}.`,
      space.free,
    );
  }
  const slots = "of this process's staging threads";
  gauge(
    scrape,
    "cartd_fetch_slots",
    `Fetch slots ${slots} (CARTD_FILES_IN_FLIGHT).`,
    total(slotSources, (s) => s.capacity),
  );
  gauge(
    scrape,
    "cartd_fetch_slots_in_use",
    `Fetch slots ${slots} in use now.`,
    total(slotSources, (s) => s.inUse),
  );
  const recalls = "of this process's recall manager";
  gauge(
    scrape,
    "cartd_recalls_outstanding",
    `Tape recalls ${recalls} sent and not on disk yet.`,
    total(recallSources, (r) => r.outstanding),
  );
  gauge(
    scrape,
    "cartd_recalls_waiting",
    `Tape recalls ${recalls} waiting for the recall cap.`,
    total(recallSources, (r) => r.waiting),
  );
  gauge(
    scrape,
    "cartd_recalls_shared",
    `Carts waiting ${recalls} on a recall another cart asked for first.`,
    total(recallSources, (r) => r.shared),
  );
  counter(
    scrape,
    "cartd_recall_heads_total",
    `HEADs the tape poller ${recalls} has sent.`,
    total(recallSources, (r) => r.heads),
  );
  counter(
    scrape,
    "cartd_files_recalled_total",
    `Tape recalls ${recalls} that ended with the file on disk (one per archive file, ` +
      "however many carts shared it).",
    total(recallSources, (r) => r.recalled),
  );
  counter(
    scrape,
    "cartd_recall_posts_total",
    `Stage POSTs ${recalls} has sent, re-sends included.`,
    total(recallSources, (r) => r.posts),
  );
  return scrape;
}

/** The Prometheus text of this process's figures and of `figures`. */
export async function exposition(figures: GlobalFigures): Promise<string> {
  return await Registry.merge([registry, scrapeRegistry(figures)]).metrics();
}

/** Where the main thread's and the threads' measurements land. */
function sink(event: MetricEvent): void {
  if (event.kind === "archive") observeArchiveCall(event.method, event.outcome, event.seconds);
  else if (event.kind === "download") {
    if (event.bytes > 0) bytesServed.inc(event.bytes);
    if (event.inFlight !== 0) downloadsInFlight.inc(event.inFlight);
  }
}

setMetricSink(sink);
