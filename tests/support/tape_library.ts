/**
 * A deterministic model of the tape library behind a tape-backed archive (SPEC §2, issue 14
 * item 4): a few drives, tapes holding files at positions, a recall queue fed by stage
 * requests, a time to mount a tape and a time to read a file. The fake archive asks it what
 * HEAD says for a file (`disk` or `tape`) and hands it every stage request; the benchmarks read
 * its counters (mounts, files read, the time the last file reached disk).
 *
 * Two layers:
 *
 * - {@linkcode TapeLibraryModel} is the schedule alone, a pure class of "now": every method
 *   takes the time, nothing runs by itself, so a unit test steps it with its own clock and the
 *   figures are exact.
 * - {@linkcode TapeLibrary} wraps the model with a clock (`performance.now()` unless given)
 *   and one `setTimeout` at a time, so files reach disk on their own behind a real HTTP fake
 *   archive, listeners hear of it, and {@linkcode TapeLibrary.whenIdle} resolves.
 *
 * The rules, in order of precedence:
 *
 * 1. A stage request for a file on tape joins the recall queue of its tape. A request for a
 *    file already queued or being read is a no-op counted in `duplicateRequests`; one for a
 *    file on disk (or on no tape at all) is a no-op counted in `onDiskRequests`.
 * 2. An idle drive whose tape (left in it by its last work) has requests waiting reads them
 *    without a mount.
 * 3. Otherwise each free drive (an empty one first, then an idle one, least recently used
 *    first) mounts the tape with the most requests waiting that no drive holds; ties go to the
 *    tape whose oldest waiting request is oldest. A mount takes `mountMs` (unmount and seek
 *    included) and counts in `mounts` and `mountsByTape`.
 * 4. A drive reads its tape's queued files in position order, one `readMs` each. A request
 *    for the tape it holds, arriving meanwhile, is read in the same pass if its position is
 *    still ahead of the head; if it is behind, it is read on the next pass of the same mount:
 *    once nothing is left ahead the drive goes back (free; no mount) and reads what waits
 *    behind. The drive keeps its tape while requests for it wait, then goes idle with the tape
 *    still in it.
 * 5. A file read reaches `disk`. `evict(id)` pushes a file on disk back to tape.
 * 6. Files on no tape are on disk from the start and forever.
 *
 * With `recallMs` set the library is a plain per-file delay instead (no tapes, drives or
 * mounts): a file on tape reaches disk `recallMs` after its first stage request, whatever else
 * is asked. `drives: Infinity` keeps the tape rules with a drive for every tape that wants one.
 *
 * @example
 * ```ts
 * import { layoutTapes, TapeLibrary } from "./tape_library.ts";
 * const ids = Array.from({ length: 96 }, (_, i) => `f${i}`);
 * const library = new TapeLibrary({ drives: 2, mountMs: 200, readMs: 5, placement: layoutTapes(ids, 4) });
 * for (const id of ids) library.stage(id);
 * const stats = await library.whenIdle(); // stats.mounts === 4
 * library.close();
 * ```
 * @module
 */

/** What HEAD's `X-Pacifica-File-Storage-Media` says of a file. */
export type Media = "disk" | "tape";

/** Where a file sits: a tape and its position on it (smaller positions are read first). */
export interface TapeSlot {
  tape: string;
  position: number;
}

/** How the library is built. Durations are in ms. */
export interface TapeLibraryConfig {
  /** Tape drives (default 2); `Infinity` for a drive for every tape. */
  drives?: number;
  /** Time to mount a tape, unmount and seek included (default 2000). */
  mountMs?: number;
  /** Time to read one file (default 50). */
  readMs?: number;
  /** Files on tape and where; every other id is on disk. Placed files start on tape. */
  placement?: Iterable<readonly [string, TapeSlot]>;
  /** Per-file delay mode: a file is on disk this long after its first stage request. */
  recallMs?: number;
}

/** What a stage request did: joined the queue, or nothing (already asked, or on disk). */
export type StageResult = "queued" | "duplicate" | "disk";

/** A file that reached disk, and when (the library's clock, ms). */
export interface DiskEvent {
  id: string;
  at: number;
}

/** The library's counters. */
export interface TapeStats {
  /** Tape mounts so far, and per tape. */
  mounts: number;
  mountsByTape: Record<string, number>;
  /** Files that reached disk by a read (or, in delay mode, a delay). */
  filesRead: number;
  /** Every stage request received, and those that were no-ops. */
  stageRequests: number;
  duplicateRequests: number;
  onDiskRequests: number;
  /** Files pushed back to tape by `evict`. */
  evictions: number;
  /** Requests waiting for a drive, and files being read now. */
  waiting: number;
  reading: number;
  /** When the last file reached disk (the library's clock), or undefined before any. */
  lastDiskAt: number | undefined;
  /** Nothing waits and nothing is being read. */
  idle: boolean;
}

interface FileRec {
  id: string;
  slot: TapeSlot;
  state: "tape" | "queued" | "reading" | "disk";
  /** Order of the stage request that queued it (ties: oldest first). */
  seq: number;
  /** Delay mode: when it reaches disk. */
  dueAt: number;
}

interface Drive {
  tape?: string;
  /** The file read last in this pass; undefined right after a mount or a rewind. */
  head?: FileRec;
  /** Until when the drive is busy, and the file it reads (none: mounting). */
  busy?: { until: number; file?: FileRec };
  lastUsed: number;
}

/** Position order, then id order (ids are unique, so the order is total). */
function compare(a: FileRec, b: FileRec): number {
  return a.slot.position - b.slot.position || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** The queued files of one tape, by age (a Map keeps insertion order) and by position. */
class TapeQueue {
  readonly byAge = new Map<string, FileRec>();
  readonly byPosition: FileRec[] = [];

  add(f: FileRec): void {
    this.byAge.set(f.id, f);
    this.byPosition.splice(this.#bound(f, false), 0, f);
  }

  remove(f: FileRec): void {
    this.byAge.delete(f.id);
    this.byPosition.splice(this.#bound(f, false), 1);
  }

  /** The oldest request's sequence number. */
  oldest(): number {
    return this.byAge.values().next().value!.seq;
  }

  /** The first file ahead of `head`, or undefined when none is (the pass is over). */
  ahead(head: FileRec | undefined): FileRec | undefined {
    return this.byPosition[head ? this.#bound(head, true) : 0];
  }

  /** The first index whose file is at or (`after`) past `f` in position order. */
  #bound(f: FileRec, after: boolean): number {
    let lo = 0;
    let hi = this.byPosition.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const c = compare(this.byPosition[mid], f);
      if (c < 0 || (after && c === 0)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/**
 * The library's schedule as a pure class of time: each method first brings the library up to
 * `now` (ms, never before a time already given; an earlier one counts as the latest), then
 * acts. Nothing happens between calls; {@linkcode nextEventAt} says when something will.
 *
 * @example
 * ```ts
 * const model = new TapeLibraryModel({ drives: 1, mountMs: 100, readMs: 10, placement: [["a", { tape: "T", position: 0 }]] });
 * model.stage("a", 0); // "queued"
 * model.nextEventAt(); // 100: the mount ends
 * model.media("a", 110); // "disk"
 * model.advance(110); // [{ id: "a", at: 110 }]
 * ```
 */
export class TapeLibraryModel {
  readonly drives: number;
  readonly mountMs: number;
  readonly readMs: number;
  readonly recallMs: number | undefined;
  #now: number;
  #seq = 0;
  #files = new Map<string, FileRec>();
  /** Tapes with requests waiting (a tape's queue is dropped when it empties). */
  #queues = new Map<string, TapeQueue>();
  #waiting = 0;
  #driveList: Drive[] = [];
  /** Delay mode: files by due time (one delay for all, so insertion order is due order). */
  #delayed = new Map<string, FileRec>();
  #outbox: DiskEvent[] = [];
  #mountsByTape = new Map<string, number>();
  #counts = {
    mounts: 0,
    filesRead: 0,
    stageRequests: 0,
    duplicateRequests: 0,
    onDiskRequests: 0,
    evictions: 0,
  };
  #lastDiskAt: number | undefined;

  /** A library at time `start` (ms) with every placed file on tape. */
  constructor(config: TapeLibraryConfig = {}, start = 0) {
    this.drives = config.drives ?? 2;
    this.mountMs = config.mountMs ?? 2000;
    this.readMs = config.readMs ?? 50;
    this.recallMs = config.recallMs;
    if (!(this.drives >= 1)) throw new RangeError("tape library: drives must be at least 1");
    this.#now = start;
    for (const [id, slot] of config.placement ?? []) this.place(id, slot, start);
  }

  /**
   * Puts `id` on tape at `slot` (undefined: on disk, on no tape), forgetting any request for
   * it; a read of it under way still takes the drive's time but brings nothing to disk.
   */
  place(id: string, slot: TapeSlot | undefined, now: number): void {
    this.#run(now);
    const old = this.#files.get(id);
    if (old?.state === "queued") this.#unqueue(old);
    if (slot) this.#files.set(id, { id, slot: { ...slot }, state: "tape", seq: 0, dueAt: 0 });
    else this.#files.delete(id);
  }

  /** `disk` or `tape`, what HEAD answers for `id` at `now`. */
  media(id: string, now: number): Media {
    this.#run(now);
    const f = this.#files.get(id);
    return !f || f.state === "disk" ? "disk" : "tape";
  }

  /** A stage request for `id` at `now` (see the module's rules). */
  stage(id: string, now: number): StageResult {
    this.#run(now);
    this.#counts.stageRequests++;
    const f = this.#files.get(id);
    if (!f || f.state === "disk") {
      this.#counts.onDiskRequests++;
      return "disk";
    }
    if (f.state !== "tape") {
      this.#counts.duplicateRequests++;
      return "duplicate";
    }
    f.state = "queued";
    f.seq = ++this.#seq;
    this.#waiting++;
    if (this.recallMs !== undefined) {
      f.dueAt = this.#now + this.recallMs;
      this.#delayed.set(id, f);
    } else {
      let q = this.#queues.get(f.slot.tape);
      if (!q) this.#queues.set(f.slot.tape, q = new TapeQueue());
      q.add(f);
      this.#dispatch(this.#now);
    }
    return "queued";
  }

  /** Pushes a file on disk back to tape; false (nothing done) if it is not on disk or placed. */
  evict(id: string, now: number): boolean {
    this.#run(now);
    const f = this.#files.get(id);
    if (f?.state !== "disk") return false;
    f.state = "tape";
    this.#counts.evictions++;
    return true;
  }

  /** Brings the library up to `now`; returns the files that reached disk since last asked. */
  advance(now: number): DiskEvent[] {
    this.#run(now);
    const out = this.#outbox;
    this.#outbox = [];
    return out;
  }

  /** When the next file reaches disk or a mount ends; undefined when nothing is under way. */
  nextEventAt(): number | undefined {
    if (this.recallMs !== undefined) return this.#delayed.values().next().value?.dueAt;
    let next: number | undefined;
    for (const d of this.#driveList) {
      if (d.busy && (next === undefined || d.busy.until < next)) next = d.busy.until;
    }
    return next;
  }

  /** The counters at `now`. */
  stats(now: number): TapeStats {
    this.#run(now);
    const reading = this.#driveList.filter((d) => d.busy?.file).length;
    return {
      ...this.#counts,
      mountsByTape: Object.fromEntries(this.#mountsByTape),
      waiting: this.#waiting,
      reading,
      lastDiskAt: this.#lastDiskAt,
      idle: this.#waiting === 0 && this.#driveList.every((d) => !d.busy),
    };
  }

  /** Plays every event up to `now`, in time order (drives in index order at equal times). */
  #run(now: number): void {
    for (let next = this.nextEventAt(); next !== undefined && next <= now;) {
      this.#now = Math.max(this.#now, next);
      if (this.recallMs !== undefined) {
        const f = this.#delayed.values().next().value!;
        this.#delayed.delete(f.id);
        this.#waiting--;
        this.#toDisk(f, next);
      } else {
        for (const d of this.#driveList) if (d.busy?.until === next) this.#finish(d, next);
        this.#dispatch(next);
      }
      next = this.nextEventAt();
    }
    this.#now = Math.max(this.#now, now);
  }

  #toDisk(f: FileRec, at: number): void {
    f.state = "disk";
    this.#counts.filesRead++;
    this.#lastDiskAt = at;
    this.#outbox.push({ id: f.id, at });
  }

  #unqueue(f: FileRec): void {
    this.#waiting--;
    if (this.recallMs !== undefined) return void this.#delayed.delete(f.id);
    const q = this.#queues.get(f.slot.tape)!;
    q.remove(f);
    if (q.byAge.size === 0) this.#queues.delete(f.slot.tape);
  }

  /** A drive's mount or read ended at `t`. */
  #finish(d: Drive, t: number): void {
    const f = d.busy!.file;
    d.busy = undefined;
    d.lastUsed = t;
    if (f) {
      d.head = f;
      if (f.state === "reading" && this.#files.get(f.id) === f) this.#toDisk(f, t);
    }
    this.#readNext(d, t);
  }

  /** Starts the drive's next read on its tape (this pass, else the next), or leaves it idle. */
  #readNext(d: Drive, t: number): void {
    const q = d.tape === undefined ? undefined : this.#queues.get(d.tape);
    if (!q) return;
    let f = q.ahead(d.head);
    if (!f) {
      d.head = undefined; // the next pass
      f = q.ahead(undefined)!;
    }
    this.#unqueue(f);
    f.state = "reading";
    d.busy = { until: t + this.readMs, file: f };
  }

  /** Puts idle drives to work at `t` (rules 2 and 3). */
  #dispatch(t: number): void {
    for (const d of this.#driveList) if (!d.busy) this.#readNext(d, t);
    const idle = this.#driveList.some((d) => !d.busy);
    if (!idle && this.#driveList.length >= this.drives) return;
    const held = new Set(this.#driveList.map((d) => d.tape));
    const wanted = [...this.#queues].filter(([tape]) => !held.has(tape))
      .sort(([, a], [, b]) => b.byAge.size - a.byAge.size || a.oldest() - b.oldest());
    for (const [tape] of wanted) {
      const d = this.#freeDrive();
      if (!d) return;
      d.tape = tape;
      d.head = undefined;
      d.busy = { until: t + this.mountMs };
      this.#counts.mounts++;
      this.#mountsByTape.set(tape, (this.#mountsByTape.get(tape) ?? 0) + 1);
    }
  }

  /** An empty drive, a new one while the library has more, or the least recently used idle one. */
  #freeDrive(): Drive | undefined {
    const idle = this.#driveList.filter((d) => !d.busy);
    const empty = idle.find((d) => d.tape === undefined);
    if (empty) return empty;
    if (this.#driveList.length < this.drives) {
      const d: Drive = { lastUsed: this.#now };
      this.#driveList.push(d);
      return d;
    }
    return idle.sort((a, b) => a.lastUsed - b.lastUsed)[0];
  }
}

/** Options of a {@linkcode TapeLibrary}: the library, and the clock it runs on. */
export interface TapeLibraryOptions extends TapeLibraryConfig {
  /** Time in ms (default `performance.now()`). */
  clock?: () => number;
  /** Arm a timer for the next event (default true); false: only calls move the library. */
  timers?: boolean;
}

/**
 * A {@linkcode TapeLibraryModel} on a clock: files reach disk on their own (one `setTimeout`
 * at a time, armed for the next event), every method reads the clock, so `media` is exact even
 * when a timer fires late. `close()` clears the timer.
 *
 * @example
 * ```ts
 * const library = new TapeLibrary({ recallMs: 100, placement: [["a", { tape: "T", position: 0 }]] });
 * library.onDisk(({ id, at }) => console.log(id, "on disk at", at));
 * library.stage("a");
 * library.media("a"); // "tape", and "disk" 100 ms later
 * await library.whenIdle();
 * library.close();
 * ```
 */
export class TapeLibrary implements Disposable {
  /** The schedule underneath (for `nextEventAt`; call it with this library's clock). */
  readonly model: TapeLibraryModel;
  readonly clock: () => number;
  #timers: boolean;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt: number | undefined;
  #listeners = new Set<(event: DiskEvent) => void>();
  #idleWaiters: ((stats: TapeStats) => void)[] = [];
  #flushing = false;
  #closed = false;

  /** A library whose placed files are all on tape. */
  constructor(options: TapeLibraryOptions = {}) {
    this.clock = options.clock ?? (() => performance.now());
    this.#timers = options.timers ?? true;
    this.model = new TapeLibraryModel(options, this.clock());
  }

  /** Puts `id` on tape at `slot`, or on disk for good (undefined). */
  place(id: string, slot: TapeSlot | undefined): void {
    this.model.place(id, slot, this.clock());
    this.#flush();
  }

  /** What HEAD says of `id` now. */
  media(id: string): Media {
    const media = this.model.media(id, this.clock());
    this.#flush();
    return media;
  }

  /** A stage request (an archive POST) for `id`. */
  stage(id: string): StageResult {
    const result = this.model.stage(id, this.clock());
    this.#flush();
    return result;
  }

  /** Pushes a file on disk back to tape; false if it was not on disk. */
  evict(id: string): boolean {
    const done = this.model.evict(id, this.clock());
    this.#flush();
    return done;
  }

  /** The counters now. */
  stats(): TapeStats {
    const stats = this.model.stats(this.clock());
    this.#flush();
    return stats;
  }

  /** Calls `listener` for each file that reaches disk, in order; returns the unsubscribe. */
  onDisk(listener: (event: DiskEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The counters once nothing waits or is read (at once if idle; at `close()` at the latest). */
  whenIdle(): Promise<TapeStats> {
    const stats = this.stats();
    if (stats.idle || this.#closed) return Promise.resolve(stats);
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Clears the timer and resolves `whenIdle` waiters; later calls still answer (no timers). */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = this.#timerAt = undefined;
    const stats = this.model.stats(this.clock());
    for (const resolve of this.#idleWaiters.splice(0)) resolve(stats);
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Hands new disk events to listeners (which may stage more), then re-arms the timer. */
  #flush(): void {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      for (let events = this.model.advance(this.clock()); events.length > 0;) {
        for (const event of events) for (const listener of [...this.#listeners]) listener(event);
        events = this.model.advance(this.clock());
      }
      if (this.#idleWaiters.length > 0) {
        const stats = this.model.stats(this.clock());
        if (stats.idle) { for (const resolve of this.#idleWaiters.splice(0)) resolve(stats); }
      }
    } finally {
      this.#flushing = false;
      this.#arm(); // even after a listener threw
    }
  }

  #arm(): void {
    if (this.#closed || !this.#timers) return;
    const next = this.model.nextEventAt();
    if (next === this.#timerAt) return;
    clearTimeout(this.#timer);
    this.#timer = this.#timerAt = undefined;
    if (next === undefined) return;
    this.#timerAt = next;
    this.#timer = setTimeout(() => {
      this.#timer = this.#timerAt = undefined;
      this.#flush();
    }, Math.max(0, Math.ceil(next - this.clock())));
  }
}

/**
 * Lays `ids` out over `tapes` tapes (named `tape-0`, `tape-1`, …) in an order unrelated to
 * the ids' order: a seeded shuffle (the same seed, the same layout), then equal shares, each
 * tape's files at positions 0, 1, … in shuffled order.
 *
 * @example
 * ```ts
 * const placement = layoutTapes(["a", "b", "c", "d"], 2, 7);
 * placement.get("a"); // e.g. { tape: "tape-1", position: 0 }
 * ```
 */
export function layoutTapes(
  ids: readonly string[],
  tapes: number,
  seed = 1,
): Map<string, TapeSlot> {
  if (!(tapes >= 1)) throw new RangeError("layoutTapes: at least one tape");
  const order = [...ids];
  let x = seed >>> 0;
  const random = () => { // mulberry32
    x = (x + 0x6d2b79f5) >>> 0;
    let r = Math.imul(x ^ (x >>> 15), 1 | x);
    r ^= r + Math.imul(r ^ (r >>> 7), 61 | r);
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
  };
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const placement = new Map<string, TapeSlot>();
  const share = Math.floor(order.length / tapes);
  const extra = order.length % tapes;
  let i = 0;
  for (let t = 0; t < tapes; t++) {
    const n = share + (t < extra ? 1 : 0);
    for (let p = 0; p < n; p++) placement.set(order[i++], { tape: `tape-${t}`, position: p });
  }
  return placement;
}
