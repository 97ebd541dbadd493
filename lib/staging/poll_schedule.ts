/**
 * When the recall manager (./recalls.ts) polls each file it recalls from tape: every timing
 * rule of its HEAD polls, and the heap of files by their next poll time. The manager sends
 * the polls (inside the HEAD ceiling, ./head_ceiling.ts) and tells the schedule what each
 * said; {@linkcode PollSchedule} says when each file is polled next.
 *
 * With `i = pollInitialMs`, `f = pollFactor` (1 to 1.5), `m = pollMaxMs`, and `t0` the time
 * of a file's first stage POST:
 *
 * - **The plain schedule.** The gap between two polls of a file starts at `i` and grows by
 *   `f` per poll up to `m`: polls at `t0 + i·(f^k − 1)/(f − 1)`, the gap after a poll at `t`
 *   being `(f − 1)·(t − t0) + i`.
 * - **The first poll is timed from the archive's typical recall time** (`typicalMs`), learned
 *   from the recalls that finished: an exponential average (weight {@linkcode TYPICAL_WEIGHT})
 *   of the midpoint between a file's last `tape` poll and its `disk` poll. A new file is first
 *   polled that long after `t0`; from then on, on the gaps the plain schedule has there
 *   (`(f − 1)·(t − t0) + i`, not `i`).
 * - **Probes and parked files, while the typical time is unknown.** Up to {@linkcode PROBES}
 *   files poll on the plain schedule, each stretched by its own factor between 1 and `f`, so
 *   that together they poll on a grid that many times finer and the first end of a recall is
 *   seen within a few per cent of its time. The other files are parked: first poll at `m`.
 *   When the first recall ends, the parked files and the other probes are brought forward to
 *   the typical time (a probe's own next poll may be one growing gap away: up to half the
 *   recall time late). 1,000 files recalled together cost two or three HEADs each, not six.
 * - **Brisk polls while a cart's files arrive.** A file still on tape that is polled within
 *   {@linkcode ARRIVAL_WINDOW_MS} of another file of its cart reaching disk is polled again
 *   after `i` (at most {@linkcode MOST_BRISK} files at once): a tape library reads a tape's
 *   files one after another, and the rest of a tape's batch is noticed as it comes instead of
 *   one growing gap later.
 * - **Caps.** A file is polled by `restageEveryMs` after its last stage POST (the poll re-sends
 *   the POST, as does any poll while a POST is owed) and at `t0 + stageTimeoutMs` (where it
 *   fails if still on tape).
 * - **Held files.** A file whose stage request went ahead of its HEAD (`stageEarly` of
 *   ./recalls.ts) is not in the schedule until that HEAD says `tape`; its first poll is then
 *   timed from its early POST like any other ({@linkcode PollSchedule.first}).
 *
 * **How late a file that reached disk is noticed.** With `r = headsPerSecond`, while the
 * ceiling does not bind, a file that reaches disk at `T` is noticed by
 *
 *     T + min(m, (f − 1)·(T − t0) + i) + B/r + one HEAD round trip
 *
 * where `B` is the number of polls due before its own (at most the outstanding recalls − 1)
 * and `B/r` the queueing behind the ceiling. A file on disk before its first poll (at the
 * typical recall time after `t0`) is noticed at that poll; a parked file, while no recall has
 * finished, at the first one's end or at `t0 + m`. With the defaults (500 ms, ×1.5, 30 s) a
 * file on disk after 10 s is noticed within about 5.5 s (doubling: up to 10.5 s), after an
 * hour within 30 s; with 10,000 recalls polled at 50 HEADs/s, `B/r` can add up to 200 s,
 * which is what the ceiling costs (raise `headsPerSecond` if the archive takes it).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { FirstPoll, type Polled, PollSchedule } from "./poll_schedule.ts";
 * const schedule = new PollSchedule<Polled>({
 *   initialMs: 500,
 *   maxMs: 30_000,
 *   factor: 1.5,
 *   restageEveryMs: 300_000,
 *   timeoutMs: 86_400_000,
 * });
 * const file: Polled = {
 *   heapIndex: -1,
 *   dueAt: 0,
 *   delay: 0,
 *   startedAt: 0, // stage POST at 0 ms
 *   postedAt: 0,
 *   tapeAt: NaN,
 *   kind: FirstPoll.timed,
 *   brisk: false,
 *   waiters: { cart: "cart-7" },
 * };
 * schedule.first(file, 0);
 * assert.equal(file.kind, FirstPoll.probe); // nothing learned yet: it probes
 * assert.equal(schedule.nextDueAt, 500);
 * assert.equal(schedule.takeDue(500), file); // the poll is sent: it said `tape`
 * schedule.heard(file, "tape", 500);
 * schedule.next(file, 500);
 * assert.equal(file.dueAt, 1250); // the gap grew by 1.5
 * schedule.takeDue(1250); // the next poll said `disk`
 * schedule.arrived(file, 1250);
 * assert.equal(schedule.typicalMs, 875); // between its last `tape` and its `disk`
 * ```
 * @module
 */

import type { Media } from "../archive/client.ts";
import { type HeapItem, MinHeap } from "../util/heap.ts";

/**
 * While no recall has finished yet (so the archive's typical recall time is unknown), this
 * many recalls at most poll on the plain schedule ("probes"); the others wait for what the
 * probes learn (or `pollMaxMs`) before their first HEAD.
 */
export const PROBES = 16;
/**
 * A file still on tape polled within this long of another file of its cart reaching disk is
 * polled again after `pollInitialMs`, not after its growing gap: a tape library reads a
 * tape's files one after another, so the rest of a batch that is coming off a tape is
 * noticed as it comes rather than one gap (up to half the wait so far) late.
 */
export const ARRIVAL_WINDOW_MS = 1_000;
/** Files on that brisk schedule at once, at most (their HEADs stay few). */
export const MOST_BRISK = 64;
/** Weight of each finished recall in the typical recall time (an exponential average). */
export const TYPICAL_WEIGHT = 0.1;

/** How a file's first poll is timed ({@linkcode Polled.kind}). */
export const FirstPoll = {
  /** By the typical recall time; also a file that was parked, once polled or brought forward. */
  timed: 0,
  /** On the plain schedule (staggered), to learn the typical recall time. */
  probe: 1,
  /** Not polled yet: due at `pollMaxMs`, or earlier once the typical time is known. */
  parked: 2,
} as const;
/** One of the values of {@linkcode FirstPoll}. */
export type FirstPoll = (typeof FirstPoll)[keyof typeof FirstPoll];

/**
 * What a file carries for its schedule: plain fields, no objects, since 100,000 files may be
 * recalled at once. The schedule keeps them, except `startedAt` and `postedAt` (the caller's).
 */
export interface Polled extends HeapItem {
  /** Next poll time (the heap key). */
  dueAt: number;
  /** The gap before the next poll. */
  delay: number;
  /** Time of the first stage POST. */
  startedAt: number;
  /** Time of the last successful stage POST (NaN: one is owed). */
  postedAt: number;
  /** Time of its last poll that said `tape` (NaN: none yet). */
  tapeAt: number;
  /** How its first poll is timed. */
  kind: FirstPoll;
  /** Polled after `pollInitialMs` while its cart's files are arriving. */
  brisk: boolean;
  /** The carts that wait for it: one, or several. */
  readonly waiters: { readonly cart: string } | { readonly cart: string }[];
}

/** The settings of a {@linkcode PollSchedule} (RecallOptions of ./recalls.ts, checked). */
export interface PollSettings {
  /** `pollInitialMs`: the first gap. */
  initialMs: number;
  /** `pollMaxMs`: the longest gap (at least `initialMs`). */
  maxMs: number;
  /** `pollFactor`: each gap is the previous one times this, 1 to 1.5. */
  factor: number;
  /** `restageEveryMs`: a file still on tape has its stage POST re-sent this often. */
  restageEveryMs: number;
  /** `stageTimeoutMs`: a file still on tape this long after its first POST fails. */
  timeoutMs: number;
}

/** The poll schedule of the files being recalled: see the module description. */
export class PollSchedule<T extends Polled> {
  readonly #initial: number;
  readonly #max: number;
  readonly #factor: number;
  readonly #restage: number;
  readonly #timeout: number;
  readonly #heap = new MinHeap<T>((e) => e.dueAt);

  /** The archive's typical recall time (ms), learned from finished recalls; NaN until one. */
  #typical = NaN;
  /** Files in the schedule that are probes. */
  #probes = 0;
  /** Probes made so far: each one's schedule is staggered by its number. */
  #probesMade = 0;
  /** The longest wait after its first POST at which a probe was still on tape (ms). */
  #probeTapeMs = 0;
  /** Parked files, to bring forward once the typical recall time is known. */
  #parked: T[] = [];
  /** Probes made before the typical recall time was known, brought forward with them. */
  #probing: T[] = [];
  /** When a file of each cart was last found on disk (carts with recalls). */
  readonly #arrivedAt = new Map<string, number>();
  /** Files with `brisk` set. */
  #brisk = 0;

  /** An empty schedule. */
  constructor(settings: PollSettings) {
    this.#initial = settings.initialMs;
    this.#max = settings.maxMs;
    this.#factor = settings.factor;
    this.#restage = settings.restageEveryMs;
    this.#timeout = settings.timeoutMs;
  }

  /** The typical recall time learned so far, in ms (NaN until a recall has finished). */
  get typicalMs(): number {
    return this.#typical;
  }

  /** When the next poll is due; Infinity when no file waits for one. */
  get nextDueAt(): number {
    return this.#heap.peek()?.dueAt ?? Infinity;
  }

  /** Takes out the file whose poll is due soonest, if it is due by `now`. */
  takeDue(now: number): T | undefined {
    return this.nextDueAt <= now ? this.#heap.pop() : undefined;
  }

  /**
   * Schedules the first poll of `entry` (its first stage POST was at `startedAt`; `now` is
   * later): at the typical recall time after that POST when one is known; else on the plain
   * schedule for up to {@linkcode PROBES} files, the others parked until the probes have
   * learned the typical time (or `pollMaxMs`).
   */
  first(entry: T, now: number): void {
    if (!Number.isNaN(this.#typical)) {
      entry.kind = FirstPoll.timed;
      entry.delay = Math.max(this.#initial, entry.startedAt + this.#typical - now);
    } else if (this.#probes < PROBES) {
      entry.kind = FirstPoll.probe;
      this.#probes++;
      // Probe k polls at f^(k/PROBES) times the plain schedule's times: together the probes
      // poll on a grid PROBES times finer than one, so the first to find its file on disk
      // does so within a few per cent of the recall time, not within one gap (×1.5).
      entry.delay = this.#initial * this.#factor ** ((this.#probesMade++ % PROBES) / PROBES);
      if (this.#probing.length >= 4 * PROBES) {
        this.#probing = this.#probing.filter((e) => e.kind === FirstPoll.probe);
      }
      this.#probing.push(entry);
    } else {
      entry.kind = FirstPoll.parked;
      entry.delay = this.#max;
      this.#parked.push(entry);
    }
    this.next(entry, now);
  }

  /**
   * A poll of `entry` at `now` did not find it on disk: `media` is what it said (undefined:
   * the HEAD failed). Notes it, and sets the gap before the next poll (for
   * {@linkcode PollSchedule.next}): the plain schedule's next gap, or after a first poll timed
   * by the typical recall time, the gap the plain schedule has at this time; `pollInitialMs`
   * when the file is brisk.
   */
  heard(entry: T, media: Media | undefined, now: number): void {
    // A first poll timed by the typical recall time (or parked) jumps the plain schedule.
    const jumped = Number.isNaN(entry.tapeAt) && entry.kind !== FirstPoll.probe;
    if (media === "tape") {
      entry.tapeAt = now;
      if (entry.kind === FirstPoll.probe) {
        this.#probeTapeMs = Math.max(this.#probeTapeMs, now - entry.startedAt);
      }
    }
    if (entry.kind === FirstPoll.parked) entry.kind = FirstPoll.timed;
    // After a jump, the gap the plain schedule would have there: (f − 1)·(t − t0) + i.
    entry.delay = Math.min(
      this.#max,
      jumped
        ? (this.#factor - 1) * (now - entry.startedAt) + this.#initial
        : entry.delay * this.#factor,
    );
    const brisk = media === "tape" && this.#arriving(entry, now) &&
      (entry.brisk || this.#brisk < MOST_BRISK);
    if (brisk !== entry.brisk) {
      entry.brisk = brisk;
      this.#brisk += brisk ? 1 : -1;
    }
    if (brisk) entry.delay = Math.min(entry.delay, this.#initial);
  }

  /**
   * Puts `entry` (not in the schedule) back for its next poll, its gap after `now`: by the
   * restage time when that comes first (a POST that is owed, `postedAt` NaN, goes with the
   * next poll anyway), and by the stage time-out.
   */
  next(entry: T, now: number): void {
    let at = now + entry.delay;
    if (!Number.isNaN(entry.postedAt)) at = Math.min(at, entry.postedAt + this.#restage);
    entry.dueAt = Math.min(at, entry.startedAt + this.#timeout);
    this.#heap.push(entry);
  }

  /** Whether the poll of `entry` at `now` sends a stage POST first: one is owed, or due again. */
  owesPost(entry: T, now: number): boolean {
    return Number.isNaN(entry.postedAt) || now - entry.postedAt >= this.#restage;
  }

  /** Whether `entry`, still not on disk at `now`, is past its stage time-out. */
  expired(entry: T, now: number): boolean {
    return now - entry.startedAt >= this.#timeout;
  }

  /**
   * A poll found `entry` on disk at `now`: what it says of the typical recall time, and of its
   * carts (whose other files are polled briskly for a while). Its recall took between its last
   * `tape` poll (or POST) and now; the midpoint is the sample, and a file found on disk at its
   * first poll can only lower the estimate. Once the typical time is first known, the parked
   * files and the probes are brought forward to it.
   */
  arrived(entry: T, now: number): void {
    this.#learn(entry, now);
    const waiters = Array.isArray(entry.waiters) ? entry.waiters : [entry.waiters];
    for (const w of waiters) {
      this.#arrivedAt.delete(w.cart); // newest last: the oldest go first below
      this.#arrivedAt.set(w.cart, now);
    }
    for (const [cart, at] of this.#arrivedAt) {
      if (now - at < ARRIVAL_WINDOW_MS && this.#arrivedAt.size <= 1024) break;
      this.#arrivedAt.delete(cart);
    }
  }

  /**
   * Polls `entry` again from the start of the plain schedule: due `now` if it waits for a
   * poll, else (its poll on the wire) after `pollInitialMs` from that poll's answer on. The
   * archive came back after an outage.
   */
  restart(entry: T, now: number): void {
    entry.delay = this.#initial;
    if (!this.#heap.has(entry)) return;
    entry.dueAt = now;
    this.#heap.update(entry);
  }

  /** Takes `entry` out of the schedule for good (its recall ended or was abandoned). */
  forget(entry: T): void {
    if (entry.brisk) {
      entry.brisk = false;
      this.#brisk--;
    }
    if (entry.kind === FirstPoll.probe) {
      entry.kind = FirstPoll.timed;
      this.#probes--;
    }
    this.#heap.remove(entry);
  }

  /** Forgets the files kept to be brought forward (the manager is closing). */
  clear(): void {
    this.#parked = [];
    this.#probing = [];
  }

  #learn(entry: T, now: number): void {
    const upper = now - entry.startedAt;
    const first = Number.isNaN(this.#typical);
    let sample = Number.isNaN(entry.tapeAt)
      ? Math.min(upper, first ? upper : this.#typical)
      : (entry.tapeAt - entry.startedAt + upper) / 2;
    if (first && this.#probeTapeMs < upper) {
      // The staggered probes bracket the first recall time more closely than its own polls:
      // from the longest wait any probe still saw `tape` to this wait. When that is tight
      // (a tenth of it), its upper end is the estimate, so that recalls of that length are
      // found on disk at their first poll rather than one gap after it.
      const lower = Math.max(this.#probeTapeMs, entry.tapeAt - entry.startedAt || 0);
      if (upper - lower <= upper / 10) sample = upper;
    }
    this.#typical = first ? sample : (1 - TYPICAL_WEIGHT) * this.#typical + TYPICAL_WEIGHT * sample;
    if (!first) return;
    const parked = this.#parked;
    const probing = this.#probing;
    this.#parked = [];
    this.#probing = [];
    // The other probes too: each was posted about when this one was, so it is likely on disk
    // by now as well, and its own next poll may be one growing gap (up to a half of the
    // recall time) away; those on tape then go on with the gaps of the plain schedule.
    for (const e of [...parked, ...probing]) {
      if (!this.#heap.has(e)) continue;
      if (e.kind === FirstPoll.parked) e.kind = FirstPoll.timed;
      else if (e.kind !== FirstPoll.probe) continue;
      const at = Math.max(now, e.startedAt + this.#typical);
      if (at < e.dueAt) {
        e.dueAt = at;
        this.#heap.update(e);
      }
    }
  }

  /** Whether a file of one of `entry`'s carts reached disk within the arrival window. */
  #arriving(entry: T, now: number): boolean {
    const waiters = Array.isArray(entry.waiters) ? entry.waiters : [entry.waiters];
    return waiters.some((w) =>
      now - (this.#arrivedAt.get(w.cart) ?? -Infinity) < ARRIVAL_WINDOW_MS
    );
  }
}
