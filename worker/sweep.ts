/**
 * The worker's periodic sweep: it queues unfinished carts that nobody holds (their worker
 * died, or their message was lost), removes what deleted or replaced carts left (their rows,
 * when no live claim protects them, and folders without a row), and expires ready carts past
 * their retention (`Space.expire`, lib/space/retention.ts).
 *
 * @module
 */
import { log } from "../lib/util/log.ts";
import type { WorkerDeps } from "./context.ts";

/** Sweeps for one worker; it skips the carts that worker is working on. */
export class Sweep {
  #sweeping = false;
  #swept = false;
  /** Folders without a row at the last sweep. */
  #folderSuspects = new Set<string>();
  /** The last refusal to remove folders logged ("" when the last sweep removed what it found). */
  #refused = "";
  /** When it was logged. */
  #refusedLoggedAt = 0;

  /**
   * A sweep over `deps`; `isActive(cartId)` tells whether this worker is working on a cart
   * right now (the dispatcher's own carts are never queued again or removed by its sweep).
   */
  constructor(
    readonly deps: WorkerDeps,
    readonly isActive: (cartId: string) => boolean,
  ) {}

  /**
   * Sweeps once. A sweep that starts while the last one still runs (waiting on a slow broker,
   * say) returns at once: the one running is enough.
   */
  async run(): Promise<void> {
    if (this.#sweeping) return;
    this.#sweeping = true;
    try {
      await this.#requeueOrphans();
      await this.#removeDead();
      await this.#removeStrayFolders();
      await this.deps.space.expire();
    } finally {
      this.#sweeping = false;
    }
  }

  /**
   * Queues unfinished carts nobody holds. The first sweep queues every orphan (an in-process
   * queue starts empty); later ones only carts left unclaimed for a while, so that a long
   * backlog is not queued again and again, and carts whose claim expired (which is how
   * `cartd admin fixit` marks a fixed cart to be taken at once: an expired claim, no owner).
   */
  async #requeueOrphans(): Promise<void> {
    const { store, queue, config } = this.deps;
    const quietSince = this.#swept ? Date.now() - 5 * config.work.claimTtlMs : Date.now();
    this.#swept = true;
    for (const cart of await store.orphans(quietSince)) {
      if (this.isActive(cart.id)) continue;
      if (await store.requeue(cart.id, quietSince)) {
        log.info("cart queued again", { uid: cart.uid, cart: cart.id, status: cart.status });
        await queue.publish(cart.id);
      }
    }
  }

  /** Removes the folders and rows of deleted or replaced carts that no live claim protects. */
  async #removeDead(): Promise<void> {
    const { store, volume } = this.deps;
    const now = Date.now();
    for (const cart of await store.dead()) {
      if (this.isActive(cart.id)) continue;
      if (cart.claimOwner && (cart.claimExpires ?? 0) >= now) continue;
      await volume.remove(cart.id);
      await store.forget(cart.id);
    }
  }

  /**
   * Removes a folder without a row when a second sweep still finds it so: a row that is being
   * written in another process's open transaction (fixit moves a folder) is spared. A sweep
   * never removes folders wholesale: when the database has no cart rows at all, or more than
   * `CARTD_SWEEP_MAX_REMOVE` folders would go at once, the database is more likely lost or
   * replaced than the carts dead, so it removes none and warns ({@linkcode strayRefusal}).
   */
  async #removeStrayFolders(): Promise<void> {
    const { store, volume, config } = this.deps;
    const suspects = new Set<string>();
    const confirmed: string[] = [];
    for (const id of await volume.cartIds()) {
      if (this.isActive(id) || (await store.cart(id))) continue;
      if (this.#folderSuspects.has(id)) confirmed.push(id);
      else suspects.add(id);
    }
    const refusal = confirmed.length === 0 ? null : strayRefusal(
      confirmed.length,
      await store.hasCarts(),
      config.work.sweepMaxRemove,
    );
    if (refusal) {
      for (const id of confirmed) suspects.add(id);
      this.#warnRefused(refusal, confirmed);
    } else {
      for (const id of confirmed) await volume.remove(id);
      this.#refused = "";
    }
    this.#folderSuspects = suspects;
  }

  /** Logs a refusal when it is new (another reason or count), and every 10 minutes. */
  #warnRefused(reason: string, folders: string[]): void {
    const key = `${reason} ${folders.length}`;
    const now = Date.now();
    if (key === this.#refused && now - this.#refusedLoggedAt < REFUSAL_LOG_EVERY_MS) return;
    this.#refused = key;
    this.#refusedLoggedAt = now;
    log.warn(
      `the sweep keeps ${folders.length} cart folders that have no row in the database: ` +
        `${reason}. If the database file was lost or replaced, stop cartd and restore it ` +
        "(CARTD_SQLITE_PATH, or the MySQL database); to accept the loss, remove the folders " +
        `from ${this.deps.volume.cartsDir} by hand (docs/operations.md, "A lost database")`,
      {
        folders: folders.length,
        first: folders.slice(0, 3).join(" "),
        max: this.deps.config.work.sweepMaxRemove,
      },
    );
  }
}

/** How often a refusal that stays the same is logged again. */
const REFUSAL_LOG_EVERY_MS = 10 * 60_000;

/**
 * Why a sweep must not remove `count` folders without a row, or null when it may:
 * the database has no cart rows at all (`hasCarts` false: it is new, or was replaced by an
 * empty one), or `count` is above `max` (`CARTD_SWEEP_MAX_REMOVE`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { strayRefusal } from "./sweep.ts";
 * assert.equal(strayRefusal(2, true, 20), null);
 * assert.match(strayRefusal(2, false, 20)!, /no cart rows/);
 * assert.match(strayRefusal(21, true, 20)!, /CARTD_SWEEP_MAX_REMOVE/);
 * ```
 */
export function strayRefusal(count: number, hasCarts: boolean, max: number): string | null {
  if (!hasCarts) {
    return "the database has no cart rows at all, so it looks new or replaced, not the carts dead";
  }
  if (count > max) {
    return `that is more than CARTD_SWEEP_MAX_REMOVE (${max}) at once, so the database looks ` +
      "lost or replaced (raise the setting if these carts are known to be gone)";
  }
  return null;
}
