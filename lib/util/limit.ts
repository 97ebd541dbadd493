/**
 * Bounded concurrency for async work.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { forEachLimited } from "./limit.ts";
 * let running = 0, most = 0;
 * const done: number[] = [];
 * await forEachLimited([1, 2, 3, 4, 5], 2, async (n) => {
 *   most = Math.max(most, ++running);
 *   await new Promise((r) => setTimeout(r, 1));
 *   done.push(n);
 *   running--;
 * });
 * assert.deepEqual([done.sort(), most], [[1, 2, 3, 4, 5], 2]); // all of them, two at a time
 * ```
 * @module
 */
import { errorMessage, log } from "./log.ts";

/**
 * Runs `work` for every item, at most `limit` at once. On the first failure no new item
 * starts, the `signal` passed to running items is aborted, and once they settle the first
 * error is thrown.
 *
 * `items` may be an async iterable (a cart's files read from the database a page at a time):
 * it is pulled one item at a time, as a lane becomes free, so no more than the items in
 * flight and the source's own page are held. An error from the source counts as a failure;
 * a source left unfinished is closed (`return()`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { forEachLimited } from "./limit.ts";
 * let pulled = 0;
 * async function* ids() { for (let i = 0; i < 1000; i++) yield pulled = i; }
 * // Item 3 fails: nothing new starts, the others' signal aborts, and the error is thrown.
 * const aborted: number[] = [];
 * const work = async (id: number, signal: AbortSignal) => {
 *   if (id === 3) throw new Error("archive said 500");
 *   await new Promise((r) => setTimeout(r, 10));
 *   if (signal.aborted) aborted.push(id);
 * };
 * await assert.rejects(forEachLimited(ids(), 8, work), { message: "archive said 500" });
 * assert.ok(pulled < 16, `pulled ${pulled}`); // the source is pulled as lanes free up
 * assert.ok(aborted.length > 0);
 * ```
 */
export async function forEachLimited<T>(
  items: Iterable<T> | AsyncIterable<T>,
  limit: number,
  work: (item: T, signal: AbortSignal) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) onAbort();
  const iterator: Iterator<T> | AsyncIterator<T> = Symbol.asyncIterator in items
    ? items[Symbol.asyncIterator]()
    : items[Symbol.iterator]();
  // Pulls are chained: an async generator must not be asked twice at once, and the order of
  // items is kept.
  let pulls: Promise<unknown> = Promise.resolve();
  let exhausted = false;
  const next = (): Promise<IteratorResult<T>> => {
    const pull = pulls.then(() => iterator.next());
    // The chain only keeps pulls in order; the same rejection reaches the lane through `pull`.
    pulls = pull.catch(() => {});
    return pull;
  };
  let failure: { error: unknown } | null = null;
  const fail = (error: unknown) => {
    failure ??= { error };
    controller.abort(error);
  };
  const lane = async () => {
    while (!failure && !controller.signal.aborted && !exhausted) {
      let step: IteratorResult<T>;
      try {
        step = await next();
      } catch (error) {
        return fail(error);
      }
      if (step.done) {
        exhausted = true;
        return;
      }
      if (failure || controller.signal.aborted) return;
      try {
        await work(step.value, controller.signal);
      } catch (error) {
        fail(error);
      }
    }
  };
  const lanes = Array.isArray(items) ? Math.min(limit, items.length) : limit;
  try {
    await Promise.all(Array.from({ length: Math.max(1, lanes) }, lane));
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (!exhausted) {
      await pulls.then(() => iterator.return?.()).catch((error) => {
        // The work is over either way; a source that fails to close is worth a line in the log.
        log.warn("could not close the source of a limited loop", { error: errorMessage(error) });
      });
    }
  }
  if (failure) throw (failure as { error: unknown }).error;
  signal?.throwIfAborted();
}
