/**
 * The downloads in flight of one app instance ({@linkcode ./routes.ts} makes one per
 * `cartRoutes`), and the sharing of their plans: downloads of one cart asked for in the same
 * form share a plan, so four clients fetching a 40,000-file cart at once hold one plan (and
 * read the store once), not four. A plan goes when its last download ends, or at once when
 * making it failed or found the cart gone (null).
 *
 * @module
 */

/**
 * The downloads in flight of a whole process whose API runs in several threads, by cart: the
 * threads tell one counter (app/http_threads.ts), which ends a cart's hold when its last
 * download in the process ends.
 */
export interface DownloadHolds {
  /** A download of the cart begins in this thread (called before its plan is taken). */
  begin(cartId: string): void;
  /** That download ended; resolves once the hold was ended, if it was the cart's last. */
  end(cartId: string): Promise<void>;
}

/** One plan and how many downloads use it. */
interface Entry<P> {
  plan: Promise<P | null>;
  users: number;
}

/** What {@linkcode Downloads.take} gives a download. */
export interface Taken<P> {
  /** The plan (null: the cart is gone). */
  bundle: P | null;
  /**
   * Ends this download's use of the plan (once; later calls change nothing). Returns how many
   * downloads of the cart are still in flight here.
   */
  release: () => number;
  /** True when the plan was another download's, already made or being made. */
  shared: boolean;
}

/**
 * The downloads in flight, by cart and form. `P` is the plan (a `Bundle` for the routes).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { Downloads } from "./downloads.ts";
 * const downloads = new Downloads<string>();
 * let made = 0;
 * const make = () => Promise.resolve(`plan ${++made}`);
 * const a = await downloads.take("cart", "tar", make);
 * const b = await downloads.take("cart", "tar", make);
 * assert.equal(b.bundle, "plan 1");
 * assert.equal(b.shared, true);
 * assert.equal(downloads.downloads("cart"), 2);
 * assert.equal(a.release(), 1);
 * assert.equal(b.release(), 0);
 * assert.equal((await downloads.take("cart", "tar", make)).bundle, "plan 2");
 * ```
 */
export class Downloads<P> {
  readonly #carts = new Map<string, Map<string, Entry<P>>>();

  /**
   * The plan of cart `cartId` asked for in `form`, made by `make` unless a download in flight
   * has it already (null: the cart is gone). Call `release` once the download has ended; it
   * tells how many downloads of the cart are still in flight. When the plan cannot be made,
   * the error is thrown to every download waiting for it, and nothing stays taken.
   */
  async take(cartId: string, form: string, make: () => Promise<P | null>): Promise<Taken<P>> {
    let plans = this.#carts.get(cartId);
    if (!plans) this.#carts.set(cartId, plans = new Map());
    let entry = plans.get(form);
    const shared = entry !== undefined;
    if (!entry) {
      const made: Entry<P> = { plan: make(), users: 0 };
      plans.set(form, made);
      made.plan.then((b) => b ?? this.#forget(cartId, form, made), () => {
        this.#forget(cartId, form, made);
      });
      entry = made;
    }
    const taken = entry;
    taken.users++;
    let released = false;
    const release = () => {
      if (!released) {
        released = true;
        if (--taken.users === 0) this.#forget(cartId, form, taken);
      }
      return this.downloads(cartId);
    };
    try {
      return { bundle: await taken.plan, release, shared };
    } catch (error) {
      release();
      throw error;
    }
  }

  /** How many downloads of the cart are in flight here. */
  downloads(cartId: string): number {
    let n = 0;
    for (const entry of this.#carts.get(cartId)?.values() ?? []) n += entry.users;
    return n;
  }

  #forget(cartId: string, form: string, entry: Entry<P>): void {
    const plans = this.#carts.get(cartId);
    if (plans?.get(form) !== entry) return;
    plans.delete(form);
    if (!plans.size) this.#carts.delete(cartId);
  }
}
