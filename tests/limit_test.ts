import assert from "node:assert/strict";
import { forEachLimited } from "../lib/limit.ts";

const tick = () => new Promise((r) => setTimeout(r, 5));

Deno.test("forEachLimited runs every item, never more than the limit at once", async () => {
  let running = 0;
  let peak = 0;
  const done: number[] = [];
  await forEachLimited([1, 2, 3, 4, 5, 6, 7], 3, async (n) => {
    running++;
    peak = Math.max(peak, running);
    await tick();
    done.push(n);
    running--;
  });
  assert.equal(peak, 3);
  assert.deepEqual(done.sort(), [1, 2, 3, 4, 5, 6, 7]);
});

Deno.test("the first failure stops new items, aborts running ones and is thrown", async () => {
  const started: number[] = [];
  let abortedSeen = 0;
  await assert.rejects(
    forEachLimited([1, 2, 3, 4, 5, 6], 2, async (n, signal) => {
      started.push(n);
      if (n === 2) throw new Error("boom 2");
      await tick();
      if (signal.aborted) abortedSeen++;
    }),
    /boom 2/,
  );
  assert.ok(started.length < 6, `started ${started}`);
  assert.equal(abortedSeen, 1);
});

Deno.test("an outer abort stops the work", async () => {
  const controller = new AbortController();
  controller.abort(new Error("stop"));
  let ran = 0;
  await assert.rejects(
    forEachLimited([1, 2], 1, () => Promise.resolve(void ran++), controller.signal),
    /stop/,
  );
  assert.equal(ran, 0);
});
