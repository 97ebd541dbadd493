/**
 * Removing a cart: what DELETE, a replacing POST, the LRU purge and retention all do.
 * The cart leaves the live set at once (HEAD and GET answer 404), its folder is removed, and
 * its rows are forgotten. A worker still busy with it is told to stop: in this process at
 * once (through the process's {@linkcode Cancellations}), in other processes when their claim
 * renewal finds the row gone; that worker removes the folder once more after its last write,
 * so no file is left behind.
 *
 * @module
 */
import type { Cart, CartStore } from "../store/store.ts";
import type { Volume } from "../volume/volume.ts";
import { errorMessage, log } from "../util/log.ts";
import type { Cancellations } from "./cancellations.ts";

/**
 * Removes `cart` (see the module doc); `why` goes to the log. Workers listening on
 * `cancellations` (the process's) stop their work on it; without it (`cartd admin`, whose
 * process runs no worker) no local worker is told.
 */
export async function removeCart(
  store: CartStore,
  volume: Volume,
  cart: Cart,
  why: string,
  cancellations?: Cancellations,
): Promise<void> {
  await store.unlive(cart.id);
  cancellations?.cancel(cart.id);
  try {
    await volume.remove(cart.id);
  } catch (error) {
    // The cart is gone for clients already; its rows stay so that a worker's sweep removes
    // the folder later (a file held open elsewhere, a worker still writing).
    log.warn("cart folder not removed yet; the sweep will", {
      uid: cart.uid,
      cart: cart.id,
      error: errorMessage(error),
    });
    return;
  }
  await store.forget(cart.id);
  log.info("cart removed", { uid: cart.uid, cart: cart.id, why, status: cart.status });
}
