/**
 * Retention (`CARTD_RETENTION`): a ready cart is removed, as DELETE would remove it, once it
 * has been ready for longer than the retention time — counted from when it became ready, not
 * from its last use (for that, see the LRU purge in {@linkcode ./space.ts}). Off (0) by
 * default. The worker's periodic sweep calls {@linkcode expireCarts}; carts in progress and
 * failed carts are never touched.
 *
 * @module
 */
import { log } from "../util/log.ts";
import type { Cancellations } from "./cancellations.ts";
import { removeCart } from "./remove_cart.ts";
import type { Cart, CartStore } from "../store/store.ts";
import type { Volume } from "../volume/volume.ts";
import { countCartEvent } from "../util/metrics.ts";

/**
 * Removes every live cart that became ready more than `retentionMs` before `now`; returns the
 * removed carts. Does nothing when `retentionMs` is 0. Workers of this process busy with a
 * removed cart hear it through `cancellations` (see {@linkcode removeCart}).
 */
export async function expireCarts(
  store: CartStore,
  volume: Volume,
  retentionMs: number,
  now: number = Date.now(),
  cancellations?: Cancellations,
): Promise<Cart[]> {
  if (!(retentionMs > 0)) return [];
  const readyBefore = now - retentionMs;
  const removed: Cart[] = [];
  for (const cart of await store.readyBefore(readyBefore)) {
    // Another process may have removed (or replaced) it since the list was read.
    // A cart held by a download in flight (last use in the future: CartStore.touch) is spared.
    if (!(await store.unliveReady(cart.id, { readyBefore, usedBefore: now + 1 }))) continue;
    countCartEvent("purged");
    const why = `retention: ready for more than ${retentionMs} ms`;
    await removeCart(store, volume, cart, why, cancellations);
    removed.push(cart);
  }
  if (removed.length) log.info("retention removed carts", { carts: removed.length });
  return removed;
}
