import assert from "node:assert/strict";
import {
  type DiskEvent,
  layoutTapes,
  TapeLibrary,
  TapeLibraryModel,
  type TapeSlot,
} from "./tape_library.ts";

const ids = (n: number, prefix = "f") =>
  Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(3, "0")}`);

/** Steps a model from event to event until nothing is under way; `react` may stage more. */
function runModel(model: TapeLibraryModel, react?: (event: DiskEvent) => void): DiskEvent[] {
  const seen: DiskEvent[] = [];
  for (let t = model.nextEventAt(); t !== undefined; t = model.nextEventAt()) {
    for (const event of model.advance(t)) {
      seen.push(event);
      react?.(event);
    }
  }
  return seen;
}

const LIBRARY = { drives: 2, mountMs: 200, readMs: 5 };
const FILES = ids(96);
const PLACEMENT = layoutTapes(FILES, 4, 42);
const BEST = 2 * (200 + 24 * 5); // 2 rounds of a mount and 24 reads: 640 ms

/** Asks for `files` `window` at a time (a new request when one reaches disk), on the model. */
function windowed(files: string[], window: number) {
  const model = new TapeLibraryModel({ ...LIBRARY, placement: PLACEMENT });
  let next = 0;
  for (; next < window; next++) model.stage(files[next], 0);
  runModel(model, (e) => {
    if (next < files.length) model.stage(files[next++], e.at);
  });
  return model.stats(Infinity);
}

Deno.test("layoutTapes: seeded, balanced, in an order unrelated to the ids", () => {
  assert.deepEqual([...layoutTapes(FILES, 4, 42)], [...PLACEMENT]);
  assert.notDeepEqual([...layoutTapes(FILES, 4, 43)], [...PLACEMENT]);
  const byTape = new Map<string, TapeSlot[]>();
  for (const slot of PLACEMENT.values()) {
    byTape.set(slot.tape, [...byTape.get(slot.tape) ?? [], slot]);
  }
  assert.deepEqual([...byTape.keys()].sort(), ["tape-0", "tape-1", "tape-2", "tape-3"]);
  for (const slots of byTape.values()) {
    assert.deepEqual(slots.map((s) => s.position).sort((a, b) => a - b), [...Array(24).keys()]);
  }
  // Path order hops between tapes: consecutive ids rarely share one.
  let same = 0;
  for (let i = 1; i < FILES.length; i++) {
    if (PLACEMENT.get(FILES[i])!.tape === PLACEMENT.get(FILES[i - 1])!.tape) same++;
  }
  assert(same < 40, `${same} of 95 neighbours share a tape`);
  assert.deepEqual(layoutTapes(ids(10), 3).size, 10);
});

Deno.test("96 files on 4 tapes asked at once: 4 mounts, done in 2 rounds of mount + 24 reads", () => {
  const model = new TapeLibraryModel({ ...LIBRARY, placement: PLACEMENT });
  for (const id of FILES) assert.deepEqual(model.stage(id, 0), "queued");
  assert.deepEqual(model.media(FILES[0], 0), "tape");
  const events = runModel(model);
  const stats = model.stats(Infinity);
  assert.deepEqual(stats.mounts, 4);
  assert.deepEqual(stats.mountsByTape, { "tape-0": 1, "tape-1": 1, "tape-2": 1, "tape-3": 1 });
  assert.deepEqual(stats.filesRead, 96);
  assert.deepEqual(stats.lastDiskAt, BEST);
  assert.deepEqual(new Set(events.map((e) => e.id)).size, 96);
  // Each tape is read in position order.
  const lastPosition = new Map<string, number>();
  for (const { id } of events) {
    const { tape, position } = PLACEMENT.get(id)!;
    assert(position > (lastPosition.get(tape) ?? -1), `${id} read out of position order`);
    lastPosition.set(tape, position);
  }
  for (const id of FILES) assert.deepEqual(model.media(id, BEST), "disk");
  assert(stats.idle);
});

Deno.test("96 files asked 8 at a time: the library mounts the same tapes again and again", () => {
  const stats = windowed(FILES, 8);
  console.log(
    `  8 at a time: ${stats.mounts} mounts (4 at once), done at ${stats.lastDiskAt} ms ` +
      `(at once: ${BEST} ms, ${(stats.lastDiskAt! / BEST).toFixed(1)}x)`,
  );
  assert(stats.mounts > 4, `${stats.mounts} mounts`);
  assert(stats.lastDiskAt! > BEST);
  assert.deepEqual(stats.filesRead, 96);
  assert.deepEqual(windowed(FILES, 96).mounts, 4);
});

Deno.test("the busiest tape is mounted first, ties to the oldest request", () => {
  const placement = new Map<string, TapeSlot>();
  for (const tape of ["A", "B", "C", "D"]) {
    for (let p = 0; p < 3; p++) placement.set(`${tape}${p}`, { tape, position: p });
  }
  const model = new TapeLibraryModel({ drives: 1, mountMs: 100, readMs: 10, placement });
  model.stage("A0", 0); // mounts A at once
  for (const id of ["B0", "D0", "C0", "C1", "D1", "B1", "C2", "D2"]) model.stage(id, 1);
  const order = runModel(model).map((e) => e.id);
  // B has 2 waiting, C and D 3 each; D's oldest (D0) is older than C's oldest (C0).
  assert.deepEqual(order, ["A0", "D0", "D1", "D2", "C0", "C1", "C2", "B0", "B1"]);
  assert.deepEqual(model.stats(Infinity).mounts, 4);
});

Deno.test("duplicate stage requests are counted and not queued again", () => {
  const placement = new Map([["a", { tape: "T", position: 0 }], ["b", { tape: "T", position: 1 }]]);
  const model = new TapeLibraryModel({ drives: 1, mountMs: 100, readMs: 10, placement });
  assert.deepEqual(model.stage("a", 0), "queued");
  assert.deepEqual(model.stage("a", 50), "duplicate"); // queued, the mount under way
  assert.deepEqual(model.stage("a", 105), "duplicate"); // being read
  assert.deepEqual(model.stage("b", 105), "queued");
  assert.deepEqual(model.stage("b", 106), "duplicate");
  assert.deepEqual(model.stats(106).waiting, 1);
  assert.deepEqual(runModel(model).map((e) => e.id), ["a", "b"]);
  assert.deepEqual(model.stage("a", 200), "disk");
  assert.deepEqual(model.stage("on-no-tape", 200), "disk");
  const stats = model.stats(200);
  assert.deepEqual(
    [stats.stageRequests, stats.duplicateRequests, stats.onDiskRequests, stats.filesRead],
    [7, 3, 2, 2],
  );
  assert.deepEqual(stats.mounts, 1);
  assert.deepEqual(stats.lastDiskAt, 120);
});

Deno.test("a request for the mounted tape is read in the same mount: ahead in this pass, behind in the next", () => {
  const placement = new Map<string, TapeSlot>();
  for (let p = 0; p < 10; p++) placement.set(`p${p}`, { tape: "T", position: p });
  placement.set("other", { tape: "U", position: 0 });
  const model = new TapeLibraryModel({ drives: 1, mountMs: 200, readMs: 5, placement });
  model.stage("p5", 0);
  model.stage("p2", 0);
  assert.deepEqual(model.advance(203), []); // p2 is being read: the head is at 2
  model.stage("p8", 203); // ahead
  model.stage("p1", 203); // behind
  model.stage("other", 203); // another tape waits
  const events = runModel(model);
  assert.deepEqual(events, [
    { id: "p2", at: 205 },
    { id: "p5", at: 210 },
    { id: "p8", at: 215 },
    { id: "p1", at: 220 }, // the next pass, no mount
    { id: "other", at: 425 },
  ]);
  assert.deepEqual(model.stats(Infinity).mountsByTape, { T: 1, U: 1 });
});

Deno.test("evict pushes a file back to tape; staged again, it is read again", () => {
  const placement = new Map([["a", { tape: "T", position: 0 }], ["x", { tape: "X", position: 0 }]]);
  const model = new TapeLibraryModel({ drives: 1, mountMs: 100, readMs: 10, placement });
  assert.deepEqual(model.evict("a", 0), false); // on tape already
  model.stage("a", 0);
  runModel(model);
  assert.deepEqual(model.media("a", 110), "disk");
  assert.deepEqual(model.evict("a", 500), true);
  assert.deepEqual(model.media("a", 500), "tape");
  assert.deepEqual(model.stage("a", 500), "queued");
  // The idle drive still holds T: the read needs no mount.
  assert.deepEqual(runModel(model), [{ id: "a", at: 510 }]);
  assert.deepEqual(model.stats(510).mounts, 1);
  // Once the drive has moved to another tape, T has to be mounted again.
  model.stage("x", 600);
  runModel(model);
  model.evict("a", 800);
  model.stage("a", 800);
  assert.deepEqual(runModel(model), [{ id: "a", at: 910 }]);
  const stats = model.stats(910);
  assert.deepEqual([stats.mounts, stats.evictions, stats.filesRead], [3, 2, 4]);
  assert.deepEqual(model.media("unplaced", 910), "disk");
  assert.deepEqual(model.evict("unplaced", 910), false);
});

Deno.test("unlimited drives: every tape mounted at once", () => {
  const model = new TapeLibraryModel({
    drives: Infinity,
    mountMs: 200,
    readMs: 5,
    placement: PLACEMENT,
  });
  for (const id of FILES) model.stage(id, 0);
  runModel(model);
  const stats = model.stats(Infinity);
  assert.deepEqual([stats.mounts, stats.lastDiskAt], [4, 200 + 24 * 5]);
});

Deno.test("delay mode (real timers): each file on disk D after its stage request", async () => {
  const D = 100;
  const files = ids(40, "d");
  const library = new TapeLibrary({ recallMs: D, placement: layoutTapes(files, 4) });
  const requested = new Map<string, number>();
  const arrived: DiskEvent[] = [];
  library.onDisk((e) => arrived.push({ ...e, at: e.at - requested.get(e.id)! }));
  for (let i = 0; i < files.length; i++) {
    if (i % 10 === 0 && i > 0) await new Promise((r) => setTimeout(r, 30));
    requested.set(files[i], library.clock());
    assert.deepEqual(library.stage(files[i]), "queued");
    assert.deepEqual(library.stage(files[i]), "duplicate");
  }
  assert.deepEqual(library.media(files[39]), "tape");
  const start = performance.now();
  const stats = await library.whenIdle();
  assert(performance.now() - start < D + 200, "whenIdle came late");
  assert.deepEqual(arrived.length, 40);
  for (const e of arrived) {
    // `requested` was read just before the stage call read the clock.
    assert(e.at >= D && e.at < D + 2, `${e.id} reached disk ${e.at} ms after its request`);
  }
  for (const id of files) assert.deepEqual(library.media(id), "disk");
  assert.deepEqual([stats.mounts, stats.filesRead, stats.duplicateRequests], [0, 40, 40]);
  library.evict(files[0]);
  assert.deepEqual(library.media(files[0]), "tape");
  library.close();
});

Deno.test("real timers: 96 files at once take the library's best time, 8 at a time many more mounts", async () => {
  {
    using library = new TapeLibrary({ ...LIBRARY, placement: PLACEMENT });
    const start = library.clock();
    for (const id of FILES) library.stage(id);
    const stats = await library.whenIdle();
    const wall = library.clock() - start;
    assert.deepEqual(stats.mounts, 4);
    const finish = stats.lastDiskAt! - start;
    console.log(
      `  at once (timers): 4 mounts, done at ${finish.toFixed(0)} ms, noticed at ${
        wall.toFixed(0)
      } ms`,
    );
    assert(finish >= BEST && finish < BEST + 20, `finished at ${finish} ms`);
    assert(wall < BEST + 500, `whenIdle after ${wall} ms`);
  }
  {
    using library = new TapeLibrary({ ...LIBRARY, placement: PLACEMENT });
    const start = library.clock();
    let next = 0;
    library.onDisk(() => {
      if (next < FILES.length) library.stage(FILES[next++]);
    });
    for (; next < 8; next++) library.stage(FILES[next]);
    const stats = await library.whenIdle();
    console.log(
      `  8 at a time (timers): ${stats.mounts} mounts, done at ${
        (stats.lastDiskAt! - start).toFixed(0)
      } ms`,
    );
    assert(stats.mounts > 4);
    assert.deepEqual(stats.filesRead, 96);
  }
});

Deno.test("an injected clock without timers moves only when asked", () => {
  let now = 1000;
  const library = new TapeLibrary({
    ...LIBRARY,
    placement: [["a", { tape: "T", position: 3 }]],
    clock: () => now,
    timers: false,
  });
  const seen: string[] = [];
  library.onDisk((e) => seen.push(`${e.id}@${e.at}`));
  library.stage("a");
  assert.deepEqual(library.model.nextEventAt(), 1200);
  now = 1204;
  assert.deepEqual(library.media("a"), "tape");
  now = 1205;
  assert.deepEqual(library.media("a"), "disk");
  assert.deepEqual(seen, ["a@1205"]);
  library.close();
});

Deno.test("close() clears the timer and resolves whenIdle (the test sanitizers check for leaks)", async () => {
  const library = new TapeLibrary({ ...LIBRARY, placement: PLACEMENT });
  for (const id of FILES) library.stage(id);
  const idle = library.whenIdle();
  await new Promise((r) => setTimeout(r, 20));
  library.close();
  const stats = await idle;
  assert.deepEqual([stats.idle, stats.filesRead, stats.mounts], [false, 0, 2]);
  library.stage(FILES[0]); // still answers, arms nothing
  assert.deepEqual((await library.whenIdle()).idle, false);
});
