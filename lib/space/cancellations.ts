/**
 * Word, inside one process, that a cart's work must stop: DELETE, a replacing POST, the LRU
 * purge and retention remove carts (see {@linkcode ./remove_cart.ts}); a worker of the same
 * process busy with such a cart listens and aborts its work at once. Workers of other
 * processes learn it when their claim renewal finds the row gone.
 *
 * One {@linkcode Cancellations} belongs to one process (app/service.ts makes it and hands it
 * to the routes, the space and the worker), so two services in one process (as in tests) do
 * not hear each other.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { Cancellations } from "./cancellations.ts";
 * const cancellations = new Cancellations();
 * const heard: string[] = [];
 * const stop = cancellations.onCancel((cartId) => heard.push(cartId));
 * cancellations.cancel("a");
 * stop();
 * cancellations.cancel("b");
 * assert.deepEqual(heard, ["a"]);
 * ```
 * @module
 */

/** The event name {@linkcode Cancellations} dispatches (its `detail` is the cart id). */
export const CANCEL_EVENT = "cancel";

/**
 * The cancellations of one process. It is an `EventTarget` dispatching a
 * `CustomEvent<string>` named {@linkcode CANCEL_EVENT} (detail: the cart id), so code that
 * listens with `addEventListener` keeps working; new code uses {@linkcode onCancel}.
 */
export class Cancellations extends EventTarget {
  /** Tells every listener that the work on cart `cartId` must stop. */
  cancel(cartId: string): void {
    this.dispatchEvent(new CustomEvent(CANCEL_EVENT, { detail: cartId }));
  }

  /**
   * Calls `listener` with the cart id of each later {@linkcode cancel}; returns the function
   * that stops listening.
   */
  onCancel(listener: (cartId: string) => void): () => void {
    const handler: EventListener = (event) => listener((event as CustomEvent<string>).detail);
    this.addEventListener(CANCEL_EVENT, handler);
    return () => this.removeEventListener(CANCEL_EVENT, handler);
  }
}
