/**
 * A number of bytes shared by work that holds memory (big request bodies): each takes its
 * share before it starts and gives it back when done; who does not fit waits, first come
 * first served (a big share is not passed over forever by small ones).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ByteBudget } from "./byte_budget.ts";
 * const budget = new ByteBudget(100);
 * const a = await budget.take(60);
 * let b = false;
 * const waiting = budget.take(60).then((give) => (b = true, give));
 * await Promise.resolve();
 * assert.equal(b, false); // 60 + 60 > 100: waits
 * a();
 * (await waiting)();
 * assert.equal(budget.used, 0);
 * ```
 * @module
 */

/** Bytes taken from a {@linkcode ByteBudget}, given back once by calling it. */
export type GiveBack = () => void;

/** A budget of bytes that work takes a share of, waiting in turn while it does not fit. */
export class ByteBudget {
  #used = 0;
  readonly #waiting: { bytes: number; grant: (give: GiveBack) => void }[] = [];

  /** A budget of `total` bytes. A share larger than that is granted alone (when none is taken). */
  constructor(readonly total: number) {}

  /** Bytes taken now. */
  get used(): number {
    return this.#used;
  }

  /** Works waiting for their share. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** Takes `bytes` (once the ones before have theirs and they fit); resolves with the give-back. */
  take(bytes: number): Promise<GiveBack> {
    const { promise, resolve } = Promise.withResolvers<GiveBack>();
    this.#waiting.push({ bytes, grant: resolve });
    this.#grant();
    return promise;
  }

  #grant(): void {
    while (this.#waiting.length) {
      const first = this.#waiting[0];
      if (this.#used > 0 && this.#used + first.bytes > this.total) return;
      this.#waiting.shift();
      this.#used += first.bytes;
      let given = false;
      first.grant(() => {
        if (given) return;
        given = true;
        this.#used -= first.bytes;
        this.#grant();
      });
    }
  }
}
