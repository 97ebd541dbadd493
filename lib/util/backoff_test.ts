import assert from "node:assert/strict";
import { backoffDelays, sleep } from "./backoff.ts";

function take(it: Iterator<number>, n: number): number[] {
  return Array.from({ length: n }, () => it.next().value);
}

Deno.test("backoffDelays without jitter doubles up to the cap", () => {
  const d = take(backoffDelays({ initialMs: 100, maxMs: 1000, jitter: 0 }), 7);
  assert.deepEqual(d, [100, 200, 400, 800, 1000, 1000, 1000]);
});

Deno.test("backoffDelays honours a custom factor", () => {
  const d = take(backoffDelays({ initialMs: 10, maxMs: 1e6, factor: 3, jitter: 0 }), 4);
  assert.deepEqual(d, [10, 30, 90, 270]);
});

Deno.test("backoffDelays jitter stays within [1-j, 1+j] and never exceeds maxMs", () => {
  const it = backoffDelays({ initialMs: 100, maxMs: 1000, jitter: 0.2 });
  let base = 100;
  const seen = new Set<number>();
  for (let i = 0; i < 200; i++) {
    const v = it.next().value;
    assert.ok(v >= base * 0.8 - 1e-9, `delay ${v} below ${base * 0.8}`);
    assert.ok(v <= Math.min(1000, base * 1.2) + 1e-9, `delay ${v} above bound`);
    seen.add(v);
    base = Math.min(1000, base * 2);
  }
  assert.ok(seen.size > 10, "jitter must actually vary the delays");
});

Deno.test("backoffDelays uses the extremes of the random factor", () => {
  const low = take(backoffDelays({ initialMs: 100, maxMs: 1000, random: () => 0 }), 2);
  assert.deepEqual(low, [80, 160]);
  const high = take(backoffDelays({ initialMs: 100, maxMs: 1000, random: () => 0.999999 }), 5);
  assert.ok(Math.abs(high[0] - 120) < 0.01);
  assert.equal(high[4], 1000); // 1600 * 1.2 capped
});

Deno.test("backoffDelays rejects a shrinking factor", () => {
  assert.throws(() => backoffDelays({ initialMs: 1, maxMs: 2, factor: 0.5 }), RangeError);
});

Deno.test("sleep waits about the given time", async () => {
  const t = performance.now();
  await sleep(60);
  assert.ok(performance.now() - t >= 55);
});

Deno.test("sleep rejects with the abort reason, early", async () => {
  const ac = new AbortController();
  const reason = new Error("stop now");
  const t = performance.now();
  setTimeout(() => ac.abort(reason), 20);
  await assert.rejects(sleep(5000, ac.signal), (e) => e === reason);
  assert.ok(performance.now() - t < 1000);
});

Deno.test("sleep on an aborted signal rejects at once", async () => {
  const reason = new Error("already");
  await assert.rejects(sleep(10, AbortSignal.abort(reason)), (e) => e === reason);
});
