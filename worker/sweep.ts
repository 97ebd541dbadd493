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
   * backlog is not queued again and again.
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
   * written in another process's open transaction (fixit moves a folder) is spared.
   */
  async #removeStrayFolders(): Promise<void> {
    const { store, volume } = this.deps;
    const suspects = new Set<string>();
    for (const id of await volume.cartIds()) {
      if (this.isActive(id) || (await store.cart(id))) continue;
      if (this.#folderSuspects.has(id)) await volume.remove(id);
      else suspects.add(id);
    }
    this.#folderSuspects = suspects;
  }
}
