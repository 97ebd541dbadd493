/**
 * The recalls that wait for the cap of outstanding recalls (`CARTD_RECALLS_MAX`), one queue
 * per cart, taken round-robin: each freed place goes to the next cart in turn, so a
 * 100,000-file cart cannot starve a 10-file cart. A cart with `queuedPerCart` recalls waiting
 * is told to wait before it asks for more ({@linkcode RecallQueue.room}), so that what waits
 * in memory beyond the cap stays bounded per cart.
 *
 * The items carry their own place ({@linkcode Queued.queue}): no wrapper object per recall,
 * and one that leaves (its cart was deleted) is skipped when its turn comes.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type CartQueue, RecallQueue } from "./recall_queue.ts";
 * interface Item {
 *   id: string;
 *   queue: CartQueue<Item> | undefined;
 * }
 * const item = (id: string): Item => ({ id, queue: undefined });
 * const queue = new RecallQueue<Item>(1000);
 * for (const id of ["b1", "b2", "b3"]) queue.add(item(id), "big");
 * const s1 = item("s1");
 * queue.add(s1, "small");
 * queue.add(item("s2"), "small");
 * queue.remove(s1); // the small cart's first recall is no longer wanted
 * const order: string[] = [];
 * for (let next = queue.next(); next; next = queue.next()) order.push(next.id);
 * assert.deepEqual(order, ["b1", "s2", "b2", "b3"]); // the carts take turns
 * ```
 * @module
 */

/** One cart's waiting items, in order. Opaque outside this module. */
export interface CartQueue<T> {
  /** The cart. */
  readonly cart: string;
  /** Its items in order, from `head` on; those that left are skipped. */
  items: (T | undefined)[];
  /** Where its next item is in `items`. */
  head: number;
  /** Items of `items` still waiting here. */
  live: number;
  /** Callers of {@linkcode RecallQueue.room} for this cart, while it is full. */
  room: (() => void)[] | undefined;
}

/** What an item of a {@linkcode RecallQueue} carries. */
export interface Queued<T> {
  /** The cart queue that holds it while it waits, kept by the queue; else undefined. */
  queue: CartQueue<T> | undefined;
}

/** The items waiting for the cap, by cart, served round-robin. */
export class RecallQueue<T extends Queued<T>> {
  readonly #perCart: number;
  /** Carts with items waiting; Map order is the round-robin order. */
  readonly #queues = new Map<string, CartQueue<T>>();
  #waiting = 0;

  /** An empty queue whose carts wait for {@linkcode RecallQueue.room} at `perCart` items. */
  constructor(perCart: number) {
    this.#perCart = perCart;
  }

  /** The items waiting, over all carts. */
  get waiting(): number {
    return this.#waiting;
  }

  /** Whether no item waits. */
  get empty(): boolean {
    return this.#queues.size === 0;
  }

  /** Puts `item` (in no queue) at the back of cart `cart`'s queue. */
  add(item: T, cart: string): void {
    let q = this.#queues.get(cart);
    if (!q) this.#queues.set(cart, q = { cart, items: [], head: 0, live: 0, room: undefined });
    q.items.push(item);
    q.live++;
    item.queue = q;
    this.#waiting++;
  }

  /** Takes out the next item in turn: the first of the next cart's queue. */
  next(): T | undefined {
    for (;;) {
      const first = this.#queues.values().next();
      if (first.done) return undefined;
      const q = first.value;
      this.#queues.delete(q.cart);
      let next: T | undefined;
      while (q.head < q.items.length && next === undefined) {
        const item = q.items[q.head];
        q.items[q.head++] = undefined;
        if (item?.queue === q) next = item;
      }
      if (next) {
        q.live--;
        this.#waiting--;
        next.queue = undefined;
        this.#wakeRoom(q);
      }
      if (q.live > 0) {
        if (q.head > 1024 && q.head * 2 > q.items.length) {
          q.items = q.items.slice(q.head);
          q.head = 0;
        }
        this.#queues.set(q.cart, q); // to the back of the round
      }
      if (next) return next;
    }
  }

  /** Takes `item` out of its queue (it stays in `items`, skipped when its turn comes). */
  remove(item: T): void {
    const q = item.queue;
    if (!q) return;
    this.#waiting--;
    item.queue = undefined;
    this.#wakeRoom(q, --q.live === 0);
    if (q.live === 0 && this.#queues.get(q.cart) === q) this.#queues.delete(q.cart);
  }

  /**
   * Resolves once cart `cart` has fewer than `perCart` items waiting: at once while it has;
   * rejects with the signal's reason when it aborts first.
   */
  room(cart: string, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const q = this.#queues.get(cart);
    if (!q || q.live < this.#perCart) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(signal!.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      (q.room ??= []).push(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      });
    });
  }

  /**
   * Lets every caller of {@linkcode RecallQueue.room} go and forgets the round (the manager is
   * closing); the items keep their `queue` until they are removed.
   */
  clear(): void {
    for (const q of this.#queues.values()) this.#wakeRoom(q, true);
    this.#queues.clear();
  }

  /** Wakes the callers of `room` waiting on `q` once it has room (or `all`). */
  #wakeRoom(q: CartQueue<T>, all = false): void {
    if (!q.room || (!all && q.live >= this.#perCart)) return;
    const room = q.room;
    q.room = undefined;
    for (const wake of room) wake();
  }
}
