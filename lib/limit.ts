/**
 * Bounded concurrency for async work.
 *
 * @example
 * ```ts
 * import { forEachLimited } from "./limit.ts";
 * await forEachLimited([1, 2, 3], 2, async (n) => console.log(n));
 * ```
 * @module
 */

/**
 * Runs `work` for every item, at most `limit` at once. On the first failure no new item
 * starts, the `signal` passed to running items is aborted, and once they settle the first
 * error is thrown.
 */
export async function forEachLimited<T>(
  items: readonly T[],
  limit: number,
  work: (item: T, signal: AbortSignal) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) onAbort();
  let next = 0;
  let failure: { error: unknown } | null = null;
  const lane = async () => {
    while (next < items.length && !failure && !controller.signal.aborted) {
      const item = items[next++];
      try {
        await work(item, controller.signal);
      } catch (error) {
        failure ??= { error };
        controller.abort(error);
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  if (failure) throw (failure as { error: unknown }).error;
  signal?.throwIfAborted();
}
