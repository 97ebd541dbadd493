import assert from "node:assert/strict";
import { Batcher } from "./batcher.ts";

Deno.test("a batch is written when full, in order, and the rest on flush", async () => {
  const written: number[][] = [];
  const batch = new Batcher<number>(
    (items) => {
      written.push(items);
      return Promise.resolve();
    },
    3,
    60_000,
  );
  for (let i = 1; i <= 7; i++) await batch.add(i);
  assert.deepEqual(written, [[1, 2, 3], [4, 5, 6]]);
  await batch.flush();
  assert.deepEqual(written, [[1, 2, 3], [4, 5, 6], [7]]);
});

Deno.test("a batch is written after the delay even when not full", async () => {
  const written: string[][] = [];
  const batch = new Batcher<string>(
    (items) => {
      written.push(items);
      return Promise.resolve();
    },
    100,
    20,
  );
  await batch.add("a");
  assert.deepEqual(written, []);
  await new Promise((r) => setTimeout(r, 60));
  assert.deepEqual(written, [["a"]]);
  await batch.flush();
});

Deno.test("a failed batch makes the next add and the flush throw", async () => {
  const batch = new Batcher<number>(() => Promise.reject(new Error("disk on fire")), 2, 60_000);
  await batch.add(1);
  await batch.add(2); // starts the failing write
  await assert.rejects(batch.flush(), /disk on fire/);
  await assert.rejects(batch.add(3), /disk on fire/);
});

Deno.test("discard drops what was collected and its timer", async () => {
  let calls = 0;
  const batch = new Batcher<number>(() => Promise.resolve(void calls++), 10, 10);
  await batch.add(1);
  batch.discard();
  await new Promise((r) => setTimeout(r, 30));
  await batch.flush();
  assert.equal(calls, 0);
});
