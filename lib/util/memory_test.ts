import assert from "node:assert/strict";
import {
  canCollect,
  heapCheckpoint,
  holdBuffers,
  LENT_SETTLE_MS,
  lentBuffersDropped,
  paceHeap,
  SPENT_BUFFER_SLACK,
  spentBuffers,
} from "./memory.ts";

Deno.test("without --expose-gc, pacing is off and says so", () => {
  assert.equal(canCollect(), false, "the test process runs without --expose-gc");
  const pacing = paceHeap({ slackBytes: 1 << 20 });
  assert.equal(pacing.active, false);
  pacing.stop();
  spentBuffers(SPENT_BUFFER_SLACK * 2); // no gc to call: nothing happens, nothing throws
});

Deno.test("spent buffers ask for a young-generation collection every SPENT_BUFFER_SLACK bytes", () => {
  const calls: unknown[] = [];
  const global = globalThis as { gc?: unknown };
  global.gc = (options: unknown) => calls.push(options);
  try {
    const chunks = Math.floor(2.5 * SPENT_BUFFER_SLACK / (1 << 20));
    for (let i = 0; i < chunks; i++) spentBuffers(1 << 20);
    assert.deepEqual(calls, [{ type: "minor" }, { type: "minor" }]);
  } finally {
    delete global.gc;
  }
});

Deno.test("lent buffers: a full collection every SPENT_BUFFER_SLACK, and one more once streams stop ending", async () => {
  lentBuffersDropped(SPENT_BUFFER_SLACK * 2); // no gc to call: nothing happens, no timer is left
  const calls: { at: number; options: unknown }[] = [];
  const global = globalThis as { gc?: unknown };
  const t0 = performance.now();
  global.gc = (options: unknown) => calls.push({ at: performance.now() - t0, options });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const full = { type: "major", execution: "async" };
  try {
    // Ten streams of 2 MiB ending together: 20 MiB, two slacks' worth.
    for (let i = 0; i < 10; i++) lentBuffersDropped(2 << 20);
    const last = performance.now() - t0;
    assert.deepEqual(calls.map((c) => c.options), [full, full], "one per SPENT_BUFFER_SLACK");
    await sleep(LENT_SETTLE_MS + 100); // a later deadline: this timer fires after the settle's
    assert.deepEqual(calls.map((c) => c.options), [full, full, full], "and one once they stopped");
    assert.ok(calls[2].at - last >= LENT_SETTLE_MS - 5, `${calls[2].at - last} ms after the last`);
    // One stream of a few KiB, alone: collected too, once.
    lentBuffersDropped(64 << 10);
    await sleep(LENT_SETTLE_MS + 100);
    assert.equal(calls.length, 4);
  } finally {
    delete global.gc;
  }
});

Deno.test("a slack of 0 turns pacing off even where gc is exposed", () => {
  const global = globalThis as { gc?: unknown };
  global.gc = () => {};
  try {
    assert.equal(paceHeap({ slackBytes: 0 }).active, false);
  } finally {
    delete global.gc;
  }
});

// A real V8 with --expose-gc: garbage made much faster than V8 would collect it on its own
// stays within a few slacks of the live heap.
const CHILD = `
import { paceHeap } from ${JSON.stringify(new URL("./memory.ts", import.meta.url).href)};
const slack = 4 << 20;
const pacing = paceHeap({ slackBytes: Deno.args[0] === "off" ? 0 : slack, intervalMs: 20 });
globalThis.gc();
const base = Deno.memoryUsage().heapUsed;
let peak = 0, sink = 0;
const until = performance.now() + 1500;
while (performance.now() < until) {
  // ~2 MiB of short-lived objects and buffers that outlive a young-generation collection
  const keep = [];
  for (let i = 0; i < 20000; i++) keep.push({ i, s: "x" + i });
  const bufs = Array.from({ length: 8 }, () => new Uint8Array(64 << 10));
  sink += keep.length + bufs.length;
  await new Promise((r) => setTimeout(r, 2));
  const m = Deno.memoryUsage();
  peak = Math.max(peak, m.heapUsed + m.external - base);
}
pacing.stop();
console.log(JSON.stringify({ active: pacing.active, collections: pacing.collections, peak, sink }));
`;

Deno.test("with --expose-gc, pacing collects and bounds the heap", async () => {
  const run = async (pacing: "on" | "off") => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--v8-flags=--expose-gc,--max-semi-space-size=2", CHILD, pacing],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    return JSON.parse(new TextDecoder().decode(out.stdout));
  };
  const paced = await run("on");
  const unpaced = await run("off");
  assert.equal(paced.active, true);
  assert.equal(unpaced.active, false);
  assert.ok(paced.collections >= 3, `only ${paced.collections} collections`);
  const mib = (n: number) => `${(n / (1 << 20)).toFixed(1)} MiB`;
  assert.ok(
    paced.peak < 24 << 20 && paced.peak < unpaced.peak / 2,
    `paced, the heap grew by ${mib(paced.peak)}; left to V8, by ${mib(unpaced.peak)}`,
  );
});

Deno.test("pacing looks often while the heap moves and backs off while it is quiet", async () => {
  const global = globalThis as { gc?: unknown };
  global.gc = () => {};
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  try {
    const pacing = paceHeap({ slackBytes: 4 << 20, intervalMs: 20, quietIntervalMs: 200 });
    await sleep(1200); // quiet: 20, 40, 80, 160, 200, 200, … ms between looks
    const quiet = pacing.looks;
    let sink = 0;
    const until = performance.now() + 1000;
    while (performance.now() < until) { // ~1 MiB of garbage every few ms
      sink += Array.from({ length: 20000 }, (_, i) => ({ i, s: "y" + i })).length;
      await sleep(3);
    }
    const busy = pacing.looks - quiet;
    pacing.stop();
    // About 9 while quiet (a collection by V8 itself counts as movement: a few more); 60 at 20 ms.
    assert.ok(quiet >= 3 && quiet <= 20, `${quiet} looks in 1.2 s of quiet (20 ms each: 60)`);
    // 50 a second at best; fewer when the machine is busy, but clearly more than while quiet.
    assert.ok(
      busy >= 15 && busy > quiet,
      `${busy} looks in 1 s of churn (${sink} objects), ${quiet} in 1.2 s of quiet`,
    );
  } finally {
    delete global.gc;
  }
});

Deno.test("a heap checkpoint collects at once when the slack is used up, not before", () => {
  heapCheckpoint(); // no pacing in this isolate: nothing happens
  const calls: unknown[] = [];
  const global = globalThis as { gc?: unknown };
  global.gc = (options: unknown) => calls.push(options);
  // Timers far apart: only checkpoints look.
  const pacing = paceHeap({ slackBytes: 1 << 20, intervalMs: 60_000, quietIntervalMs: 60_000 });
  try {
    heapCheckpoint();
    assert.deepEqual(calls, [], "nothing to collect yet");
    // Live objects, about 1 MiB a round, until a checkpoint collects (V8 may have collected
    // earlier garbage by itself meanwhile: the heap then has that much more to grow).
    const live: object[][] = [];
    while (calls.length === 0 && live.length < 256) {
      live.push(Array.from({ length: 20_000 }, (_, i) => ({ i, s: "z" + i })));
      heapCheckpoint();
    }
    assert.deepEqual(calls, [{ type: "major" }], `after ${live.length} rounds`);
    assert.equal(pacing.collections, 1);
  } finally {
    pacing.stop();
    delete global.gc;
  }
  heapCheckpoint(); // stopped: nothing happens
  assert.equal(pacing.collections, 1);
});

Deno.test("buffers held on purpose are not taken for garbage; let go, they count again", () => {
  const calls: unknown[] = [];
  const global = globalThis as { gc?: unknown };
  global.gc = (options: unknown) => calls.push(options);
  // Timers far apart: only checkpoints look.
  const pacing = paceHeap({ slackBytes: 4 << 20, intervalMs: 60_000, quietIntervalMs: 60_000 });
  const parts: Uint8Array[] = [];
  const letGo: (() => void)[] = [];
  try {
    // 32 MiB of live parts, eight times the slack, each told as it is made.
    for (let i = 0; i < 8; i++) {
      parts.push(new Uint8Array(4 << 20).fill(i + 1));
      letGo.push(holdBuffers(4 << 20));
      heapCheckpoint();
    }
    assert.deepEqual(calls, [], "held parts asked for no collection");
    // Let go of (dropped, not handed over: still in this isolate): garbage, collected.
    for (const f of letGo) f();
    letGo[0](); // a second call changes nothing
    heapCheckpoint();
    assert.deepEqual(calls, [{ type: "minor" }, { type: "major" }]);
    assert.equal(pacing.collections, 1);
    // The same growth, not told: collected as garbage at the first checkpoint past the slack.
    calls.length = 0;
    parts.length = 0;
    for (let i = 0; i < 16 && calls.length === 0; i++) {
      parts.push(new Uint8Array(4 << 20).fill(9));
      heapCheckpoint();
    }
    assert.deepEqual(calls, [{ type: "minor" }, { type: "major" }]);
  } finally {
    pacing.stop();
    delete global.gc;
  }
});
