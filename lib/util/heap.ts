/**
 * A min-heap of items that carry their own position ({@linkcode HeapItem.heapIndex}), so that
 * an item can be removed, or moved after its key changed, in O(log n) without a search and
 * without a wrapper object per item: the recall poller keeps 100,000 files by their next poll
 * time in one.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MinHeap } from "./heap.ts";
 * const heap = new MinHeap<{ name: string; dueAt: number; heapIndex: number }>((e) => e.dueAt);
 * const a = { name: "a", dueAt: 30, heapIndex: -1 };
 * const b = { name: "b", dueAt: 10, heapIndex: -1 };
 * const c = { name: "c", dueAt: 20, heapIndex: -1 };
 * for (const e of [a, b, c]) heap.push(e);
 * a.dueAt = 5;
 * heap.update(a); // its key went down: it moves to the top
 * heap.remove(c);
 * assert.equal(heap.pop()?.name, "a");
 * assert.equal(heap.pop()?.name, "b");
 * assert.equal(heap.pop(), undefined);
 * assert.equal(c.heapIndex, -1); // not in the heap
 * ```
 * @module
 */

/** What an item of a {@linkcode MinHeap} carries. */
export interface HeapItem {
  /** The item's position in its heap, kept by the heap; -1 while it is in none. */
  heapIndex: number;
}

/**
 * A binary min-heap by `key(item)`. An item is in at most one heap at a time; items of equal
 * keys come out in no particular order.
 */
export class MinHeap<T extends HeapItem> {
  readonly #items: T[] = [];
  readonly #key: (item: T) => number;

  /**
   * An empty heap ordered by `key`. An item's key changes while it is in the heap only
   * with a call of {@linkcode MinHeap.update} right after.
   */
  constructor(key: (item: T) => number) {
    this.#key = key;
  }

  /** The number of items in the heap. */
  get size(): number {
    return this.#items.length;
  }

  /** The item of the smallest key, left in the heap; undefined when the heap is empty. */
  peek(): T | undefined {
    return this.#items[0];
  }

  /** Whether `item` is in this heap. */
  has(item: T): boolean {
    return this.#items[item.heapIndex] === item;
  }

  /** Adds `item`, which must not be in a heap. */
  push(item: T): void {
    item.heapIndex = this.#items.length;
    this.#items.push(item);
    this.#siftUp(item.heapIndex);
  }

  /** Takes out the item of the smallest key; undefined when the heap is empty. */
  pop(): T | undefined {
    const top = this.#items[0];
    if (top !== undefined) this.remove(top);
    return top;
  }

  /** Takes `item` out of the heap; nothing when it is not in it. */
  remove(item: T): void {
    if (!this.has(item)) return;
    const h = this.#items;
    const i = item.heapIndex;
    const last = h.pop()!;
    item.heapIndex = -1;
    if (last === item) return;
    h[i] = last;
    last.heapIndex = i;
    this.#siftUp(i);
    this.#siftDown(last.heapIndex);
  }

  /** Moves `item` to its place after its key changed; nothing when it is not in the heap. */
  update(item: T): void {
    if (!this.has(item)) return;
    this.#siftUp(item.heapIndex);
    this.#siftDown(item.heapIndex);
  }

  #siftUp(i: number): void {
    const h = this.#items;
    const e = h[i];
    const k = this.#key(e);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.#key(h[p]) <= k) break;
      h[i] = h[p];
      h[i].heapIndex = i;
      i = p;
    }
    h[i] = e;
    e.heapIndex = i;
  }

  #siftDown(i: number): void {
    const h = this.#items;
    const e = h[i];
    const k = this.#key(e);
    const n = h.length;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && this.#key(h[c + 1]) < this.#key(h[c])) c++;
      if (this.#key(h[c]) >= k) break;
      h[i] = h[c];
      h[i].heapIndex = i;
      i = c;
    }
    h[i] = e;
    e.heapIndex = i;
  }
}
