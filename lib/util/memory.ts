/**
 * Keeping cartd's memory flat under load.
 *
 * V8 lets garbage pile up while collecting it looks cheap, and it frees an ArrayBuffer (a
 * 1 MiB download chunk, a fetched body) only when some collection happens to run. For a
 * 40,000-file cart that meant 130 MiB of main-thread heap over a live set of 30 MiB, and a
 * 1 GiB download left up to 64 MiB of spent chunks waiting; the process peaked at 250–450 MiB.
 * This module collects at a bounded pace instead:
 *
 * - {@linkcode paceHeap} looks at the heap every 50 ms and collects once the heap
 *   (a full collection) or its ArrayBuffers (a young-generation one) grew by more than a slack
 *   since the last collection; an idle process is never collected;
 * - {@linkcode spentBuffers} is told of every large buffer handed out for one use (a bundle
 *   chunk given to a consumer that may keep it, a small file read whole) and runs a cheap
 *   young-generation collection after every few MiB, so that memory is reused while it is
 *   still warm instead of being mapped afresh. Downloads sent by cartd's server make no such
 *   buffers: their chunks are lent (lib/bundle/plan.ts, `StreamOptions.lend`), the same few
 *   buffers filled again, so that ten streams cost the collector no more than one.
 *
 * Both need V8's `gc` function, which `--v8-flags=--expose-gc` provides (cartd's tasks, its
 * binary and its Docker image pass it). Without it they do nothing, and cartd still works,
 * with V8's own pacing.
 *
 * @example
 * ```ts
 * import { paceHeap } from "./memory.ts";
 * const pacing = paceHeap({ slackBytes: 16 << 20 });
 * // … serve …
 * pacing.stop();
 * ```
 * @module
 */

/** V8's `gc` as `--expose-gc` installs it. */
type Gc = (options?: { type?: "major" | "minor"; execution?: "sync" | "async" }) => void;

function exposedGc(): Gc | undefined {
  const gc = (globalThis as { gc?: unknown }).gc;
  return typeof gc === "function" ? gc as Gc : undefined;
}

/** Whether this isolate can be collected on demand (V8 runs with `--expose-gc`). */
export function canCollect(): boolean {
  return exposedGc() !== undefined;
}

/** How {@linkcode paceHeap} paces collections. */
export interface PaceOptions {
  /** Growth of the heap, or of its ArrayBuffers, in bytes since the last collection that calls for one; 0 turns pacing off. */
  slackBytes: number;
  /** How often the heap is looked at while it changes, in milliseconds (default 50). */
  intervalMs?: number;
  /** How seldom it is looked at while it is quiet, in milliseconds (default 150). */
  quietIntervalMs?: number;
}

/** A running {@linkcode paceHeap}. */
export interface Pacing {
  /** Whether pacing runs (false without `--expose-gc`, or with a slack of 0). */
  readonly active: boolean;
  /** Collections it ran so far. */
  readonly collections: number;
  /** Times it looked at the heap so far. */
  readonly looks: number;
  /** Stops pacing. */
  stop(): void;
}

/**
 * Collects this isolate's garbage whenever its heap (a full collection) or its ArrayBuffers
 * (a young-generation collection) grew by more than `slackBytes` since the last collection.
 * It looks every `intervalMs` while the heap moves (by 1/64 of the slack or more between
 * looks), and backs off, doubling the wait up to `quietIntervalMs`, while it does not: an
 * idle service wakes about 7 times a second, not 20. The quiet wait is short because a burst
 * (a GET of a 40,000-file cart plans it in a few hundred milliseconds) must still be caught
 * early: with 500 ms, such a GET peaked up to 10 MiB higher. The timer never keeps the
 * process alive. Call it once per isolate (the main thread, each Web Worker).
 */
export function paceHeap(options: PaceOptions): Pacing {
  const gc = exposedGc();
  const slack = options.slackBytes;
  const busyMs = options.intervalMs ?? 50;
  const quietMs = Math.max(busyMs, options.quietIntervalMs ?? 150);
  let collections = 0;
  let looks = 0;
  if (!gc || !(slack > 0)) {
    return { active: false, collections: 0, looks: 0, stop() {} };
  }
  let base = Deno.memoryUsage();
  let baseUnheld = unheld(base);
  let last = base;
  let delay = busyMs;
  let stopped = false;
  let timer: ReturnType<typeof setTimeout>;
  /** Collects when the slack is used up; `timed` when the timer called (not a checkpoint). */
  const look = (timed = true) => {
    looks++;
    const now = Deno.memoryUsage();
    const moved = Math.abs(now.heapUsed - last.heapUsed) + Math.abs(now.external - last.external);
    last = now;
    const heapGrowth = now.heapUsed - base.heapUsed;
    // Buffers held on purpose (a document being read) are not garbage: collecting for them
    // would free nothing, so they do not count as growth.
    const bufferGrowth = unheld(now) - baseUnheld;
    if (heapGrowth > slack) {
      gc({ type: "major" });
    } else if (bufferGrowth > slack) {
      // Spent buffers are mostly young: a young-generation collection frees them for less.
      // Those that lived through two of them sit in the old generation: then a full one.
      gc({ type: "minor" });
      if (unheld(Deno.memoryUsage()) - baseUnheld > slack) gc({ type: "major" });
    } else if (heapGrowth < 0 || bufferGrowth < 0) {
      base = now; // V8 collected by itself
      baseUnheld = unheld(now);
    }
    if (heapGrowth > slack || bufferGrowth > slack) {
      collections++;
      base = last = Deno.memoryUsage();
      baseUnheld = unheld(base);
    }
    if (!timed) return;
    delay = moved >= slack / 64 ? busyMs : Math.min(quietMs, delay * 2);
    schedule();
  };
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(look, delay);
    Deno.unrefTimer(timer);
  };
  schedule();
  checkpoint = () => look(false);
  return {
    active: true,
    get collections() {
      return collections;
    },
    get looks() {
      return looks;
    },
    stop: () => {
      stopped = true;
      checkpoint = undefined;
      clearTimeout(timer);
    },
  };
}

let checkpoint: (() => void) | undefined;

/** Bytes of buffers this isolate holds on purpose, as {@linkcode holdBuffers} was told. */
let held = 0;

/** The bytes of this isolate's buffers in `usage` that are not held on purpose. */
const unheld = (usage: Deno.MemoryUsage) => usage.external - held;

/**
 * Tells this isolate's {@linkcode paceHeap} that `bytes` more of buffers are live on purpose
 * (a big request body read into parts, to be handed to another thread), so that they are
 * not taken for garbage: while four 64 MiB documents were read, that growth made the main
 * thread run a full collection every 70 ms or so, each freeing nothing. Returns the function that
 * lets go of them (once; later calls do nothing): call it as soon as they are handed over
 * (then they have left this isolate's buffers) or dropped (then they are garbage, and pacing
 * collects them as any other).
 *
 * @example
 * ```ts
 * import { holdBuffers } from "./memory.ts";
 * const part = new Uint8Array(4 << 20);
 * const letGo = holdBuffers(part.byteLength);
 * // … fill it, hand it to a Worker …
 * letGo();
 * ```
 */
export function holdBuffers(bytes: number): () => void {
  held += bytes;
  let once = true;
  return () => {
    if (!once) return;
    once = false;
    held -= bytes;
  };
}

/**
 * Lets this isolate's {@linkcode paceHeap} look at the heap now, between its timer's looks:
 * for loops that make garbage fast (reading a 40,000-file cart a page at a time makes tens of
 * MiB of it in a few hundred milliseconds). It collects only when the slack is used up, so it
 * costs one `Deno.memoryUsage()` otherwise; without pacing it does nothing.
 */
export function heapCheckpoint(): void {
  checkpoint?.();
}

/** Bytes of spent buffers after which {@linkcode spentBuffers} runs a young-generation collection. */
export const SPENT_BUFFER_SLACK = 8 << 20;

/**
 * A counter of bytes that runs `collect` each time {@linkcode SPENT_BUFFER_SLACK} more have
 * been counted: the pacing {@linkcode spentBuffers} and {@linkcode lentBuffersDropped} share.
 */
function everySlack(collect: () => void): (bytes: number) => void {
  let counted = 0;
  return (bytes) => {
    counted += bytes;
    if (counted < SPENT_BUFFER_SLACK) return;
    counted = 0;
    collect();
  };
}

const spent = everySlack(() => exposedGc()?.({ type: "minor" }));

/**
 * Tells the collector that `bytes` of buffers were handed out for one use each (a chunk of a
 * download, given to the HTTP server and not touched again). After every
 * {@linkcode SPENT_BUFFER_SLACK} bytes it runs a young-generation collection, which costs a
 * fraction of a millisecond and frees those of them that were sent.
 */
export function spentBuffers(bytes: number): void {
  spent(bytes);
}

const lentDropped = everySlack(() => exposedGc()?.({ type: "major", execution: "async" }));

/**
 * How long after the last lent stream ended {@linkcode lentBuffersDropped} asks for one more full
 * collection, in milliseconds.
 */
export const LENT_SETTLE_MS = 500;

let settle: ReturnType<typeof setTimeout> | undefined;

/**
 * Tells the collector that a stream that lent its chunks (lib/bundle/plan.ts) ended, leaving
 * `bytes` of buffers unreachable once its consumer lets go of the last chunk. They lived as
 * long as the download, so they sit in the old generation, which only a full collection
 * frees, and no growth follows to make {@linkcode paceHeap} run one: 100 downloads ending
 * together left 200 MiB mapped. After every {@linkcode SPENT_BUFFER_SLACK} of them, a full
 * collection is asked for, run concurrently with the program (a quarter of the downloads
 * ending at most ask for one).
 *
 * And once no stream has ended for {@linkcode LENT_SETTLE_MS}, one more is asked for: for the
 * buffers short of the slack, and for those a consumer still held when the last one ran. Without
 * it, ten downloads ending together left 20–25 MiB mapped until the next download.
 */
export function lentBuffersDropped(bytes: number): void {
  const gc = exposedGc();
  if (!gc) return;
  lentDropped(bytes);
  clearTimeout(settle);
  settle = setTimeout(() => gc({ type: "major", execution: "async" }), LENT_SETTLE_MS);
  Deno.unrefTimer(settle);
}

/** Buffers at least this large that {@linkcode droppedBuffer} is told of are collected at once. */
export const DROPPED_BUFFER_COLLECTED = 1 << 20;

/**
 * Tells the collector that one buffer of `bytes` became garbage at once and nothing will
 * follow it (a request body cut off half-way: the connection goes quiet, so neither
 * {@linkcode paceHeap} nor {@linkcode spentBuffers} would see a reason to collect). From
 * {@linkcode DROPPED_BUFFER_COLLECTED} bytes on it asks for a full collection, run
 * concurrently, which frees the buffer's memory.
 */
export function droppedBuffer(bytes: number): void {
  if (bytes < DROPPED_BUFFER_COLLECTED) return;
  exposedGc()?.({ type: "major", execution: "async" });
}
