/**
 * The process-wide tape recall manager (issue 14, item 1; SPEC §2 on tape-backed archives).
 *
 * A file on tape needs a stage request (`POST {base}{id}`) and then HEAD polls until the
 * archive says `disk`. {@linkcode RecallManager} does this for every file of every cart of
 * the process without holding a fetch slot or a thread, so that the worker fetches only files
 * that are already on disk:
 *
 * - **One recall per archive id.** Carts that wait for the same id share one entry: one stage
 *   POST, one poll schedule. The entry goes away with its last waiter.
 * - **Everything asked at once.** A new recall sends its stage POST at once, as long as fewer
 *   than `maxOutstanding` recalls are outstanding (POSTed, not yet seen on disk); the tape
 *   library can only order what it has been asked for. Beyond the cap, recalls wait in order,
 *   round-robin by cart (./recall_queue.ts): each freed slot goes to the next cart in turn, so
 *   a 100,000-file cart cannot starve a 10-file cart. (At most `postsInFlight` POSTs are on
 *   the wire at once, to bound sockets; they go out in admission order.) A caller may send a
 *   file's stage request before its HEAD ({@linkcode RecallManager.stageEarly}; the worker
 *   does once a cart is found on tape, worker/early_stages.ts): the recall counts from that
 *   POST, is not polled until the file's HEAD takes it over, or is dropped.
 * - **One poller.** A single timer over the poll schedule (./poll_schedule.ts): every file's
 *   next poll time in one heap, each file's gaps growing from `pollInitialMs` by `pollFactor`
 *   to `pollMaxMs`, its first poll timed from the archive's typical recall time (learned from
 *   the recalls that finished; probes and parked files until one has), brisk re-polls while a
 *   cart's files are coming off a tape, the stage POST re-sent every `restageEveryMs`, and a
 *   file still on tape `stageTimeoutMs` after its first POST fails. That module says how late
 *   a file that reached disk is noticed. 1,000 files recalled together cost two or three HEADs
 *   each, not six.
 * - **One HEAD ceiling** (./head_ceiling.ts): at most `headsPerSecond` HEADs start in any
 *   window of one second. Callers' own HEADs (the size HEADs of a cart) take their slots from
 *   the same bucket ({@linkcode RecallManager.headSlot}), taking turns with the polls that are
 *   due, while any recall is outstanding (with none, size HEADs are bounded by their
 *   concurrency only). When more polls are due than the budget allows, those due soonest go
 *   first.
 * - **The HEAD rule of SPEC §2**, as `headFile` (stage_file.ts) applies it: a retryable failure
 *   (5xx, 408/429, no answer, a time-out) is not final; the file counts as missing only when
 *   its calls have kept failing for `missingAfterMs`; any other failure is final at once. Here
 *   the asking again happens on the file's poll schedule, inside the HEAD ceiling, rather than
 *   in `headFile`'s own sleep loop (which would give each failing file a timer of its own and
 *   bypass the ceiling during an archive outage), so `headFile` itself is not called.
 *
 * **Memory.** An outstanding recall costs one small entry object (id, next poll time, delay,
 * times of its first and last POST, heap index) plus one waiter per cart (label, promise
 * callbacks): measured at about 680 bytes of heap per outstanding recall, the caller's
 * promise included, so about 65 MiB for 100,000 (`recalls_test.ts`, with `--expose-gc`).
 * Beyond the cap, a cart keeps at most `queuedPerCart` recalls waiting
 * ({@linkcode RecallManager.queueRoom}: the worker asks for no more sizes of that cart's
 * files meanwhile), so a cart of 100,000 files on tape under a cap of 10,000 holds about
 * 11,000 of these, not 100,000.
 *
 * @example
 * ```ts
 * import { ArchiveClient } from "../archive/client.ts";
 * import { RecallManager } from "./recalls.ts";
 * const recalls = new RecallManager(new ArchiveClient("http://127.0.0.1:8080/"), {
 *   headsPerSecond: 50,
 * });
 * const cart = new AbortController(); // aborted when the cart is deleted
 * const st = await recalls.recall("1234", {
 *   cart: "cart-7",
 *   label: "fileids[3] (id 1234)",
 *   signal: cart.signal,
 * });
 * console.log(st.media, st.size); // "disk", then fetch it
 * await recalls.close();
 * ```
 * @module
 */

import {
  type ArchiveClient,
  ArchiveError,
  type ArchiveStatus,
  type Media,
} from "../archive/client.ts";
import { errorMessage, seconds } from "../util/log.ts";
import type { StageSettings } from "../config/config.ts";
import {
  DEFAULT_STAGE_SETTINGS,
  headVerdict,
  StageError,
  type StageErrorCode,
} from "./stage_file.ts";
import { observeTapeWait } from "../util/metrics.ts";
import { HeadCeiling } from "./head_ceiling.ts";
import { type CartQueue, RecallQueue } from "./recall_queue.ts";
import { FirstPoll, PollSchedule } from "./poll_schedule.ts";

/** A clock and timer for {@linkcode RecallManager}; tests may pass their own. */
export interface RecallClock {
  /** Milliseconds, monotonic (default `performance.now()`). */
  now(): number;
  /** Runs `fn` after `ms` milliseconds; returns a handle for `clear`. */
  set(fn: () => void, ms: number): unknown;
  /** Cancels a handle of `set`. */
  clear(handle: unknown): void;
}

/** Options of {@linkcode RecallManager}; every field has a default. */
export interface RecallOptions {
  /** Recalls POSTed and not yet seen on disk, at most (default 10,000). */
  maxOutstanding?: number;
  /** Ceiling on HEAD polls sent to the archive per second, process-wide (default 50). */
  headsPerSecond?: number;
  /** Stage POSTs on the wire at once, at most (default 100; bounds sockets, not recalls). */
  postsInFlight?: number;
  /** First delay between a file's stage POST and its first HEAD, then between HEADs (default 500). */
  pollInitialMs?: number;
  /** Longest delay between two HEADs of one file (default 30,000). */
  pollMaxMs?: number;
  /** Each delay is the previous one times this; 1 to 1.5 (default 1.5). */
  pollFactor?: number;
  /** Re-send a file's stage POST this often while it stays on tape (default 300,000). */
  restageEveryMs?: number;
  /** A file still on tape this long after its first stage POST fails (default 24 h). */
  stageTimeoutMs?: number;
  /** A file whose HEADs / POSTs keep failing (5xx, no answer) this long counts as missing (default 60,000). */
  missingAfterMs?: number;
  /**
   * Recalls of one cart waiting for the cap at which {@linkcode RecallManager.queueRoom}
   * makes that cart wait (default 1,000): what a cart of 100,000 files on tape holds in
   * memory beyond the cap.
   */
  queuedPerCart?: number;
  /** Clock and timer (default `performance.now`, `setTimeout`). */
  clock?: RecallClock;
}

/** Who waits for a recall: see {@linkcode RecallManager.recall}. */
export interface RecallRequest {
  /** The cart that waits; fairness beyond the cap is round-robin by this key. */
  cart: string;
  /** How messages name the file, e.g. `fileids[3] (id 1234)`. */
  label: string;
  /** Aborts this cart's wait only (the cart was deleted); other carts keep the recall. */
  signal?: AbortSignal;
}

/** Counters of {@linkcode RecallManager.stats}. */
export interface RecallStats {
  /** Recalls whose stage POST was sent (or is being sent) and that are not yet on disk. */
  outstanding: number;
  /** Recalls waiting for the `maxOutstanding` cap. */
  waiting: number;
  /** Carts waiting, over all recalls (a recall shared by two carts counts 2). */
  waiters: number;
  /** Waiters that share a recall another cart asked for first. */
  shared: number;
  /** HEADs sent so far (polls). */
  heads: number;
  /** HEAD slots given to callers of {@linkcode RecallManager.headSlot} (size HEADs). */
  sizeHeads: number;
  /** The typical recall time learned so far, in ms (NaN until a recall has finished). */
  typicalMs: number;
  /** Stage POSTs sent so far (re-sends included). */
  posts: number;
  /** Recalls that ended with the file on disk so far (one per archive file, shared or not). */
  recalled: number;
  /** Stage requests sent ahead of their file's HEAD so far ({@linkcode RecallManager.stageEarly}). */
  early: number;
}

/** What a HEAD said of the file, and its media (from lib/archive/client.ts), re-exported for callers. */
export type { ArchiveStatus, Media };

const DEFAULTS = {
  maxOutstanding: DEFAULT_STAGE_SETTINGS.recallsMax,
  headsPerSecond: DEFAULT_STAGE_SETTINGS.headsPerSecond,
  postsInFlight: 100,
  queuedPerCart: 1000,
  pollFactor: DEFAULT_STAGE_SETTINGS.pollFactor,
  pollInitialMs: DEFAULT_STAGE_SETTINGS.pollInitialMs,
  pollMaxMs: DEFAULT_STAGE_SETTINGS.pollMaxMs,
  restageEveryMs: DEFAULT_STAGE_SETTINGS.restageEveryMs,
  stageTimeoutMs: DEFAULT_STAGE_SETTINGS.stageTimeoutMs,
  missingAfterMs: DEFAULT_STAGE_SETTINGS.missingAfterMs,
};

const SYSTEM_CLOCK: RecallClock = {
  now: () => performance.now(),
  set: (fn, ms) => setTimeout(fn, ms),
  clear: (handle) => clearTimeout(handle as number),
};

/** Where an entry is in its life. */
const QUEUED = 0; // waiting for the cap
const POSTING = 1; // admitted, first stage POST queued or on the wire
const POLLING = 2; // in the poll schedule, or its poll on the wire (or held: `early`)
const DONE = 3; // settled or abandoned: ignored wherever it is still referenced

/** One cart waiting for a recall. */
interface Waiter {
  readonly cart: string;
  readonly label: string;
  readonly signal: AbortSignal | undefined;
  readonly resolve: (st: ArchiveStatus) => void;
  readonly reject: (err: unknown) => void;
  entry: Entry;
}

/** A run of failed archive calls of one entry (allocated only while they fail). */
interface Failure {
  since: number;
  error: ArchiveError;
  /** The archive's own words from any call of the run (POST error pages carry them). */
  says: string;
}

/**
 * One archive id being recalled. Kept small: there may be 100,000 of them. Its schedule
 * fields (from `heapIndex` to `brisk`) are kept by the PollSchedule (./poll_schedule.ts).
 */
class Entry {
  state = QUEUED;
  /** Place in the poll schedule's heap, -1 when not in it. */
  heapIndex = -1;
  /** Next poll time. */
  dueAt = 0;
  /** Delay before the next HEAD. */
  delay = 0;
  /** Time of the first stage POST (NaN until admitted). */
  startedAt = NaN;
  /** Time of the last successful stage POST (NaN: one is owed). */
  postedAt = NaN;
  /** Time of its last HEAD that said `tape` (NaN: none yet). */
  tapeAt = NaN;
  /** How its first poll is timed. */
  kind: FirstPoll = FirstPoll.timed;
  /** Polled after `pollInitialMs` while its cart's files are arriving. */
  brisk = false;
  failure: Failure | undefined = undefined;
  /** The cart queue that holds it while QUEUED (kept by the RecallQueue). */
  queue: CartQueue<Entry> | undefined = undefined;
  /**
   * The cart whose stage request went ahead of the file's HEAD ({@linkcode
   * RecallManager.stageEarly}), until a HEAD says `tape` (a waiter comes) or not (it goes).
   * Such an entry has no waiter (`waiters` is `[]`) and is not polled.
   */
  early: string | undefined = undefined;
  /** One waiter, or several when carts share the recall (none while `early`). */
  waiters: Waiter | Waiter[];
  constructor(readonly id: string, first: Waiter | Waiter[]) {
    this.waiters = first;
  }
}

/** The waiters of one abort signal; settled ones stay in `list` until it goes. */
interface Watch {
  list: Waiter[];
  live: number;
  onAbort: () => void;
}

/**
 * Recalls archive files from tape for every cart of the process: see the module description.
 *
 * @example
 * ```ts
 * import { ArchiveClient } from "../archive/client.ts";
 * import { RecallManager } from "./recalls.ts";
 * await using recalls = new RecallManager(new ArchiveClient("http://127.0.0.1:8080/"));
 * const st = await recalls.recall("1234", { cart: "7", label: "fileids[0] (id 1234)" });
 * console.log(st.size, st.mtime, recalls.stats().heads);
 * ```
 */
export class RecallManager implements AsyncDisposable {
  readonly #client: ArchiveClient;
  readonly #clock: RecallClock;
  readonly #max: number;
  readonly #postsInFlight: number;
  readonly #timeout: number;
  readonly #missing: number;
  /** The HEAD ceiling, shared by the polls and the callers of headSlot(). */
  readonly #ceiling: HeadCeiling;

  readonly #byId = new Map<string, Entry>();
  /** When each polling entry is polled next. */
  readonly #schedule: PollSchedule<Entry>;
  /** Recalls waiting for the cap, round-robin by cart. */
  readonly #queue: RecallQueue<Entry>;
  /** Admitted entries whose first POST waits for a free POST slot. */
  #postQueue: (Entry | undefined)[] = [];
  #postHead = 0;
  #posting = 0;
  /**
   * The waiters of each signal (one per cart, usually), to find them when it aborts. An
   * append-only list with a count of the unsettled ones costs a slot per recall where a Set
   * would cost ~70 bytes; the list goes with its last unsettled waiter.
   */
  readonly #bySignal = new Map<AbortSignal, Watch>();
  /**
   * One controller per archive call on the wire, aborted by close(). Not one long-lived
   * signal: the client combines it with its time-out signal by `AbortSignal.any`, and Deno
   * keeps every such combination (~0.9 KiB) alive for as long as the long-lived signal lives.
   */
  readonly #calls = new Set<AbortController>();
  readonly #inFlight = new Set<Promise<void>>();
  #timer: unknown = undefined;
  #timerAt = Infinity;
  #closed = false;
  /** Stops listening to the archive's health (see {@linkcode RecallManager.archiveBack}). */
  readonly #unlisten: () => void;

  #outstanding = 0;
  #waiters = 0;
  #shared = 0;
  #heads = 0;
  #posts = 0;
  /** Recalls that ended on disk (see {@linkcode RecallStats.recalled}). */
  #recalled = 0;
  #early = 0;
  /** The entries of each cart still `early` ({@linkcode RecallManager.stageEarly}). */
  readonly #earlyOf = new Map<string, Set<Entry>>();

  /** Starts a manager over `client` (its `requestTimeoutMs` bounds each call). */
  constructor(client: ArchiveClient, options: RecallOptions = {}) {
    const o = { ...DEFAULTS, ...dropUndefined(options) };
    const positive = (name: string, v: number) => {
      if (!(v > 0)) throw new RangeError(`recalls: ${name} must be a positive number, got ${v}`);
      return v;
    };
    this.#client = client;
    this.#clock = options.clock ?? SYSTEM_CLOCK;
    this.#max = Math.floor(positive("maxOutstanding", o.maxOutstanding));
    this.#postsInFlight = Math.floor(positive("postsInFlight", o.postsInFlight));
    const initialMs = positive("pollInitialMs", o.pollInitialMs);
    const maxMs = Math.max(initialMs, positive("pollMaxMs", o.pollMaxMs));
    if (!(o.pollFactor >= 1 && o.pollFactor <= 1.5)) {
      throw new RangeError(`recalls: pollFactor must be between 1 and 1.5, got ${o.pollFactor}`);
    }
    const restageEveryMs = positive("restageEveryMs", o.restageEveryMs);
    this.#timeout = positive("stageTimeoutMs", o.stageTimeoutMs);
    this.#schedule = new PollSchedule({
      initialMs,
      maxMs,
      factor: o.pollFactor,
      restageEveryMs,
      timeoutMs: this.#timeout,
    });
    this.#missing = Math.max(0, o.missingAfterMs);
    this.#queue = new RecallQueue(Math.floor(positive("queuedPerCart", o.queuedPerCart)));
    this.#ceiling = new HeadCeiling(
      positive("headsPerSecond", o.headsPerSecond),
      this.#clock.now(),
    );
    this.#unlisten = client.health.onUp(() => this.archiveBack());
  }

  /**
   * The archive is reachable again after an outage (its health says so; lib/archive/health.ts):
   * a restarted archive may have lost its recall queue, so every outstanding recall owes a
   * stage POST again, sent with its next poll, and the polls are brought forward to now
   * (spread over the HEAD ceiling, which they still pass). A poll on the wire now owes its POST
   * too, and polls again after the first delay.
   *
   * @example
   * ```ts
   * import { ArchiveClient } from "../archive/client.ts";
   * import { RecallManager } from "./recalls.ts";
   * await using recalls = new RecallManager(new ArchiveClient("http://127.0.0.1:8080/"));
   * recalls.archiveBack(); // nothing outstanding: nothing to do
   * ```
   */
  archiveBack(): void {
    if (this.#closed) return;
    const now = this.#clock.now();
    for (const entry of this.#byId.values()) {
      if (entry.state !== POLLING) continue;
      entry.postedAt = NaN;
      entry.failure = undefined;
      this.#schedule.restart(entry, now);
    }
    this.#arm(now);
  }

  /**
   * Waits until archive file `archiveId` is on disk, recalling it from tape if need be, and
   * resolves with the HEAD that said `disk` (its size and mtime). Rejects with a
   * {@linkcode StageError} that names `request.label` when the archive reports media
   * `error`, when the file is still on tape after `stageTimeoutMs`, or when its archive calls
   * kept failing for `missingAfterMs` (or failed in a way no retry mends); with
   * `request.signal.reason` when the signal aborts (other carts waiting for the same id keep
   * their recall).
   *
   * @example
   * ```ts
   * import { ArchiveClient } from "../archive/client.ts";
   * import { RecallManager } from "./recalls.ts";
   * await using recalls = new RecallManager(new ArchiveClient("http://127.0.0.1:8080/"));
   * const st = await recalls.recall("1234", { cart: "7", label: "fileids[0] (id 1234)" });
   * ```
   */
  recall(archiveId: string, request: RecallRequest): Promise<ArchiveStatus> {
    if (this.#closed) {
      return Promise.reject(
        new StageError("io", `${request.label}: the recall manager is closed (cartd is stopping)`),
      );
    }
    const signal = request.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    let waiter!: Waiter;
    const promise = new Promise<ArchiveStatus>((resolve, reject) => {
      waiter = {
        cart: request.cart,
        label: request.label,
        signal,
        resolve,
        reject,
        entry: undefined as unknown as Entry,
      };
    });
    this.#waiters++;
    const known = this.#byId.get(archiveId);
    if (known?.early !== undefined) {
      // Its stage request went ahead of its HEAD: the recall is under way already.
      waiter.entry = known;
      known.waiters = waiter;
      this.#unearly(known);
      if (known.state === POLLING) this.#pollFirst(known, this.#clock.now());
    } else if (known) {
      waiter.entry = known;
      if (Array.isArray(known.waiters)) known.waiters.push(waiter);
      else known.waiters = [known.waiters, waiter];
      this.#shared++;
    } else {
      const entry = new Entry(archiveId, waiter);
      waiter.entry = entry;
      this.#byId.set(archiveId, entry);
      if (this.#outstanding < this.#max && this.#queue.empty) this.#admit(entry);
      else this.#queue.add(entry, request.cart);
    }
    if (signal) this.#watch(signal, waiter);
    return promise;
  }

  /**
   * Sends the stage request of archive file `archiveId` now, before its HEAD has said whether
   * it is on tape (SPEC §2: a stage request needs no HEAD before it, and one for a file on
   * disk changes nothing), so that a cart found on tape has every file asked for at once
   * instead of at the pace of its size HEADs under the HEAD ceiling. The recall is outstanding
   * from now (it counts against `maxOutstanding`) but is not polled: the caller's HEAD decides.
   * When it says `tape`, {@linkcode recall} takes this recall over (no second POST; the first
   * poll at the typical recall time after this POST); when it says anything else, or the
   * caller will not HEAD the file, {@linkcode dropEarly} forgets it, and {@linkcode endEarly}
   * forgets whatever cart `cart` left. Returns false, sending nothing, when the cap is reached
   * or recalls wait for it (they go first); true when the POST is sent or the file is being
   * recalled already.
   *
   * @example
   * ```ts
   * import { ArchiveClient } from "../archive/client.ts";
   * import { RecallManager } from "./recalls.ts";
   * await using recalls = new RecallManager(new ArchiveClient("http://127.0.0.1:8080/"));
   * recalls.stageEarly("1234", "cart-7"); // POST now; then HEAD the file
   * recalls.dropEarly("1234"); // the HEAD said `disk`
   * recalls.endEarly("cart-7"); // the cart's HEADs are done
   * ```
   */
  stageEarly(archiveId: string, cart: string): boolean {
    if (this.#byId.has(archiveId)) return true;
    if (this.#closed || this.#outstanding >= this.#max || !this.#queue.empty) return false;
    const entry = new Entry(archiveId, []);
    entry.early = cart;
    let mine = this.#earlyOf.get(cart);
    if (!mine) this.#earlyOf.set(cart, mine = new Set());
    mine.add(entry);
    this.#byId.set(archiveId, entry);
    this.#early++;
    this.#admit(entry);
    return true;
  }

  /** Forgets the stage request sent ahead for `archiveId` ({@linkcode stageEarly}), if any. */
  dropEarly(archiveId: string): void {
    const entry = this.#byId.get(archiveId);
    if (entry?.early === undefined) return;
    this.#unearly(entry);
    this.#drop(entry);
    this.#admitNext();
  }

  /** Forgets the stage requests that cart `cart` sent ahead and no HEAD took over. */
  endEarly(cart: string): void {
    const mine = this.#earlyOf.get(cart);
    if (!mine) return;
    this.#earlyOf.delete(cart);
    for (const entry of mine) {
      entry.early = undefined;
      this.#drop(entry);
    }
    this.#admitNext();
  }

  #unearly(entry: Entry): void {
    const cart = entry.early!;
    entry.early = undefined;
    const mine = this.#earlyOf.get(cart);
    if (mine?.delete(entry) && mine.size === 0) this.#earlyOf.delete(cart);
  }

  /**
   * Waits until cart `cart` has fewer than `queuedPerCart` recalls waiting for the cap, so
   * that a cart asks for the sizes of its files on tape only as fast as their recalls can be
   * admitted: a cart of 100,000 files holds the cap's recalls and this many more, not all of
   * them (its later files are read from the store when their turn comes). Returns at once
   * while the cart's queue has room (always while the cap is not reached). Rejects with the
   * signal's reason when it aborts first.
   */
  queueRoom(cart: string, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#closed) return Promise.resolve();
    return this.#queue.room(cart, signal);
  }

  /**
   * Waits for a slot under the process's HEAD ceiling (`headsPerSecond`, shared with the
   * polls of the recalls) before a HEAD that is not a poll: the size HEADs of a cart's files.
   * Polls that are due go first; callers are served in order. While no recall is outstanding
   * or waiting, a caller never waits: its HEAD takes a token if there is one, and goes anyway. Rejects with the signal's
   * reason when it aborts first.
   *
   * @example
   * ```ts
   * import { ArchiveClient } from "../archive/client.ts";
   * import { RecallManager } from "./recalls.ts";
   * await using recalls = new RecallManager(new ArchiveClient("http://127.0.0.1:8080/"));
   * await recalls.headSlot(); // then send the HEAD
   * ```
   */
  headSlot(signal?: AbortSignal): Promise<void> {
    const now = this.#clock.now();
    // With no recall to poll, a cart's size HEADs compete with nothing: they go at the pace of
    // their own concurrency (CARTD_FILES_IN_FLIGHT), so a cart on disk is not slowed to the
    // ceiling (10,000 files would take 20 s at 500 a second).
    const unbounded = this.#closed || this.#byId.size === 0;
    const slot = this.#ceiling.slot(now, unbounded, signal);
    if (this.#ceiling.waiting) this.#arm(now);
    return slot;
  }

  /**
   * Counters for tests, benchmarks and metrics.
   *
   * @example
   * ```ts
   * import { ArchiveClient } from "../archive/client.ts";
   * import { RecallManager } from "./recalls.ts";
   * await using recalls = new RecallManager(new ArchiveClient("http://127.0.0.1:8080/"));
   * const { outstanding, waiting, heads } = recalls.stats();
   * ```
   */
  stats(): RecallStats {
    return {
      outstanding: this.#outstanding,
      waiting: this.#queue.waiting,
      waiters: this.#waiters,
      shared: this.#shared,
      heads: this.#heads,
      sizeHeads: this.#ceiling.granted,
      typicalMs: this.#schedule.typicalMs,
      posts: this.#posts,
      recalled: this.#recalled,
      early: this.#early,
    };
  }

  /**
   * Stops: clears the poll timer, aborts the archive calls on the wire and waits for them,
   * and rejects every waiting recall with a {@linkcode StageError} that says cartd is
   * stopping. Later calls of {@linkcode recall} reject at once.
   *
   * @example
   * ```ts
   * import { ArchiveClient } from "../archive/client.ts";
   * import { RecallManager } from "./recalls.ts";
   * const recalls = new RecallManager(new ArchiveClient("http://127.0.0.1:8080/"));
   * await recalls.close();
   * ```
   */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#unlisten();
      if (this.#timer !== undefined) this.#clock.clear(this.#timer);
      this.#timer = undefined;
      this.#timerAt = Infinity;
      for (const call of this.#calls) call.abort(new Error("the recall manager was closed"));
      this.#queue.clear();
      for (const entry of [...this.#byId.values()]) {
        this.#settle(entry, undefined, "the recall manager was closed (cartd is stopping)", "io");
      }
      this.#postQueue = [];
      this.#postHead = 0;
      // Callers waiting for a HEAD slot go on (their HEADs fail or answer as cartd stops).
      this.#ceiling.releaseAll();
      this.#schedule.clear();
      this.#earlyOf.clear();
    }
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }

  /** Same as {@linkcode close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // --- admission -------------------------------------------------------------------------

  /** Admits queued recalls while the cap allows, one per cart in turn. */
  #admitNext(): void {
    while (!this.#closed && this.#outstanding < this.#max) {
      const next = this.#queue.next();
      if (!next) return;
      this.#admit(next);
    }
  }

  #admit(entry: Entry): void {
    entry.state = POSTING;
    entry.startedAt = this.#clock.now();
    this.#outstanding++;
    this.#postQueue.push(entry);
    this.#pumpPosts();
  }

  // --- first stage POSTs -----------------------------------------------------------------

  #pumpPosts(): void {
    while (this.#posting < this.#postsInFlight && this.#postHead < this.#postQueue.length) {
      const entry = this.#postQueue[this.#postHead];
      this.#postQueue[this.#postHead++] = undefined;
      if (!entry || entry.state !== POSTING) continue;
      this.#posting++;
      this.#track(
        entry,
        this.#firstPost(entry).finally(() => {
          this.#posting--;
          this.#pumpPosts();
        }),
      );
    }
    if (this.#postHead === this.#postQueue.length) {
      this.#postQueue = [];
      this.#postHead = 0;
    } else if (this.#postHead > 1024 && this.#postHead * 2 > this.#postQueue.length) {
      this.#postQueue = this.#postQueue.slice(this.#postHead);
      this.#postHead = 0;
    }
  }

  async #firstPost(entry: Entry): Promise<void> {
    const error = await this.#post(entry);
    if (entry.state !== POSTING) return;
    const now = this.#clock.now();
    if (error && !error.retryable) return this.#final(entry, error);
    if (error) this.#noteFailure(entry, error, now);
    entry.state = POLLING;
    // Sent ahead of its HEAD: polled only once a HEAD said `tape` (recall() schedules it).
    if (entry.early === undefined) this.#pollFirst(entry, now);
  }

  /** Schedules the first poll of an entry whose first stage POST went. */
  #pollFirst(entry: Entry, now: number): void {
    this.#schedule.first(entry, now);
    this.#arm(now);
  }

  /** One stage POST; the error when it failed, else undefined. */
  async #post(entry: Entry): Promise<ArchiveError | undefined> {
    this.#posts++;
    try {
      await this.#call((signal) => this.#client.stage(entry.id, signal));
      entry.postedAt = this.#clock.now();
      return undefined;
    } catch (err) {
      if (err instanceof ArchiveError) return err;
      if (this.#closed) return undefined;
      throw err;
    }
  }

  // --- the poller ------------------------------------------------------------------------

  /** Sets the one timer for the earliest due poll the bucket allows. */
  #arm(now: number): void {
    const slots = this.#ceiling.waiting;
    if (this.#closed || (this.#schedule.nextDueAt === Infinity && !slots)) return;
    let at = slots ? now : this.#schedule.nextDueAt;
    const wait = this.#ceiling.tokenIn(now);
    if (wait > 0) at = Math.max(at, now + wait);
    if (this.#timer !== undefined) {
      if (this.#timerAt <= at) return;
      this.#clock.clear(this.#timer);
    }
    this.#timerAt = at;
    this.#timer = this.#clock.set(this.#tick, Math.max(0, at - now));
  }

  readonly #tick = (): void => {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    if (this.#closed) return;
    const now = this.#clock.now();
    // Due polls and waiting size HEADs take turns: neither starves the other (size HEADs
    // lead to new stage requests, which a tape library wants all at once).
    let slotTurn = true;
    for (;;) {
      const pollDue = this.#schedule.nextDueAt <= now;
      const slot = this.#ceiling.waiting;
      if ((!pollDue && !slot) || !this.#ceiling.take(now)) break;
      if (slot && (slotTurn || !pollDue)) this.#ceiling.grant();
      else {
        const entry = this.#schedule.takeDue(now)!;
        this.#track(entry, this.#poll(entry));
      }
      slotTurn = !slotTurn;
    }
    this.#arm(now);
  };

  /** One poll: the stage POST when one is owed, then a HEAD; then settle or reschedule. */
  async #poll(entry: Entry): Promise<void> {
    let failed: ArchiveError | undefined;
    let now = this.#clock.now();
    if (this.#schedule.owesPost(entry, now)) {
      failed = await this.#post(entry);
      if (entry.state !== POLLING) return;
      if (failed && !failed.retryable) return this.#final(entry, failed);
    }
    let st: ArchiveStatus | undefined;
    this.#heads++;
    try {
      st = await this.#call((signal) => this.#client.status(entry.id, signal));
    } catch (err) {
      if (!(err instanceof ArchiveError)) {
        if (this.#closed) return;
        throw err;
      }
      failed = err;
    }
    if (entry.state !== POLLING) return;
    now = this.#clock.now();
    if (st?.media === "disk") {
      this.#schedule.arrived(entry, now);
      this.#arm(now); // parked entries may have been brought forward
      return this.#settle(entry, st);
    }
    // What the poll said, and the gap to the next one (noted also when the file fails below:
    // a probe that saw `tape` still bounds the typical recall time).
    this.#schedule.heard(entry, st?.media, now);
    if (st?.media === "error") {
      return this.#fail(
        entry,
        `the archive reports media "error"${st.message ? `: ${st.message}` : ""}`,
      );
    }
    if (failed && !failed.retryable) return this.#final(entry, failed);
    if (failed) {
      const f = this.#noteFailure(entry, failed, now);
      if (now - f.since >= this.#missing) {
        const { code, reason } = headVerdict(entry.id, f.error, now - f.since, f.says);
        return this.#fail(entry, reason, code);
      }
    } else entry.failure = undefined;
    if (this.#schedule.expired(entry, now)) {
      const waited = now - entry.startedAt;
      const f = entry.failure;
      return this.#fail(
        entry,
        (f
          ? `the archive kept failing (${f.error.reason}) and the file was not on disk`
          : "the file was still on tape") +
          ` after ${seconds(waited)} s, the stage time-out (CARTD_STAGE_TIMEOUT ${
            seconds(this.#timeout)
          } s); ask the archive's operators about the tape, or raise the time-out`,
        "timeout",
      );
    }
    this.#schedule.next(entry, now);
    this.#arm(now);
  }

  /** Runs one archive call with a signal that close() aborts. */
  async #call<T>(run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const ctl = new AbortController();
    this.#calls.add(ctl);
    try {
      return await run(ctl.signal);
    } finally {
      this.#calls.delete(ctl);
    }
  }

  #noteFailure(entry: Entry, error: ArchiveError, now: number): Failure {
    const f = entry.failure ??= { since: now, error, says: "" };
    f.error = error;
    if (error.detail) f.says = error.detail;
    return f;
  }

  /** Keeps `p` for close(); an unexpected error fails the entry rather than losing it. */
  #track(entry: Entry, p: Promise<void>): void {
    const tracked = p.catch((err) => {
      if (entry.state !== DONE) {
        this.#fail(entry, `the recall failed unexpectedly (${errorMessage(err)}); see the log`);
      }
    }).finally(() => this.#inFlight.delete(tracked));
    this.#inFlight.add(tracked);
  }

  // --- settling and leaving --------------------------------------------------------------

  #fail(entry: Entry, reason: string, code: StageErrorCode = "archive"): void {
    this.#settle(entry, undefined, reason, code);
  }

  /** Fails an entry for an archive error that no retry mends (the words of stage_file.ts). */
  #final(entry: Entry, error: ArchiveError): void {
    const { code, reason } = headVerdict(entry.id, error);
    this.#fail(entry, reason, code);
  }

  /** Ends an entry: resolves its waiters with `st`, or rejects them with `reason`. */
  #settle(
    entry: Entry,
    st: ArchiveStatus | undefined,
    reason = "",
    code: StageErrorCode = "archive",
  ): void {
    // A recall: stage POSTed (admitted), now on disk; its wait, from the first stage POST.
    if (st && !Number.isNaN(entry.startedAt)) {
      this.#recalled++;
      observeTapeWait(Math.max(0, this.#clock.now() - entry.startedAt) / 1000);
    }
    this.#drop(entry);
    const waiters = Array.isArray(entry.waiters) ? entry.waiters : [entry.waiters];
    this.#waiters -= waiters.length;
    this.#shared -= Math.max(0, waiters.length - 1);
    if (entry.early !== undefined) this.#unearly(entry);
    for (const w of waiters) {
      this.#unwatch(w);
      if (st) w.resolve({ ...st });
      else w.reject(new StageError(code, `${w.label}: ${reason}`));
    }
    this.#admitNext();
  }

  /** Takes an entry out of every structure (its waiters are the caller's business). */
  #drop(entry: Entry): void {
    this.#schedule.forget(entry);
    if (entry.state === QUEUED) this.#queue.remove(entry);
    else if (entry.state !== DONE) this.#outstanding--;
    entry.state = DONE;
    if (this.#byId.get(entry.id) === entry) this.#byId.delete(entry.id);
  }

  /**
   * A waiter's signal aborted: it leaves; the recall ends with its last waiter. The caller
   * runs #admitNext() once afterwards (a deleted cart must not have its own queued recalls
   * admitted into the slots it frees while its waiters leave one by one).
   */
  #leave(w: Waiter): void {
    const entry = w.entry;
    if (entry.state === DONE) return;
    if (Array.isArray(entry.waiters)) {
      const list = entry.waiters;
      const i = list.indexOf(w);
      if (i < 0) return;
      list.splice(i, 1);
      this.#shared--;
      if (list.length === 1) entry.waiters = list[0];
    } else if (entry.waiters === w) this.#drop(entry);
    else return;
    this.#waiters--;
    w.reject(w.signal!.reason);
  }

  #watch(signal: AbortSignal, w: Waiter): void {
    let watch = this.#bySignal.get(signal);
    if (!watch) {
      const created: Watch = {
        list: [],
        live: 0,
        onAbort: () => {
          this.#bySignal.delete(signal);
          // A settled waiter's entry is DONE: #leave skips it.
          for (const each of created.list) this.#leave(each);
          this.#admitNext();
        },
      };
      watch = created;
      this.#bySignal.set(signal, watch);
      signal.addEventListener("abort", watch.onAbort, { once: true });
    }
    watch.list.push(w);
    watch.live++;
  }

  #unwatch(w: Waiter): void {
    if (!w.signal) return;
    const watch = this.#bySignal.get(w.signal);
    if (!watch) return;
    if (--watch.live === 0) {
      w.signal.removeEventListener("abort", watch.onAbort);
      this.#bySignal.delete(w.signal);
    }
  }
}

/**
 * The {@linkcode RecallOptions} of the settings (lib/config/config.ts `staging`): the cap
 * `CARTD_RECALLS_MAX`, the ceiling `CARTD_HEADS_PER_SECOND`, `CARTD_POLL_FACTOR`, and the
 * per-file `CARTD_POLL_INITIAL`, `CARTD_POLL_MAX`, `CARTD_RESTAGE_EVERY`,
 * `CARTD_STAGE_TIMEOUT` and `CARTD_MISSING_AFTER`.
 *
 * @example
 * ```ts
 * import { loadConfig } from "../config/config.ts";
 * import { recallOptions } from "./recalls.ts";
 * const options = recallOptions(loadConfig({ CARTD_RECALLS_MAX: "4" }).staging);
 * console.log(options.maxOutstanding); // 4
 * ```
 */
export function recallOptions(staging: StageSettings): RecallOptions {
  return {
    maxOutstanding: staging.recallsMax,
    headsPerSecond: staging.headsPerSecond,
    pollFactor: staging.pollFactor,
    pollInitialMs: staging.pollInitialMs,
    pollMaxMs: staging.pollMaxMs,
    restageEveryMs: staging.restageEveryMs,
    stageTimeoutMs: staging.stageTimeoutMs,
    missingAfterMs: staging.missingAfterMs,
  };
}

function dropUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
