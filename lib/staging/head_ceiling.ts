/**
 * The process's ceiling on HEADs sent to the archive (`CARTD_HEADS_PER_SECOND`): a token
 * bucket whose guarantee is exact (at most `headsPerSecond` HEADs start in any window of one
 * second), and the queue of callers that wait for a HEAD slot in order. The recall manager
 * (./recalls.ts) spends the tokens on its due polls and on these callers in turn.
 *
 * **Why exact.** A bucket of capacity `c` refilled at `r'` tokens per second lets `c − 1 + r'`
 * HEADs start in any one-second window (a full bucket, then what one second refills, the
 * last token arriving just inside the window); with `r' = r − (c − 1)` that is exactly `r`.
 * `c` holds 100 ms of HEADs: a burst of a new cart's size HEADs goes out at once (a tape
 * library then sees its stage requests together), and a fast ceiling needs no timer per HEAD.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { HeadCeiling } from "./head_ceiling.ts";
 * const ceiling = new HeadCeiling(20, 0); // 20 HEADs a second; the clock reads 0 ms
 * assert.equal(ceiling.take(0), true); // a bucket of 2 tokens…
 * assert.equal(ceiling.take(0), true);
 * assert.equal(ceiling.take(0), false); // …is empty…
 * assert.equal(Math.round(ceiling.tokenIn(0)), 53); // …for 1000 / 19 ms (19 refilled a second)
 * const slot = ceiling.slot(10, false); // a caller waits for a token
 * assert.equal(ceiling.waiting, true);
 * if (ceiling.take(60)) ceiling.grant(); // the poller gives it one
 * await slot;
 * assert.equal(ceiling.granted, 1);
 * ```
 * @module
 */

/** One caller of {@linkcode HeadCeiling.slot} waiting for its slot. */
interface Slot {
  readonly resolve: () => void;
}

/** A token bucket of `headsPerSecond` and the callers waiting for its tokens. */
export class HeadCeiling {
  readonly #capacity: number;
  readonly #refillPerMs: number;
  #tokens: number;
  #refilledAt: number;
  /** Callers waiting for a slot, in order; a caller that gave up leaves a hole. */
  #queue: (Slot | undefined)[] = [];
  #head = 0;
  /** Slots dropped off the front of `#queue` so far: a caller's place is its number minus this. */
  #dropped = 0;
  #granted = 0;

  /** A full bucket for `headsPerSecond` (> 0) HEADs a second, at time `now` (ms). */
  constructor(headsPerSecond: number, now: number) {
    this.#capacity = Math.max(1, Math.floor(headsPerSecond / 10));
    this.#refillPerMs = (headsPerSecond - (this.#capacity - 1)) / 1000;
    this.#tokens = this.#capacity;
    this.#refilledAt = now;
  }

  /** Slots given to callers of {@linkcode HeadCeiling.slot} so far (the size HEADs). */
  get granted(): number {
    return this.#granted;
  }

  /** Whether a caller waits for a slot (those that gave up skipped). */
  get waiting(): boolean {
    while (this.#head < this.#queue.length) {
      if (this.#queue[this.#head]) return true;
      this.#head++;
    }
    this.#compact();
    return false;
  }

  /** Takes a token at `now` (ms) when there is one; false when the bucket is empty. */
  take(now: number): boolean {
    this.#refill(now);
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  /** Milliseconds from `now` until there is a token: 0 when there is one. */
  tokenIn(now: number): number {
    this.#refill(now);
    return this.#tokens >= 1 ? 0 : (1 - this.#tokens) / this.#refillPerMs;
  }

  /**
   * A slot for a HEAD that is not a poll. At once, taking a token, when nobody waits and
   * there is a token; also at once when nobody waits and the caller is `unbounded` (a token
   * taken if there is one); else the promise waits in order for {@linkcode HeadCeiling.grant}.
   * Rejects with the signal's reason when it aborts first.
   */
  slot(now: number, unbounded: boolean, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (!this.waiting && (this.take(now) || unbounded)) {
      this.#granted++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const slot: Slot = {
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
      };
      // Its number among all callers: the queue is cut at the front as callers are served.
      const number = this.#dropped + this.#queue.length;
      const onAbort = () => {
        const at = number - this.#dropped;
        if (this.#queue[at] === slot) this.#queue[at] = undefined;
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(slot);
    });
  }

  /** Gives the first waiting caller its slot, for a token the caller of this took. */
  grant(): void {
    if (!this.waiting) return;
    const slot = this.#queue[this.#head]!;
    this.#queue[this.#head++] = undefined;
    this.#granted++;
    this.#compact();
    slot.resolve();
  }

  /** Lets every waiting caller go at once (the manager is closing). */
  releaseAll(): void {
    const queue = this.#queue;
    this.#queue = [];
    this.#dropped += queue.length;
    this.#head = 0;
    for (const slot of queue) slot?.resolve();
  }

  #compact(): void {
    if (this.#head === this.#queue.length) {
      this.#dropped += this.#head;
      this.#queue = [];
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#dropped += this.#head;
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
  }

  #refill(now: number): void {
    const tokens = this.#tokens + (now - this.#refilledAt) * this.#refillPerMs;
    this.#tokens = Math.min(this.#capacity, tokens);
    this.#refilledAt = now;
  }
}
