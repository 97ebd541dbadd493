/**
 * The one retry policy of the program: growing delays with jitter ({@linkcode backoffDelays},
 * the one delay formula), an abortable {@linkcode sleep}, and {@linkcode retry}, which runs a
 * call again on a retryable failure until its attempts or its time run out.
 *
 * Used to poll the archive while a file is on tape (SPEC §2: "poll with a growing delay"),
 * to retry archive calls and downloads, to reconnect to the message broker, and to reach and
 * retry the MySQL database.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { backoffDelays, retry } from "./backoff.ts";
 * const delays = backoffDelays({ initialMs: 1, maxMs: 4, jitter: 0 });
 * assert.deepEqual([1, 2, 3, 4].map(() => delays.next().value), [1, 2, 4, 4]);
 *
 * let calls = 0;
 * const answer = await retry(() => ++calls < 3 ? Promise.reject(new Error("busy")) : "done", {
 *   attempts: 5,
 *   delays: backoffDelays({ initialMs: 1, maxMs: 10 }),
 * });
 * assert.deepEqual([answer, calls], ["done", 3]);
 * ```
 * @module
 */

/** How {@linkcode backoffDelays} grows its delays. */
export interface BackoffOptions {
  /** The first delay, in milliseconds (before jitter). */
  initialMs: number;
  /** No delay is ever longer than this, jitter included. */
  maxMs: number;
  /** Each delay is the previous one times this (default 2). */
  factor?: number;
  /**
   * Spread, 0..1 (default 0.2): each delay is multiplied by a random factor in
   * `[1 - jitter, 1 + jitter]`, then capped at `maxMs`.
   */
  jitter?: number;
  /** Source of randomness in [0, 1) (default `Math.random`); tests pass a fixed one. */
  random?: () => number;
}

/**
 * An endless sequence of delays in milliseconds: `initialMs`, `initialMs * factor`, … capped
 * at `maxMs`, each spread by the jitter. Never ends, so `next().value` is always a number.
 */
export function backoffDelays(o: BackoffOptions): Iterator<number, never> {
  const factor = o.factor ?? 2;
  const jitter = Math.min(1, Math.max(0, o.jitter ?? 0.2));
  const random = o.random ?? Math.random;
  const maxMs = Math.max(0, o.maxMs);
  if (!(factor >= 1)) throw new RangeError(`backoff factor must be at least 1, got ${factor}`);
  let base = Math.min(Math.max(0, o.initialMs), maxMs);
  return {
    next(): IteratorResult<number, never> {
      const spread = 1 - jitter + 2 * jitter * random();
      const value = Math.min(maxMs, base * spread);
      base = Math.min(maxMs, base * factor);
      return { done: false, value };
    },
  };
}

/**
 * Resolves after `ms` milliseconds; rejects with `signal.reason` as soon as the signal aborts
 * (at once when it already has). The timer never keeps a finished program alive longer.
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, ms));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** What {@linkcode RetryOptions.onFailure} learns about one failed call. */
export interface FailureInfo {
  /** Which call failed: 1 for the first. */
  attempt: number;
  /** Milliseconds since the first failure (0 for the first). */
  elapsedMs: number;
  /** Whether the call will be made again (after a delay). */
  retrying: boolean;
}

/** How {@linkcode retry} runs a call again. */
export interface RetryOptions {
  /** Most calls in all, the first included (at least 1; default: no limit). */
  attempts?: number;
  /**
   * No call is started once this many milliseconds have passed since the first failure, and
   * the last delay is cut short to end there (default: no limit).
   */
  deadlineMs?: number;
  /** The delays between calls, in milliseconds: usually {@linkcode backoffDelays}. */
  delays: Iterator<number>;
  /** Whether a failure is worth another call (default: every failure is). */
  isRetryable?: (error: unknown) => boolean;
  /** Aborts the waiting: `retry` then rejects with `signal.reason`. */
  signal?: AbortSignal;
  /** Told of every failure, the last included (to log it, or to note the time it took). */
  onFailure?: (error: unknown, info: FailureInfo) => void;
}

/**
 * Runs `call` (given the attempt number, 1 for the first) until it resolves, and resolves
 * with its value. A failure that `isRetryable` accepts is followed by the next delay and
 * another call, as long as `attempts` and `deadlineMs` allow; otherwise `retry` rejects with
 * that failure as it is, so the caller words it. When `signal` aborts, `retry` rejects with
 * `signal.reason` instead, whatever the call threw.
 */
export async function retry<T>(
  call: (attempt: number) => Promise<T> | T,
  o: RetryOptions,
): Promise<T> {
  const attempts = o.attempts === undefined ? Infinity : Math.max(1, o.attempts);
  let firstFailure: number | undefined;
  // Set once a delay has been cut to end at the deadline: the call after it is the last.
  // Timers may fire a fraction of a millisecond early, so the time left is not trusted.
  let atDeadline = false;
  for (let attempt = 1;; attempt++) {
    try {
      return await call(attempt);
    } catch (error) {
      if (o.signal?.aborted) throw o.signal.reason;
      const now = performance.now();
      firstFailure ??= now;
      const elapsedMs = now - firstFailure;
      const remaining = (o.deadlineMs ?? Infinity) - elapsedMs;
      const retrying = (o.isRetryable?.(error) ?? true) && attempt < attempts &&
        remaining > 0 && !atDeadline;
      o.onFailure?.(error, { attempt, elapsedMs, retrying });
      if (!retrying) throw error;
      const next = o.delays.next();
      const delay = next.done ? 0 : next.value;
      atDeadline = delay >= remaining;
      await sleep(Math.min(delay, remaining), o.signal);
    }
  }
}
