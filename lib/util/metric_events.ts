/**
 * Measurements that code running in any thread records: the archive client runs in the main
 * thread (the worker's HEADs, the recalls' POSTs) and in the staging threads (their GETs). A
 * staging thread has its own copy of every module, so a figure recorded there would stay
 * there: this module, which loads nothing, hands each measurement to the main thread instead.
 *
 * - In the main thread, {@linkcode recordMetric} calls the sink that {@linkcode ./metrics.ts}
 *   installs when it loads (without it, as in `cartd admin`, nothing is kept).
 * - In a Web Worker thread, the measurements of one turn of the event loop go out together
 *   on a `BroadcastChannel`, which the main thread hears while a thread pool is open
 *   ({@linkcode hearThreads}). The Prometheus client itself is never loaded in a thread.
 *
 * @example
 * ```ts
 * import { recordMetric } from "./metric_events.ts";
 * recordMetric({ kind: "archive", method: "HEAD", outcome: "ok", seconds: 0.004 });
 * ```
 * @module
 */

/** The archive calls by HTTP method. */
export type ArchiveMethod = "HEAD" | "GET" | "POST";

/**
 * How an archive call ended: `ok` (2xx), the status class of any other answer (`4xx`, `5xx`,
 * `1xx`, `3xx`), `timeout` (no answer within the time limit), `error` (no answer: the
 * connection failed) or `aborted` (cartd stopped waiting, e.g. the cart was deleted).
 */
export type ArchiveOutcome = "ok" | "1xx" | "3xx" | "4xx" | "5xx" | "timeout" | "error" | "aborted";

/** One measurement. */
export type MetricEvent = {
  /** An archive call, timed until its answer's headers (or its failure). */
  kind: "archive";
  /** The call's method. */
  method: ArchiveMethod;
  /** How it ended. */
  outcome: ArchiveOutcome;
  /** How long it took, in seconds. */
  seconds: number;
} | {
  /** A download served by an HTTP thread (app/http_thread.ts): its start, bytes and end. */
  kind: "download";
  /** +1 when its body starts, -1 when it ends, 0 between. */
  inFlight: 1 | 0 | -1;
  /** Bytes of its body sent since the last event. */
  bytes: number;
};

/** Where the main thread's measurements go. */
export type MetricSink = (event: MetricEvent) => void;

/** The channel's name: one per process, as the registry is. */
const CHANNEL = "cartd-metrics";

/** True in a Web Worker (a staging thread), false in the main thread. */
const IN_THREAD = typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !==
  "undefined";

let sink: MetricSink | null = null;
let outbox: MetricEvent[] = [];
let sender: BroadcastChannel | null = null;
let receiver: BroadcastChannel | null = null;
let listeners = 0;

/** Sends this turn's measurements of a thread to the main thread. */
function flush(): void {
  const events = outbox;
  outbox = [];
  sender ??= new BroadcastChannel(CHANNEL);
  sender.postMessage(events);
}

/** Records one measurement (see the module doc for where it goes). */
export function recordMetric(event: MetricEvent): void {
  if (!IN_THREAD) {
    sink?.(event);
    return;
  }
  if (outbox.push(event) === 1) queueMicrotask(flush);
}

/** Sets where the main thread's measurements, and those heard from threads, go. */
export function setMetricSink(next: MetricSink | null): void {
  sink = next;
}

/**
 * Hears the measurements of the process's staging threads until the returned function is
 * called (once per caller; a thread pool calls it while it is open). The channel is open while
 * anyone listens: an open channel keeps a process running, so it is closed with the last pool.
 */
export function hearThreads(): () => void {
  if (IN_THREAD) return () => {};
  if (listeners++ === 0) {
    receiver = new BroadcastChannel(CHANNEL);
    receiver.onmessage = (message: MessageEvent<MetricEvent[]>) => {
      for (const event of message.data) sink?.(event);
    };
  }
  let stopped = false;
  return () => {
    if (stopped) return;
    stopped = true;
    if (--listeners === 0) {
      receiver?.close();
      receiver = null;
    }
  };
}
