import assert from "node:assert/strict";
import { QuickFs } from "./quick_fs.ts";

/** A QuickFs on a clock that calls move by hand, and a call that "takes" `ms`. */
function setup() {
  const clock = { t: 0 };
  const fs = new QuickFs(2, 60_000, () => clock.t);
  const ran: string[] = [];
  const call = (ms: number) =>
    fs.call(
      () => {
        clock.t += ms;
        ran.push("sync");
        return ms;
      },
      () => {
        ran.push("async");
        return Promise.resolve(ms);
      },
    );
  return { clock, fs, ran, call };
}

Deno.test("quick fs: quick calls stay synchronous; one preempted call does not switch", async () => {
  const { fs, ran, call } = setup();
  for (let i = 0; i < 50; i++) assert.equal(await call(0.05), 0.05);
  await call(15); // the thread was descheduled once
  for (let i = 0; i < 10; i++) await call(0.05);
  assert.ok(ran.every((r) => r === "sync"), ran.join());
  assert.ok(fs.quick && fs.averageMs < 2, `average ${fs.averageMs}`);
});

Deno.test("quick fs: a slow volume switches to asynchronous calls, then tries again", async () => {
  const { clock, fs, ran, call } = setup();
  let n = 0;
  while (fs.quick) { // an NFS volume: 5 ms a call
    await call(5);
    assert.ok(++n < 20, "never switched");
  }
  assert.ok(n >= 3, `switched after ${n} calls`); // not on the first slow call
  ran.length = 0;
  await call(5);
  await call(5);
  assert.deepEqual(ran, ["async", "async"]);
  clock.t += 60_000;
  await call(0.05);
  assert.deepEqual(ran, ["async", "async", "sync"]);
  assert.ok(fs.quick);
});

Deno.test("quick fs: errors of either form pass through", async () => {
  const fs = new QuickFs();
  await assert.rejects(
    fs.call(() => Deno.renameSync("/nonexistent/a", "/nonexistent/b"), () => Promise.resolve()),
    Deno.errors.NotFound,
  );
  const slow = new QuickFs(-1); // every call counts as slow: the second goes asynchronous
  await slow.call(() => {}, () => Promise.resolve());
  await assert.rejects(
    slow.call(() => {}, () => Deno.rename("/nonexistent/a", "/nonexistent/b")),
    Deno.errors.NotFound,
  );
});
