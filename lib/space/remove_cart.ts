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
import { DbWriteError } from "../db/db.ts";
import type { Cart, CartStore } from "../store/store.ts";
import type { Volume } from "../volume/volume.ts";
import { errorMessage, log } from "../util/log.ts";
import type { Cancellations } from "./cancellations.ts";

/**
 * Removes `cart` (see the module doc); `why` goes to the log. Workers listening on
 * `cancellations` (the process's) stop their work on it; without it (`cartd admin`, whose
 * process runs no worker) no local worker is told.
 *
 * When the database cannot be written because its disk is full and `freesDatabase` says the
 * database shares the volume's file system, the folder is removed first, which makes the room
 * the database needs, and then the rows are written. Where that is not enough (or the
 * database lives elsewhere), the database's error is thrown: the caller answers 503 naming it.
 */
export async function removeCart(
  store: CartStore,
  volume: Volume,
  cart: Cart,
  why: string,
  cancellations?: Cancellations,
  freesDatabase = false,
): Promise<void> {
  try {
    await store.unlive(cart.id);
  } catch (error) {
    if (!(freesDatabase && error instanceof DbWriteError && error.why === "full")) throw error;
    cancellations?.cancel(cart.id);
    await volume.remove(cart.id);
    log.warn("the volume is full: removed the cart's folder before its rows, to make room", {
      uid: cart.uid,
      cart: cart.id,
      why,
      error: errorMessage(error),
    });
    try {
      await store.unlive(cart.id);
    } catch (again) {
      log.warn(
        "the cart's folder is removed, but its rows cannot be written yet: a DELETE " +
          "once there is room ends it",
        { uid: cart.uid, cart: cart.id, error: errorMessage(again) },
      );
      throw again;
    }
  }
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
  let handed = { handedFiles: 0, handedBytes: 0 };
  try {
    handed = await store.forget(cart.id);
  } catch (error) {
    // Gone for clients and from the volume: the sweep forgets the rows of dead carts later.
    if (!(error instanceof DbWriteError)) throw error;
    log.warn("cart removed, its rows not yet forgotten; the sweep will", {
      uid: cart.uid,
      cart: cart.id,
      error: errorMessage(error),
    });
  }
  log.info("cart removed", {
    uid: cart.uid,
    cart: cart.id,
    why,
    status: cart.status,
    // Files it shared: their bytes stay, now counted by a cart that still holds them.
    shared: handed.handedFiles || undefined,
    sharedBytes: handed.handedBytes || undefined,
  });
}
