import assert from "node:assert/strict";
import { backoffDelays, retry, sleep } from "./backoff.ts";

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

/** Delays of 0 ms, so the retry tests take no time. */
const NO_WAIT = backoffDelays({ initialMs: 0, maxMs: 0 });

Deno.test("retry calls again until the call resolves, numbering the attempts", async () => {
  const seen: number[] = [];
  const value = await retry((attempt) => {
    seen.push(attempt);
    if (attempt < 3) throw new Error(`busy ${attempt}`);
    return "done";
  }, { attempts: 5, delays: NO_WAIT });
  assert.equal(value, "done");
  assert.deepEqual(seen, [1, 2, 3]);
});

Deno.test("retry gives up after its attempts, with the last failure as it is", async () => {
  const infos: { attempt: number; retrying: boolean }[] = [];
  let calls = 0;
  await assert.rejects(
    retry(() => Promise.reject(new Error(`failure ${++calls}`)), {
      attempts: 3,
      delays: NO_WAIT,
      onFailure: (_, { attempt, retrying }) => infos.push({ attempt, retrying }),
    }),
    { message: "failure 3" },
  );
  assert.deepEqual(infos, [
    { attempt: 1, retrying: true },
    { attempt: 2, retrying: true },
    { attempt: 3, retrying: false },
  ]);
});

Deno.test("retry stops at once on a failure that is not retryable", async () => {
  let calls = 0;
  await assert.rejects(
    retry(() => {
      calls++;
      throw new TypeError("final");
    }, { attempts: 5, delays: NO_WAIT, isRetryable: (e) => !(e instanceof TypeError) }),
    TypeError,
  );
  assert.equal(calls, 1);
});

Deno.test("retry waits the delays it is given, and ends at the deadline", async () => {
  const start = performance.now();
  let calls = 0;
  let elapsed = 0;
  await assert.rejects(
    retry(() => Promise.reject(new Error(`failure ${++calls}`)), {
      deadlineMs: 100,
      delays: backoffDelays({ initialMs: 40, maxMs: 40, jitter: 0 }),
      onFailure: (_, info) => elapsed = info.elapsedMs,
    }),
  );
  const took = performance.now() - start;
  assert.ok(calls >= 3 && calls <= 4, `calls ${calls}`); // 0, 40, 80, 100 (the last delay cut)
  assert.ok(elapsed >= 95, `elapsed ${elapsed}`);
  assert.ok(took >= 95 && took < 1000, `took ${took}`);
});

Deno.test("retry makes no call after the one at the deadline, even if the timer fired early", async () => {
  // The clock says what each call saw: the timer of the cut delay fired 0.1 ms early.
  const seen = [0, 40, 80, 99.9, 100.5];
  let calls = 0;
  const realNow = performance.now;
  performance.now = () => seen[Math.min(calls, seen.length) - 1];
  try {
    await assert.rejects(
      retry(() => Promise.reject(new Error(`failure ${++calls}`)), {
        deadlineMs: 100,
        delays: backoffDelays({ initialMs: 40, maxMs: 40, jitter: 0 }),
      }),
      { message: "failure 4" },
    );
  } finally {
    performance.now = realNow;
  }
});

Deno.test("retry rejects with the abort reason, also during a delay", async () => {
  const ac = new AbortController();
  const reason = new Error("stop");
  setTimeout(() => ac.abort(reason), 20);
  await assert.rejects(
    retry(() => Promise.reject(new Error("busy")), {
      delays: backoffDelays({ initialMs: 5000, maxMs: 5000 }),
      signal: ac.signal,
    }),
    (e) => e === reason,
  );
});
