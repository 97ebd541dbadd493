/**
 * Growing delays with jitter, and an abortable sleep.
 *
 * Used to poll the archive while a file is on tape (SPEC §2: "poll with a growing delay")
 * and to space out retries of a failed download.
 *
 * @example
 * ```ts
 * import { backoffDelays, sleep } from "./backoff.ts";
 * const delays = backoffDelays({ initialMs: 500, maxMs: 30_000 });
 * await sleep(delays.next().value); // about 500 ms, then about 1000, 2000, … up to 30000
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
