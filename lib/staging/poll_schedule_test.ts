import assert from "node:assert/strict";
import {
  FirstPoll,
  MOST_BRISK,
  type Polled,
  PollSchedule,
  type PollSettings,
  PROBES,
} from "./poll_schedule.ts";

const SETTINGS: PollSettings = {
  initialMs: 500,
  maxMs: 30_000,
  factor: 1.5,
  restageEveryMs: 300_000,
  timeoutMs: 86_400_000,
};

/** A file whose first stage POST went at `startedAt`, for cart `cart`. */
function file(startedAt: number, cart = "c"): Polled {
  return {
    heapIndex: -1,
    dueAt: 0,
    delay: 0,
    startedAt,
    postedAt: startedAt,
    tapeAt: NaN,
    kind: FirstPoll.timed,
    brisk: false,
    waiters: { cart },
  };
}

/** Polls `f` (due now) and says `tape`; returns its next due time. */
function tape(schedule: PollSchedule<Polled>, f: Polled): number {
  const now = f.dueAt;
  schedule.heard(f, "tape", now);
  schedule.next(f, now);
  return f.dueAt;
}

Deno.test("the plain schedule: gaps grow by pollFactor up to pollMaxMs", () => {
  const schedule = new PollSchedule<Polled>(SETTINGS);
  const f = file(0);
  schedule.first(f, 0);
  assert.equal(f.kind, FirstPoll.probe);
  const due = [f.dueAt];
  for (let i = 0; i < 12; i++) {
    assert.equal(schedule.takeDue(f.dueAt), f);
    due.push(tape(schedule, f));
  }
  assert.deepEqual(due.slice(0, 4), [500, 1250, 2375, 4062.5]);
  const gaps = due.slice(1).map((t, i) => t - due[i]);
  assert.equal(Math.max(...gaps), 30_000);
});

Deno.test("probes are staggered, the others parked; the first recall brings them forward", () => {
  const schedule = new PollSchedule<Polled>(SETTINGS);
  const files = Array.from({ length: PROBES + 4 }, () => file(0));
  for (const f of files) schedule.first(f, 0);
  const probes = files.filter((f) => f.kind === FirstPoll.probe);
  const parked = files.filter((f) => f.kind === FirstPoll.parked);
  assert.equal(probes.length, PROBES);
  assert.equal(parked.length, 4);
  assert.ok(parked.every((f) => f.dueAt === 30_000), "parked until pollMaxMs");
  const firsts = probes.map((f) => f.dueAt);
  assert.equal(firsts[0], 500);
  assert.ok(firsts.every((t, i) => i === 0 || t > firsts[i - 1]), "staggered, growing");
  assert.ok(firsts[PROBES - 1] < 750);
  // The probes poll until 5 s; the first one on disk after that sets the typical time.
  let now = 0;
  for (;;) {
    const next = schedule.takeDue(schedule.nextDueAt)!;
    now = next.dueAt;
    if (now >= 5000) {
      schedule.arrived(next, now);
      break;
    }
    tape(schedule, next);
  }
  const typical = schedule.typicalMs;
  assert.ok(typical >= 5000 && typical < 5000 * 1.5 ** (1 / PROBES) + 1, `typical ${typical}`);
  // Everything still waiting is due at the typical time now.
  while (schedule.nextDueAt !== Infinity) {
    const f = schedule.takeDue(Infinity)!;
    assert.equal(f.dueAt, Math.max(now, typical), `due at ${f.dueAt}`);
    if (f.kind !== FirstPoll.probe) assert.equal(f.kind, FirstPoll.timed);
  }
});

Deno.test("once the typical time is known, a first poll is timed by it, then jumps to the plain gap", () => {
  const schedule = new PollSchedule<Polled>(SETTINGS);
  const probe = file(0);
  schedule.first(probe, 0);
  schedule.takeDue(500);
  schedule.arrived(probe, 500); // on disk at its first poll: typical 500 ms
  assert.equal(schedule.typicalMs, 500);
  const f = file(10_000);
  schedule.first(f, 10_000);
  assert.equal(f.kind, FirstPoll.timed);
  assert.equal(f.dueAt, 10_500, "the typical time after its POST (at least pollInitialMs)");
  const later = file(10_000);
  schedule.first(later, 60_000); // its early POST went long ago: first poll after pollInitialMs
  assert.equal(later.dueAt, 60_500);
  schedule.takeDue(10_500);
  // Still on tape after 0.5 s: the plain schedule's gap there is (1.5 − 1)·500 + 500.
  assert.equal(tape(schedule, f), 10_500 + 750);
});

Deno.test("brisk: a file of a cart whose file just arrived is polled again after pollInitialMs, at most MOST_BRISK", () => {
  const schedule = new PollSchedule<Polled>(SETTINGS);
  const first = file(0, "a");
  schedule.first(first, 0);
  schedule.takeDue(500);
  schedule.arrived(first, 500);
  const files = Array.from({ length: MOST_BRISK + 2 }, () => file(0, "a"));
  const other = file(0, "b");
  for (const f of [...files, other]) {
    schedule.first(f, 500);
    schedule.takeDue(Infinity);
    f.tapeAt = 400; // as if it had been polled before: no jump
    f.delay = 8000;
    schedule.heard(f, "tape", 900);
  }
  assert.equal(files.filter((f) => f.brisk).length, MOST_BRISK);
  assert.ok(files.filter((f) => f.brisk).every((f) => f.delay === 500));
  assert.equal(other.brisk, false, "cart b had no arrival");
  assert.equal(other.delay, 12_000);
  // Out of the arrival window, a brisk file is brisk no more; one that goes frees its place.
  schedule.forget(files[0]);
  schedule.heard(files[1], "tape", 5000);
  assert.equal(files[1].brisk, false);
  assert.equal(files[1].delay, 750);
});

Deno.test("caps: the restage time and the stage time-out bound the next poll; restart polls now", () => {
  const schedule = new PollSchedule<Polled>({
    ...SETTINGS,
    restageEveryMs: 1000,
    timeoutMs: 1800,
  });
  const f = file(0);
  f.delay = 5000;
  schedule.next(f, 100);
  assert.equal(f.dueAt, 1000, "by the restage time");
  assert.equal(schedule.owesPost(f, 999), false);
  assert.equal(schedule.owesPost(f, 1000), true);
  schedule.takeDue(1000);
  f.postedAt = 1000;
  schedule.next(f, 1000);
  assert.equal(f.dueAt, 1800, "by the stage time-out");
  assert.equal(schedule.expired(f, 1799), false);
  assert.equal(schedule.expired(f, 1800), true);
  f.postedAt = NaN; // a POST is owed: it goes with the next poll
  assert.equal(schedule.owesPost(f, 1100), true);
  schedule.restart(f, 1100);
  assert.equal(f.dueAt, 1100);
  assert.equal(f.delay, 500);
  assert.equal(schedule.takeDue(1099), undefined);
  assert.equal(schedule.takeDue(1100), f);
});
