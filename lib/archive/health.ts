/**
 * Whether the archive can be reached at all, shared by every archive call of one module
 * instance (the main thread, or one staging thread) and one archive base URL (issue 18,
 * item 3).
 *
 * An archive that *answers* (any HTTP status) is up, whatever it answers. One that cannot be
 * reached (connection refused or reset, a DNS failure: `fetch` itself throws) is *down*:
 * {@linkcode ArchiveHealth.down} is told so, and from then on every call waits in
 * {@linkcode ArchiveHealth.waitUp} instead of spending its attempts, while one probe (`HEAD`
 * of the base URL; any answer will do) is sent on a growing delay. When a probe or any call
 * gets an answer, the health is up again, the waiting calls go on, and the `onUp` listeners
 * run (the recall manager re-sends its stage requests then: a restarted archive may have lost
 * its recall queue). A call fails only when the outage has lasted longer than `outageMaxMs`
 * (`CARTD_ARCHIVE_OUTAGE_MAX`): {@linkcode OutageError}.
 *
 * A call that times out is not counted as unreachable: an archive that is slow to answer is
 * handled by the rules of each call (`CARTD_REQUEST_TIMEOUT`, `CARTD_MISSING_AFTER`).
 *
 * @example
 * ```ts
 * import { ArchiveHealth } from "./health.ts";
 * const health = new ArchiveHealth("http://127.0.0.1:8080/", { outageMaxMs: 600_000 });
 * health.onUp(() => console.log("the archive is back"));
 * await health.waitUp(); // at once while the archive is reachable
 * health.close();
 * ```
 * @module
 */
import { seconds } from "../util/log.ts";

/** Options of {@linkcode ArchiveHealth}. */
export interface ArchiveHealthOptions {
  /** Longest outage (ms) calls wait through before they fail (default 600,000). */
  outageMaxMs?: number;
  /** First delay between probes (default 200 ms); each next one is 1.5 times longer. */
  probeInitialMs?: number;
  /** Longest delay between probes (default 5,000 ms). */
  probeMaxMs?: number;
  /** Time limit of one probe (default 5,000 ms). */
  probeTimeoutMs?: number;
  /** The fetch to probe with (default `globalThis.fetch`). */
  fetch?: typeof fetch;
}

/** The archive stayed unreachable for longer than `outageMaxMs`. */
export class OutageError extends Error {
  /** How long the archive had been unreachable, in ms. */
  readonly outageMs: number;
  /** Builds the error; the message says how long, and what to do. */
  constructor(outageMs: number, limitMs: number) {
    super(
      `the archive has been unreachable for ${seconds(outageMs)} s, longer than ` +
        `CARTD_ARCHIVE_OUTAGE_MAX (${seconds(limitMs)} s); check that the archive is up, ` +
        "then try the cart again",
    );
    this.name = "OutageError";
    this.outageMs = outageMs;
  }
}

/**
 * True when `err`, thrown by `fetch`, means the archive could not be reached: a network
 * failure (connection refused or reset, DNS), not an abort or a time-out.
 */
export function isUnreachable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err.name === "AbortError" || err.name === "TimeoutError") return false;
  return err instanceof TypeError || /connect|refused|reset|dns|network|broken pipe/i.test(
    err.message,
  );
}

/** The reachability of one archive; see the module description. */
export class ArchiveHealth {
  readonly #base: string;
  readonly #limit: number;
  readonly #probeInitial: number;
  readonly #probeMax: number;
  readonly #probeTimeout: number;
  readonly #fetch: typeof fetch;
  /** `performance.now()` when the outage began; undefined while up. */
  #downSince: number | undefined = undefined;
  #probeDelay = 0;
  #probeTimer: ReturnType<typeof setTimeout> | undefined = undefined;
  #limitTimer: ReturnType<typeof setTimeout> | undefined = undefined;
  #waiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  readonly #onUp = new Set<() => void>();
  #outages = 0;
  #closed = false;

  /** A health for the archive at `baseUrl` (probed with `HEAD baseUrl`), up to begin with. */
  constructor(baseUrl: string, options: ArchiveHealthOptions = {}) {
    this.#base = baseUrl;
    this.#limit = options.outageMaxMs ?? 600_000;
    this.#probeInitial = options.probeInitialMs ?? 200;
    this.#probeMax = options.probeMaxMs ?? 5_000;
    this.#probeTimeout = options.probeTimeoutMs ?? 5_000;
    this.#fetch = options.fetch ?? globalThis.fetch;
  }

  /** True while no outage is under way. */
  get up(): boolean {
    return this.#downSince === undefined;
  }

  /** Outages seen so far (for tests and logs). */
  get outages(): number {
    return this.#outages;
  }

  /** How long the current outage has lasted (ms), or 0 while up. */
  outageMs(): number {
    return this.#downSince === undefined ? 0 : performance.now() - this.#downSince;
  }

  /** Runs `fn` each time the archive is reachable again after an outage; returns an unsubscribe. */
  onUp(fn: () => void): () => void {
    this.#onUp.add(fn);
    return () => this.#onUp.delete(fn);
  }

  /** A call could not reach the archive: the outage begins (if it has not yet), probes start. */
  down(): void {
    if (this.#closed || this.#downSince !== undefined) return;
    this.#downSince = performance.now();
    this.#outages++;
    this.#probeDelay = this.#probeInitial;
    this.#armProbe();
    // Waiters fail together when the limit passes; the probes go on (the archive may return).
    // Unreferenced: the probes keep the process alive during an outage, not this.
    const limit = setTimeout(() => this.#expire(), this.#limit);
    Deno.unrefTimer(limit as unknown as number);
    this.#limitTimer = limit;
  }

  /** A call (or a probe) got an answer: the outage, if any, is over. */
  reachable(): void {
    if (this.#downSince === undefined) return;
    this.#downSince = undefined;
    this.#clearTimers();
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const fn of [...this.#onUp]) {
      try {
        fn();
      } catch {
        // A listener's failure is its own; the others and the waiters still go on.
      }
    }
    for (const w of waiters) w.resolve();
  }

  /**
   * Resolves at once while up; during an outage, when the archive is back. Rejects with an
   * {@linkcode OutageError} when the outage is (or becomes) longer than `outageMaxMs`, and
   * with `signal.reason` when `signal` aborts.
   */
  waitUp(signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    if (this.#downSince === undefined || this.#closed) return Promise.resolve();
    const lasted = performance.now() - this.#downSince;
    if (lasted >= this.#limit) return Promise.reject(new OutageError(lasted, this.#limit));
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(signal!.reason);
      };
      const waiter = {
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (e: unknown) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  /** Stops probing and lets every waiting call go on (to fail or succeed on its own). */
  close(): void {
    this.#closed = true;
    this.#clearTimers();
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.resolve();
  }

  #expire(): void {
    this.#limitTimer = undefined;
    if (this.#downSince === undefined) return;
    const error = new OutageError(performance.now() - this.#downSince, this.#limit);
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.reject(error);
  }

  #clearTimers(): void {
    if (this.#probeTimer !== undefined) clearTimeout(this.#probeTimer);
    if (this.#limitTimer !== undefined) clearTimeout(this.#limitTimer);
    this.#probeTimer = undefined;
    this.#limitTimer = undefined;
  }

  #armProbe(): void {
    if (this.#closed || this.#downSince === undefined) return;
    this.#probeTimer = setTimeout(() => void this.#probe(), this.#probeDelay);
    this.#probeDelay = Math.min(this.#probeMax, this.#probeDelay * 1.5);
  }

  async #probe(): Promise<void> {
    this.#probeTimer = undefined;
    try {
      const res = await this.#fetch(this.#base, {
        method: "HEAD",
        signal: AbortSignal.timeout(this.#probeTimeout),
      });
      // Any answer: the archive is reachable. The body of a HEAD answer is nothing to read.
      await res.body?.cancel().catch(() => {});
      this.reachable();
    } catch {
      this.#armProbe();
    }
  }
}

const registry = new Map<string, ArchiveHealth>();

/**
 * The one {@linkcode ArchiveHealth} of `baseUrl` in this module instance (the main thread or
 * a staging thread), made on first use with `options`; later calls with another
 * `outageMaxMs` get a health of their own (tests run several settings in one process).
 */
export function archiveHealth(baseUrl: string, options: ArchiveHealthOptions = {}): ArchiveHealth {
  const key = `${options.outageMaxMs ?? ""} ${baseUrl}`;
  let health = registry.get(key);
  if (!health) registry.set(key, health = new ArchiveHealth(baseUrl, options));
  return health;
}
