import assert from "node:assert/strict";
import { MinHeap } from "./heap.ts";

interface Item {
  id: number;
  key: number;
  heapIndex: number;
}

const item = (id: number, key: number): Item => ({ id, key, heapIndex: -1 });

/** A small deterministic generator (the test must not depend on Math.random's seed). */
function numbers(seed: number): () => number {
  let s = seed;
  return () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
}

Deno.test("pop gives the keys in order, and an empty heap gives undefined", () => {
  const heap = new MinHeap<Item>((e) => e.key);
  for (const [i, k] of [5, 3, 8, 1, 9, 2, 7].entries()) heap.push(item(i, k));
  assert.equal(heap.size, 7);
  assert.equal(heap.peek()?.key, 1);
  const keys: number[] = [];
  for (let e = heap.pop(); e; e = heap.pop()) keys.push(e.key);
  assert.deepEqual(keys, [1, 2, 3, 5, 7, 8, 9]);
  assert.equal(heap.size, 0);
  assert.equal(heap.peek(), undefined);
  assert.equal(heap.pop(), undefined);
});

Deno.test("remove and update keep the heap in order; items out of it say so", () => {
  const heap = new MinHeap<Item>((e) => e.key);
  const items = Array.from({ length: 10 }, (_, i) => item(i, i * 10));
  for (const e of items) heap.push(e);
  heap.remove(items[0]);
  heap.remove(items[5]);
  heap.remove(items[5]); // twice: nothing
  assert.equal(items[5].heapIndex, -1);
  assert.equal(heap.has(items[5]), false);
  items[9].key = 1;
  heap.update(items[9]); // down to the top
  items[1].key = 1000;
  heap.update(items[1]); // up to the bottom
  const outside = item(99, 0);
  heap.update(outside); // not in the heap: nothing
  heap.remove(outside);
  assert.equal(heap.has(outside), false);
  const ids: number[] = [];
  for (let e = heap.pop(); e; e = heap.pop()) ids.push(e.id);
  assert.deepEqual(ids, [9, 2, 3, 4, 6, 7, 8, 1]);
});

Deno.test("10,000 random pushes, removals, updates and pops match a sorted list", () => {
  const random = numbers(7);
  const heap = new MinHeap<Item>((e) => e.key);
  const inside = new Set<Item>();
  let next = 0;
  for (let step = 0; step < 10_000; step++) {
    const r = random();
    const members = [...inside];
    const any = members[Math.floor(random() * members.length)];
    if (r < 0.4 || !any) {
      const e = item(next++, Math.floor(random() * 1000));
      heap.push(e);
      inside.add(e);
    } else if (r < 0.6) {
      heap.remove(any);
      inside.delete(any);
    } else if (r < 0.8) {
      any.key = Math.floor(random() * 1000);
      heap.update(any);
    } else {
      const least = Math.min(...members.map((e) => e.key));
      const top = heap.pop()!;
      assert.equal(top.key, least);
      inside.delete(top);
    }
    assert.equal(heap.size, inside.size);
    for (const e of members) assert.equal(heap.has(e), inside.has(e));
  }
  const rest = [...inside].map((e) => e.key).sort((a, b) => a - b);
  const popped: number[] = [];
  for (let e = heap.pop(); e; e = heap.pop()) popped.push(e.key);
  assert.deepEqual(popped, rest);
});
