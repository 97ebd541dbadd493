import assert from "node:assert/strict";
import { forEachLimited } from "./limit.ts";

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

Deno.test("an async source is pulled as lanes free up, in order, never ahead", async () => {
  let pulled = 0;
  let running = 0;
  let peak = 0;
  let mostAhead = 0;
  const started: number[] = [];
  async function* source() {
    for (let i = 0; i < 20; i++) {
      if (i % 5 === 0) await Promise.resolve(); // a page read now and then
      pulled++;
      yield i;
    }
  }
  await forEachLimited(source(), 4, async (n) => {
    started.push(n);
    running++;
    peak = Math.max(peak, running);
    mostAhead = Math.max(mostAhead, pulled - started.length);
    await tick();
    running--;
  });
  assert.deepEqual(started, Array.from({ length: 20 }, (_, i) => i));
  assert.equal(peak, 4);
  assert.equal(mostAhead, 0, "an item was pulled before a lane could take it");
});

Deno.test("a failing async source fails the work; a failure closes the source", async () => {
  async function* broken() {
    yield 1;
    throw new Error("page 2 unreadable");
  }
  const ran: number[] = [];
  await assert.rejects(
    forEachLimited(broken(), 2, (n) => Promise.resolve(void ran.push(n))),
    /page 2 unreadable/,
  );
  assert.deepEqual(ran, [1]);

  let closed = false;
  async function* endless() {
    try {
      for (let i = 0;; i++) yield i;
    } finally {
      closed = true;
    }
  }
  await assert.rejects(
    forEachLimited(endless(), 3, async (n) => {
      await tick();
      if (n === 5) throw new Error("item 5 failed");
    }),
    /item 5 failed/,
  );
  assert.ok(closed, "the source was not closed");
});
