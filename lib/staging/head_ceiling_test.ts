import assert from "node:assert/strict";
import { HeadCeiling } from "./head_ceiling.ts";

Deno.test("at most headsPerSecond tokens in any one-second window", () => {
  const ceiling = new HeadCeiling(50, 0);
  const taken: number[] = [];
  for (let t = 0; t < 5000; t++) while (ceiling.take(t)) taken.push(t);
  for (let i = 0, j = 0; i < taken.length; i++) {
    while (j < taken.length && taken[j] < taken[i] + 1000) j++;
    assert.ok(j - i <= 50, `${j - i} tokens in the second from ${taken[i]} ms`);
  }
  // A full bucket (5), then 46 a second: 50 in the first second, and in any other.
  assert.ok(taken.length >= 5 + 5 * 46 - 1, `${taken.length} tokens in 5 s`);
});

Deno.test("callers wait in order; one that gives up is skipped, also after the queue is cut", async () => {
  const ceiling = new HeadCeiling(10, 0); // one token, refilled 10 a second
  assert.equal(ceiling.take(0), true);
  const order: number[] = [];
  const quit = new AbortController();
  // 3,000 callers: serving them cuts the front off the queue more than once.
  const slots = Array.from(
    { length: 3000 },
    (_, i) =>
      ceiling.slot(0, false, i === 2500 ? quit.signal : undefined).then(
        () => void order.push(i),
        () => void order.push(-i),
      ),
  );
  for (let i = 0; i < 2000; i++) ceiling.grant();
  quit.abort(new Error("cart deleted"));
  while (ceiling.waiting) ceiling.grant();
  await Promise.all(slots);
  assert.equal(ceiling.granted, 2999, "the caller that gave up took no slot");
  assert.deepEqual(order.filter((i) => i < 0), [-2500]);
  const served = order.filter((i) => i >= 0);
  assert.deepEqual(served, [...served].sort((a, b) => a - b), "served in order");
});

Deno.test("unbounded callers go at once while nobody waits; releaseAll lets the waiting go", async () => {
  const ceiling = new HeadCeiling(10, 0);
  assert.equal(ceiling.take(0), true);
  await ceiling.slot(0, true); // no token, but unbounded
  const waiting = ceiling.slot(0, false);
  assert.equal(ceiling.waiting, true);
  ceiling.releaseAll();
  await waiting;
  assert.equal(ceiling.waiting, false);
  assert.equal(ceiling.granted, 1, "released callers are not counted as granted");
});
