/**
 * A pool of {@linkcode ./thread.ts} Web Workers that stage files and write bundles. It caps
 * the tasks in flight over all threads (`CARTD_FILES_IN_FLIGHT`), spreads them over the
 * least-busy thread, forwards cancellation, and replaces a thread that crashes (its tasks
 * fail with a clear error instead of hanging).
 *
 * @module
 */
import type { HashType } from "../lib/cart/document.ts";
import type { LocalHashes, StagedFile, StageJob } from "../lib/staging/stage_file.ts";
import type { StageSettings } from "../lib/config/config.ts";
import { countFetched, watchFetchSlots } from "../lib/util/metrics.ts";
import type { BundleJob, ThreadReply, ThreadRequest, WrittenBundle } from "./messages.ts";

/**
 * The thread's module, beside this one: `thread.ts` when this module runs from source
 * (`deno run main.ts`, and `deno compile`, which embeds the sources under their own names and
 * the thread through `--include threads/thread.ts`); `thread.js` when it runs inside a
 * bundle (`dist/cartd.js`, whose thread is the second bundled entry `dist/thread.js`).
 */
const THREAD_MODULE = new URL(
  import.meta.url.endsWith(".ts") ? "./thread.ts" : "./thread.js",
  import.meta.url,
);

/**
 * A task that failed inside a thread; `code` carries e.g. "nospace" or a StageError code, or
 * "crashed" when the thread itself died (the work may well succeed again).
 */
export class TaskError extends Error {
  /** Builds the error; `name` keeps the name of an error passed on from a thread. */
  constructor(message: string, readonly code?: string, name = "TaskError") {
    super(message);
    this.name = name;
  }
}

type WithoutId<T> = T extends unknown ? Omit<T, "id"> : never;

interface Pending {
  resolve(value: unknown): void;
  reject(error: unknown): void;
  thread: Slot;
}

interface Slot {
  worker: Worker;
  busy: number;
  /** The thread's module has loaded. */
  ready: boolean;
}

/** Web Worker threads for staging and bundling. */
export class ThreadPool {
  #slots: Slot[] = [];
  #pending = new Map<number, Pending>();
  #waiters: (() => void)[] = [];
  #inFlight = 0;
  #nextId = 1;
  #closed = false;
  /** Set when a thread cannot even load: respawning would only fail again. */
  #broken: TaskError | null = null;
  #started = Promise.withResolvers<void>();
  /** The metrics read the slots in use, and hear the threads, until the pool closes. */
  #unwatch = watchFetchSlots(() => ({ inUse: this.#inFlight, capacity: this.maxInFlight }));

  /**
   * Starts the threads; {@linkcode ready} tells when they have loaded.
   *
   * @param threads how many Web Workers to run
   * @param maxInFlight most tasks running at once over all threads
   * @param gcSlackBytes each thread's heap pacing (see lib/util/memory.ts); 0 leaves it to V8
   */
  constructor(
    readonly threads: number,
    readonly maxInFlight: number,
    readonly gcSlackBytes = 0,
  ) {
    // Marks the promise handled, so that threads that cannot load do not end the process with
    // an unhandled rejection before anyone asks; ready() hands the same rejection to its callers.
    this.#started.promise.catch(() => {});
    for (let i = 0; i < threads; i++) this.#slots.push(this.#spawn());
  }

  /** Resolves once every thread has loaded; rejects when one cannot (a missing module, say). */
  ready(): Promise<void> {
    return this.#started.promise;
  }

  #spawn(): Slot {
    const worker = new Worker(THREAD_MODULE, { type: "module" });
    const slot: Slot = { worker, busy: 0, ready: false };
    if (this.gcSlackBytes > 0) {
      worker.postMessage({ type: "memory", slackBytes: this.gcSlackBytes } as ThreadRequest);
    }
    worker.onmessage = (event: MessageEvent<ThreadReply>) => {
      if (event.data.type !== "ready") return this.#settle(event.data);
      slot.ready = true;
      if (this.#slots.every((s) => s.ready)) this.#started.resolve();
    };
    worker.onerror = (event) => {
      event.preventDefault();
      this.#crashed(slot, event.message ?? "unknown error");
    };
    return slot;
  }

  #crashed(slot: Slot, why: string): void {
    for (const [id, p] of this.#pending) {
      if (p.thread === slot) {
        this.#pending.delete(id);
        this.#release(slot);
        p.reject(
          new TaskError(`A staging thread crashed (${why}); the task will be retried`, "crashed"),
        );
      }
    }
    slot.worker.terminate();
    if (!slot.ready) {
      // It never loaded: a new thread would fail the same way, in a loop.
      this.#broken = new TaskError(`The staging threads cannot start (${why})`);
      this.#started.reject(this.#broken);
      for (const wake of this.#waiters.splice(0)) wake();
      return;
    }
    if (!this.#closed) {
      const index = this.#slots.indexOf(slot);
      if (index >= 0) this.#slots[index] = this.#spawn();
    }
  }

  #settle(reply: Exclude<ThreadReply, { type: "ready" }>): void {
    const pending = this.#pending.get(reply.id);
    if (!pending) return;
    this.#pending.delete(reply.id);
    this.#release(pending.thread);
    if (reply.type === "done") pending.resolve(reply.result);
    else {
      pending.reject(new TaskError(reply.error.message, reply.error.code, reply.error.name));
    }
  }

  #release(slot: Slot): void {
    slot.busy--;
    this.#inFlight--;
    this.#waiters.shift()?.();
  }

  /**
   * Waits for a free place in flight. A waiter whose signal aborts leaves the line at once; a
   * wake-up that reaches a waiter that no longer wants it is handed to the next one, so a
   * cancelled cart never keeps another cart's task waiting.
   */
  async #waitForPlace(signal?: AbortSignal): Promise<void> {
    while (this.#inFlight >= this.maxInFlight && !this.#broken && !this.#closed) {
      signal?.throwIfAborted();
      await new Promise<void>((resolve, reject) => {
        const wake = () => {
          signal?.removeEventListener("abort", leave);
          resolve();
        };
        const leave = () => {
          const at = this.#waiters.indexOf(wake);
          if (at >= 0) this.#waiters.splice(at, 1);
          reject(signal!.reason);
        };
        this.#waiters.push(wake);
        signal?.addEventListener("abort", leave, { once: true });
      });
    }
    if (signal?.aborted) {
      this.#waiters.shift()?.();
      throw signal.reason;
    }
  }

  async #run<T>(request: WithoutId<ThreadRequest>, signal?: AbortSignal): Promise<T> {
    await this.#waitForPlace(signal);
    if (this.#broken) throw this.#broken;
    if (this.#closed) throw new TaskError("The thread pool is closed");
    const slot = this.#slots.reduce((a, b) => (b.busy < a.busy ? b : a));
    const id = this.#nextId++;
    slot.busy++;
    this.#inFlight++;
    const onAbort = () => slot.worker.postMessage({ type: "cancel", id } as ThreadRequest);
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      return await new Promise<T>((resolve, reject) => {
        this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, thread: slot });
        slot.worker.postMessage({ ...request, id } as ThreadRequest);
      });
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** Stages one file in a thread (see {@linkcode stageFile}). */
  async stage(job: StageJob, settings: StageSettings, signal?: AbortSignal): Promise<StagedFile> {
    const staged = await this.#run<StagedFile>({ type: "stage", job, settings }, signal);
    countFetched(staged.size);
    return staged;
  }

  /** Hashes a file already on disk in a thread (see {@linkcode hashLocalFile}). */
  hash(path: string, hashtype?: HashType, signal?: AbortSignal): Promise<LocalHashes> {
    return this.#run({ type: "hash", path, hashtype }, signal);
  }

  /** Writes a bundle to disk in a thread. */
  bundle(job: BundleJob, signal?: AbortSignal): Promise<WrittenBundle> {
    return this.#run({ type: "bundle", job }, signal);
  }

  /** Stops every thread; tasks still running fail. */
  close(): void {
    this.#closed = true;
    this.#unwatch();
    for (const slot of this.#slots) slot.worker.terminate();
    for (const p of this.#pending.values()) p.reject(new TaskError("The thread pool was closed"));
    this.#pending.clear();
    for (const wake of this.#waiters.splice(0)) wake();
  }
}
